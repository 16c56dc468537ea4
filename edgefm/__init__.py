"""edgefm: compress pretrained PyTorch models into verified int8 bundles for edge runtimes.

``import edgefm`` is light: torch and the runtimes are imported only by the functions that use them."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "compress", "CompressConfig"]


def __getattr__(name: str):
    if name == "load":
        from edgefm.runtime import load
        return load
    if name == "compress":
        from edgefm.pipeline import compress
        return compress
    if name == "CompressConfig":
        from edgefm.config import CompressConfig
        return CompressConfig
    raise AttributeError(f"module 'edgefm' has no attribute {name!r}")
