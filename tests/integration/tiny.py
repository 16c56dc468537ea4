"""A tiny 8 -> 4 Linear model saved as a state_dict plus an ``--arch`` file, and a quick fp32 compress of it:
real bundles in seconds for the trust tests."""

from __future__ import annotations

from pathlib import Path

ARCH_V1 = '''import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x)


def make():
    return Net()
'''


def write_arch(folder: Path, body: str = ARCH_V1) -> Path:
    path = folder / "tinynet.py"
    path.write_text(body)
    return path


def tiny_checkpoint(folder: Path) -> tuple[Path, Path]:
    """(state_dict file, arch file) of an 8 → 4 Linear model."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    arch = write_arch(folder)
    torch.manual_seed(0)
    state = {"fc.weight": torch.randn(4, 8), "fc.bias": torch.randn(4)}
    ckpt = folder / "net.pt"
    torch.save(state, ckpt)  # the weights only; the class comes from the arch file
    return ckpt, arch


def compress_tiny(ckpt: Path, arch: Path, out: Path, **extra):
    from edgefm.config import CompressConfig
    from edgefm.pipeline import compress

    cfg = CompressConfig(source=ckpt, output=out, arch=f"{arch}:make", inputs=["x:batch,8:float32"],
                         quantize="fp32", **extra)
    return compress(cfg)
