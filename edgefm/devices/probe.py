"""``python -m edgefm.devices.probe``: what a board is, as one JSON object on stdout (run there over SSH by
``edgefm devices``): edgefm and runtime versions, CPU/ISA (the bench's own machine probe), GPU, JetPack and
TensorRT where present, the nvpmodel power mode, free disk (in the device's edgefm workdir) and memory.
Nothing heavy is imported: versions come from package metadata."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional


def _tensorrt_version() -> Optional[str]:
    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt_libs"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:  # JetPack ships the bindings as a Debian package, not a distribution
        import tensorrt  # noqa: PLC0415

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - absent or broken: either way there is no usable TensorRT
        return None


def _gpu() -> Optional[str]:
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, check=False, timeout=20)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0]
    return None


def probe(workdir: str = "~") -> dict[str, Any]:
    """This machine, as the host's ``edgefm devices`` shows it."""
    import psutil

    from edgefm import __version__
    from edgefm.backends.tensorrt_engine import jetson_release
    from edgefm.bench.machine import machine_info

    m = machine_info()
    wd = Path(workdir).expanduser()
    while not wd.exists() and wd != wd.parent:
        wd = wd.parent
    out: dict[str, Any] = {
        "edgefm": __version__, "python": sys.version.split()[0], "executable": sys.executable,
        "machine": json.loads(m.model_dump_json()),
        "gpu": _gpu() or (m.jetson.model if m.jetson else None),
        "tensorrt": _tensorrt_version(), **jetson_release(),
        "power_mode": m.jetson.power_mode if m.jetson else None,
        "disk_free_gb": round(shutil.disk_usage(wd).free / 2**30, 1),
        "memory_available_gb": round(psutil.virtual_memory().available / 2**30, 1),
    }
    return out


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(probe(argv[0] if argv else "~")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
