"""Real "devices" for the SSH tests: an OpenSSH server (Debian's openssh-server) started on a loopback port
with a throw-away host key and user key, and a torch-free venv holding only edgefm's core (the wheel built
from this checkout, --no-deps, plus the core dependencies) that plays the board's Python."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SSHD = Path("/usr/sbin/sshd")
CORE_DEPS = ["numpy", "pydantic", "pyyaml", "typer", "rich", "onnx", "onnxruntime", "psutil"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgefm-test", "-f", str(path)], check=True)
    return path


@dataclass
class Sshd:
    """One sshd on 127.0.0.1:port; ``stop`` kills it and every session it forked (a board dropping off)."""

    name: str
    port: int
    proc: subprocess.Popen
    host_pub: str

    def sessions(self):
        import psutil

        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        import psutil

        procs = self.sessions()
        self.proc.kill()
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(10)


def start_sshd(tmp: Path, name: str, user_pub: Path) -> Sshd:
    """sshd -D on a free loopback port, with its own host key and authorized_keys."""
    d = tmp / f"sshd-{name}"
    d.mkdir()
    host_key = keygen(d / "host_key")
    shutil.copy(user_pub, d / "authorized_keys")
    os.chmod(d / "authorized_keys", 0o600)
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir (root only)
    port = _free_port()
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    (d / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel ERROR\n")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config"), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "wb"))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(d / 'sshd.log').read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    return Sshd(name, port, proc, (d / "host_key.pub").read_text().split(" edgefm-test")[0].strip())


def write_ssh_config(tmp: Path, servers: list[Sshd], user_key: Path, known: list[Sshd] | None = None) -> Path:
    """An ssh config (used with -F) with a Host alias per server and a known_hosts holding ``known`` (default:
    all) of their host keys."""
    kh = tmp / "known_hosts"
    kh.write_text("".join(f"[127.0.0.1]:{s.port} {s.host_pub}\n" for s in (servers if known is None else known)))
    cfg = tmp / "ssh_config"
    cfg.write_text("".join(
        f"Host {s.name}\n  HostName 127.0.0.1\n  Port {s.port}\n  IdentityFile {user_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n" for s in servers))
    return cfg


def device_venv() -> Path:
    """A torch-free venv with edgefm's core deps (cached across sessions under ~/.cache/edgefm/test-devices)
    and this checkout's edgefm wheel (rebuilt and reinstalled every session). Returns its python."""
    key = hashlib.sha256(f"{sys.version}{CORE_DEPS}".encode()).hexdigest()[:12]
    base = Path.home() / ".cache" / "edgefm" / "test-devices"
    base.mkdir(parents=True, exist_ok=True)
    venv = base / f"venv-{key}"
    py = venv / "bin" / "python"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".ready").is_file():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", *CORE_DEPS], check=True)
            (venv / ".ready").write_text("ok")
        wheels = base / f"wheel-{os.getpid()}"
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                        str(edgefm_wheel(wheels))], check=True)
        shutil.rmtree(wheels, ignore_errors=True)
    return py


def edgefm_wheel(folder: Path) -> Path:
    """This checkout's edgefm wheel (pure Python), built into ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)
    import importlib.util

    # without isolation when setuptools is here (fast, offline); else pip fetches the build backend
    iso = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *iso, "-w", str(folder), str(ROOT)],
                   check=True, capture_output=True)
    return next(folder.glob("edgefm-*.whl"))


def arm64_python(tmp: Path, core: str = "cortex-a76") -> Path:
    """An executable that is the arm64 Python under qemu user-mode emulation (edgefm's arm64 root), with
    edgefm's core for aarch64 (wheels from PyPI, cached) and this checkout's edgefm on its path; the device's
    ``python`` in the inventory. Runs in a private mount namespace with an ARM /proc/cpuinfo (as
    edgefm.emulate.arm64 does)."""
    import shlex
    import zipfile

    from edgefm.emulate import arm64

    import pytest

    root = arm64.root_dir()  # built by `python -m edgefm.emulate build-root` (.ci/run does it before the tests)
    if not (root / "edgefm-root.json").is_file():
        pytest.skip(f"no arm64 root in {root}: python -m edgefm.emulate build-root")
    base = Path.home() / ".cache" / "edgefm" / "test-devices"
    key = hashlib.sha256(f"{CORE_DEPS}{arm64.PLATFORM}".encode()).hexdigest()[:12]
    site = base / f"arm64-site-{key}"
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (site / ".ready").is_file():
            shutil.rmtree(site, ignore_errors=True)
            dl = base / f"arm64-dl-{os.getpid()}"
            plats = [a for t in ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
                     for a in ("--platform", t)]
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(dl), "--only-binary=:all:",
                            "--python-version", "3.11", "--implementation", "cp", *plats, *CORE_DEPS],
                           check=True, capture_output=True)
            for whl in dl.glob("*.whl"):
                if not whl.name.startswith("numpy-"):  # the root's numpy is the one LiteRT was built against
                    zipfile.ZipFile(whl).extractall(site)
            shutil.rmtree(dl, ignore_errors=True)
            (site / ".ready").write_text("ok")
    own = tmp / "arm64-edgefm"
    zipfile.ZipFile(edgefm_wheel(tmp / "arm64-wheel")).extractall(own)
    (tmp / "cpuinfo").write_text(arm64.cpuinfo(core))
    q = shlex.quote
    # EDGEFM_PYTHON: how edgefm on the "device" starts its own subprocesses (bench workers, the agent's edgefm):
    # sys.executable there is an arm64 ELF that this kernel cannot exec without the qemu launcher
    launcher = f"{q(arm64.qemu())} -cpu {core} -L {q(str(root))} {q(str(root / 'usr' / 'bin' / arm64.PYTHON))}"
    inner = (f"mount --bind {q(str(tmp / 'cpuinfo'))} /proc/cpuinfo && exec env PYTHONNOUSERSITE=1 LANG=C.UTF-8 "
             f"PYTHONPATH={q(f'{own}:{site}:{root}/site')} EDGEFM_PYTHON={q(launcher)} {launcher} \"$@\"")
    unshare = "unshare -m" if os.geteuid() == 0 else "unshare -r -m"
    py = tmp / "python-arm64"
    py.write_text(f"#!/bin/sh\nexec {unshare} sh -c {q(inner)} sh \"$@\"\n")
    py.chmod(0o755)
    return py
