"""Data that ships with edgefm: the device profiles (top-level ``targets/``) and the small calibration and eval
sets (top-level ``calibration/``). A wheel carries them as package data, ``edgefm/_profiles`` and
``edgefm/_calibration`` (pyproject maps the folders there); a checkout (editable install, PYTHONPATH) reads the
top-level folders in place. Nothing heavy is imported."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

#: folder in a checkout -> package-data folder inside an installed edgefm
_PACKAGED = {"targets": "_profiles", "calibration": "_calibration"}


def folder(name: str) -> Path:
    """The shipped folder ``targets`` or ``calibration``: the installed package data, else the checkout's."""
    # files("edgefm") of the regular package, not files("edgefm._profiles"): that one is a namespace package
    # (the data folders have no __init__.py) and comes back as a MultiplexedPath rather than a plain path
    installed = importlib.resources.files("edgefm") / _PACKAGED[name]
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parent.parent / name


def calibration(name: str) -> Path:
    """A shipped calibration/eval file, e.g. ``calibration("sentences.txt")`` for the README's MiniLM demo."""
    p = folder("calibration") / name
    if not p.is_file():
        from edgefm.errors import ConfigError

        known = sorted(f.name for f in folder("calibration").iterdir() if f.is_file())
        raise ConfigError(f"no shipped calibration file '{name}'; shipped: {', '.join(known)}")
    return p
