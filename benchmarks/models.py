"""Model factories the suites compress (referenced as ``--arch benchmarks/models.py:NAME``), kept free of
anything but torch so the checkpoint loader can import this file on its own."""

from __future__ import annotations

import torch
from torch import nn


class KeywordLSTM(nn.Module):
    """A keyword-spotting-sized LSTM: 50 steps of 40 features (MFCC-like) → 2 stacked LSTM layers of 256 →
    12 logits from the last step. Random weights: for speed only."""

    def __init__(self, features: int = 40, hidden: int = 256, layers: int = 2, classes: int = 12):
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.classifier(out[:, -1])


def keyword_lstm() -> nn.Module:
    return KeywordLSTM()


def mobilenet_v2() -> nn.Module:
    from edgefm.zoo import MobileNetV2

    return MobileNetV2()


def save_random(factory, path, seed: int = 0) -> None:
    """Save a freshly initialised model's state_dict (deterministic for a seed)."""
    torch.manual_seed(seed)
    torch.save(factory().eval().state_dict(), path)
