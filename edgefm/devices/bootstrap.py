"""``edgefm devices setup NAME``: install edgefm's torch-free core on a board that has none, with no internet
there. This machine builds the edgefm wheel from its checkout (``pip wheel --no-deps``) and downloads the
core dependencies' wheels for the device's platform (``pip download --platform …``); they travel as one tar
over SSH, and the device's own Python makes a venv of its own (``WORKDIR/venv``) and installs them from the
local folder (``pip install --no-index``).

This is the one place edgefm runs something other than its own commands on a device: ``python3 -V``,
``python3 -m platform``, ``mkdir``/``cat`` to receive the tar, ``python3 -m tarfile``, ``-m venv`` and
``-m pip`` (all the device's own)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Optional

from edgefm.devices.inventory import Device, Inventory
from edgefm.devices.remote import Remote
from edgefm.devices.ssh import remote_path
from edgefm.errors import ConfigError, DeviceError

Progress = Callable[[str], None]


def checkout_root() -> Path:
    """The source tree this edgefm runs from (its wheel is what the device gets)."""
    import edgefm

    root = Path(edgefm.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"edgefm runs from {root}, not from a source checkout: pass --wheel with an edgefm wheel "
                          f"(pip download --no-deps edgefm) or run from a checkout")
    return root


def core_requirements(root: Optional[Path] = None) -> list[str]:
    """The core dependencies (what a device needs to load and run a bundle): the checkout's pyproject.toml,
    else the installed distribution's metadata (no extras)."""
    if root is not None and (root / "pyproject.toml").is_file():
        import tomllib

        return list(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"])
    from importlib.metadata import requires

    return [r.split(";")[0].strip() for r in requires("edgefm") or [] if "extra ==" not in r]


def platform_tags(platform_line: str) -> tuple[str, list[str]]:
    """(arch, pip --platform tags) from ``python -m platform`` ('Linux-…-aarch64-with-glibc2.35')."""
    m = re.search(r"-(x86_64|aarch64|armv7l)-with-glibc(\d+)\.(\d+)", platform_line)
    if not m:
        raise DeviceError(f"unsupported device platform '{platform_line.strip()}' (edgefm sets up Linux x86_64 / "
                          f"aarch64 with glibc)")
    arch, major, minor = m[1], int(m[2]), int(m[3])
    tags = [f"manylinux_{major}_{v}_{arch}" for v in range(minor, 16, -1)] + [f"manylinux2014_{arch}"]
    return arch, tags


def _sh(remote: Remote, script: str, stdin: bytes = b"", timeout: float = 600, what: str = "setup"):
    """A shell line on the device (setup only; see the module docstring)."""
    ssh = remote.ssh
    r = subprocess.run(ssh.argv(script), input=stdin, capture_output=True, timeout=timeout)
    err = r.stderr.decode(errors="replace")
    if r.returncode == 255:
        raise DeviceError(ssh._connection_error(err))
    if r.returncode != 0:
        raise DeviceError(f"device {remote.device.name}: {what} failed (exit {r.returncode}): "
                          f"{(err.strip().splitlines() or ['no message'])[-1]}")
    return r.stdout.decode(errors="replace")


def setup(inv: Inventory, device: Device, progress: Optional[Progress] = None,
          base_python: Optional[str] = None, wheel: Optional[Path] = None) -> str:
    """Install edgefm's core on ``device``; returns the python to put in the inventory (the new venv's)."""
    say = progress or (lambda m: None)
    remote = Remote(device, inv)
    base = base_python or device.python
    info = _sh(remote, f"{remote_path(base)} -V && {remote_path(base)} -m platform", what="python3 -V")
    version = re.search(r"Python (\d+)\.(\d+)", info)
    if not version:
        raise DeviceError(f"device {device.name}: '{base}' is not a Python ({info.strip()[:80]})")
    pyver = f"{version[1]}.{version[2]}"
    arch, tags = platform_tags(info.splitlines()[-1])
    say(f"{device.name}: Python {pyver} on {arch}")
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp) / "wheels"
        wheels.mkdir()
        if wheel is not None:
            if not Path(wheel).is_file() or not Path(wheel).name.startswith("edgefm-"):
                raise ConfigError(f"--wheel {wheel}: not an edgefm wheel file")
            root = None
            shutil.copy(wheel, wheels)
        else:
            root = checkout_root()
            say("building the edgefm wheel from " + str(root))
            import importlib.util

            iso = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []  # offline when possible
            _pip(["wheel", "-q", "--no-deps", *iso, "-w", str(wheels), str(root)])
        say(f"downloading the core dependencies for {arch} / Python {pyver}")
        _pip(["download", "-q", "-d", str(wheels), "--only-binary=:all:", "--python-version", pyver,
              "--implementation", "cp", *[a for t in tags for a in ("--platform", t)], *core_requirements(root)])
        blob = Path(tmp) / "wheels.tar"
        with tarfile.open(blob, "w") as tar:
            for w in sorted(wheels.iterdir()):
                tar.add(w, arcname=w.name)
        stage = f"{device.workdir.rstrip('/')}/setup"
        venv = f"{device.workdir.rstrip('/')}/venv"
        say(f"{device.name}: sending {len(list(wheels.iterdir()))} wheels ({blob.stat().st_size / 1e6:.1f} MB)")
        q_stage, q_venv, q_base = remote_path(stage), remote_path(venv), remote_path(base)
        _sh(remote, f"rm -rf {q_stage} && mkdir -p {q_stage}/wheels && cat > {q_stage}/wheels.tar && "
                    f"{q_base} -m tarfile -e {q_stage}/wheels.tar {q_stage}/wheels",
            stdin=blob.read_bytes(), what="receiving the wheels")
    say(f"{device.name}: creating {venv} and installing")
    _sh(remote, f"{q_base} -m venv --clear {q_venv} && {q_venv}/bin/python -m pip install -q --no-index "
                f"--find-links {q_stage}/wheels edgefm && rm -rf {q_stage}", what="pip install", timeout=1200)
    python = f"{venv}/bin/python"
    probe = Remote(device.model_copy(update={"python": python}), inv).probe()
    versions = ", ".join(f"{k} {v}" for k, v in probe["machine"]["runtime_versions"].items())
    say(f"{device.name}: edgefm {probe['edgefm']} with {versions}")
    return python


def _pip(args: list[str]) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise DeviceError(f"pip {args[0]} failed here: {(r.stderr.strip().splitlines() or ['no message'])[-1]}")


__all__ = ["setup", "platform_tags", "core_requirements"]
