"""An arm64 Python with LiteRT, run under qemu user-mode emulation on an x86 machine.

What works (TOOLCHAIN.md, "Running an artifact on arm64 under emulation"): no binfmt_misc and no chroot;
instead Debian's arm64 ``python3.11`` and the shared libraries it needs are unpacked (``dpkg -x``) into a
root folder and started as ``qemu-aarch64-static -cpu CORE -L ROOT ROOT/usr/bin/python3.11``, with the
aarch64 wheels of ai-edge-litert and NumPy from PyPI on its PYTHONPATH. LiteRT's CPU detection reads
/proc/cpuinfo and crashes on the x86 host's, so each run bind-mounts an ARM cpuinfo over it inside a
private mount namespace (``unshare -m``). The root is built once into ``<tools dir>/arm64-root`` (``$EDGEFM_TOOLS_DIR``, default ``~/.cache/edgefm/tools``).

The Debian packages come through apt with a private state folder (``-o Dir::State=...``), so the host's
apt configuration (its architectures, its package lists) is left as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from edgefm.errors import BackendUnavailableError, ConfigError

QEMU = "qemu-aarch64-static"
PYTHON = "python3.11"
DEBS = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "zlib1g", "libexpat1",
        "libffi8", "libssl3", "libgcc-s1", "libstdc++6", "libbz2-1.0", "liblzma5"]
PLATFORM = "manylinux_2_27_aarch64"

# qemu -cpu name -> what /proc/cpuinfo says on that core (implementer 0x41 = Arm). Only cores that qemu
# 7.2 emulates and LiteRT runs on; qemu's cortex-a57 dies on an illegal instruction, `max` gives wrong
# int8 results (TOOLCHAIN.md), so neither is offered.
CORES = {
    "cortex-a53": ("0x0", "0xd03", "4", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a72": ("0x0", "0xd08", "3", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a76": ("0x4", "0xd0b", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                                        "asimdrdm lrcpc dcpop asimddp"),
    "neoverse-n1": ("0x3", "0xd0c", "1", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                                         "asimdrdm lrcpc dcpop asimddp ssbs"),
}


def root_dir() -> Path:
    from edgefm.backends.tflite_convert import tools_dir

    return tools_dir() / "arm64-root"


def qemu() -> str:
    path = shutil.which(os.environ.get("EDGEFM_QEMU", QEMU))
    if not path:
        raise BackendUnavailableError(f"arm64 emulation needs {QEMU}: apt-get install qemu-user-static")
    return path


def _want() -> dict:
    from importlib.metadata import version

    # The same LiteRT and NumPy versions as on the x86 side, so the comparison is of the CPU only.
    return {"debs": DEBS, "ai-edge-litert": version("ai-edge-litert"), "numpy": version("numpy"), "platform": PLATFORM}


def ensure_root(progress=None) -> Path:
    """The arm64 root folder, built on first use (~60 MB: Debian packages + PyPI wheels; a minute or two)."""
    from edgefm.backends.litert_env import _exclusive as _locked

    root = root_dir()
    marker = root / "edgefm-root.json"
    want = _want()
    with _locked(root.parent / ".arm64-root.lock"):
        if marker.exists() and json.loads(marker.read_text()).get("want") == want:
            return root
        if progress:
            progress(f"building the arm64 root in {root} (once)")
        shutil.rmtree(root, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="edgefm-arm64-") as tmp:
            _debs(Path(tmp), root)
            _wheels(Path(tmp), root / "site", want)
        marker.write_text(json.dumps({"want": want}))
    return root


def _run(cmd: list[str], what: str, cwd: Optional[Path] = None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise BackendUnavailableError(f"arm64 root: could not {what}: {tail}")
    return r.stdout


def _debs(tmp: Path, root: Path) -> None:
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise BackendUnavailableError("building the arm64 root needs apt-get and dpkg (a Debian/Ubuntu host)")
    state = tmp / "apt"
    for d in ("lists/partial", "cache/archives/partial"):
        (state / d).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    apt = ["apt-get", "-q", "-o", f"Dir::State={state}", "-o", f"Dir::State::Lists={state}/lists",
           "-o", f"Dir::State::status={state}/status", "-o", f"Dir::Cache={state}/cache",
           "-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64",
           "-o", "Debug::NoLocking=1"]
    _run(apt + ["update"], "download the arm64 package lists")
    debs = tmp / "debs"
    debs.mkdir()
    _run(apt + ["download"] + [f"{p}:arm64" for p in DEBS], "download arm64 packages", cwd=debs)
    root.mkdir(parents=True, exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(root)], f"unpack {deb.name}")


def _wheels(tmp: Path, site: Path, want: dict) -> None:
    dl = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
          "3.11", "--platform", PLATFORM, "-d", str(dl), f"ai-edge-litert=={want['ai-edge-litert']}",
          f"numpy=={want['numpy']}"], "download the aarch64 wheels of ai-edge-litert and numpy")
    site.mkdir(parents=True, exist_ok=True)
    for whl in dl.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)


def cpuinfo(core: str, cpus: int = 4) -> str:
    variant, part, rev, features = CORES[core]
    block = (f"BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
             f"CPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {rev}\n\n")
    return "".join(f"processor\t: {i}\n{block}" for i in range(cpus))


def check_core(core: str) -> str:
    if core not in CORES:
        raise ConfigError(f"cpu '{core}' cannot be emulated; choose one of: {', '.join(CORES)}")
    return core


def run_python(root: Path, core: str, script: Path, args: list[str], timeout: float = 900) -> str:
    """Run ``script`` with the arm64 Python on an emulated ``core``; return its stdout."""
    check_core(core)
    info = script.parent / f"cpuinfo-{core}"
    info.write_text(cpuinfo(core))
    py = root / "usr" / "bin" / PYTHON
    inner = " ".join(map(_quote, [qemu(), "-cpu", core, "-L", str(root), str(py), str(script), *args]))
    # A private mount namespace: the ARM cpuinfo is seen by this process tree only.
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    cmd = unshare + ["sh", "-c", f"mount --bind {_quote(str(info))} /proc/cpuinfo && exec {inner}"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(root / "site"),
           "PYTHONNOUSERSITE": "1", "LANG": "C.UTF-8"}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=script.parent)
    except subprocess.TimeoutExpired:
        raise BackendUnavailableError(f"the emulated arm64 run on {core} took longer than {timeout:.0f} s") from None
    if r.returncode != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise BackendUnavailableError(f"the emulated arm64 run on {core} failed (exit {r.returncode}): {tail}")
    return r.stdout


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
