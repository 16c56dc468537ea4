"""The litert-torch converter environment: a venv under the tools folder that sees the main environment's
packages (torch is reused) and adds the exact versions of ``litert_torch.lock``.

Why its own environment: see ``tflite_convert``. What this module guarantees:

- one environment per key: edgefm version, this interpreter (its real path, ``sys.prefix``, Python version),
  the torch it reuses and the lock file's sha256. A second virtualenv gets a second environment; nobody
  deletes or rebuilds the one another venv uses;
- an environment in use is never deleted: users hold a shared ``flock`` on ``.<name>.use`` for their life;
  only an unused, broken environment is removed (and only by the builder holding ``.<name>.lock``);
- the build goes into ``.<name>.build-<pid>`` and is renamed into place only once it imports: an offline or
  failed build leaves nothing half-built and says so in one line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO, Iterable, Optional

from edgefm.errors import BackendUnavailableError

LOCK_FILE = Path(__file__).with_name("litert_torch.lock")
CHECK_IMPORTS = ("litert_torch", "ai_edge_quantizer")
MARKER = "edgefm-env.json"
_HELD: dict[str, IO] = {}  # env dir -> open .use file holding a shared lock for this process's life


def tools_dir() -> Path:
    """``$EDGEFM_TOOLS_DIR`` or ``~/.cache/edgefm/tools`` (installations, kept apart from the export cache)."""
    return Path(os.environ.get("EDGEFM_TOOLS_DIR") or Path.home() / ".cache" / "edgefm" / "tools")


def env_key(lock: Path = LOCK_FILE) -> dict[str, str]:
    """What an environment is built for; any change means another environment (never a rebuild in place)."""
    import edgefm

    return {"edgefm": edgefm.__version__, "python": os.path.realpath(sys.executable),
            "prefix": os.path.realpath(sys.prefix), "version": sys.version.split()[0],
            "torch": _dist_version("torch"), "lock_sha256": hashlib.sha256(Path(lock).read_bytes()).hexdigest()}


def env_dir(lock: Path = LOCK_FILE) -> Path:
    key = hashlib.sha256(json.dumps(env_key(lock), sort_keys=True).encode()).hexdigest()[:12]
    return tools_dir() / f"litert-torch-py{sys.version_info[0]}{sys.version_info[1]}-{key}"


def ensure_env(progress=None, lock: Path = LOCK_FILE, check_imports: Iterable[str] = CHECK_IMPORTS) -> Path:
    """The environment's Python, built on first use (about a minute and ~750 MB from PyPI), and marked in use
    by this process."""
    d = env_dir(lock)
    py = d / "bin" / "python"
    with _exclusive(d.parent / f".{d.name}.lock"):
        if not _valid(d, lock):
            if d.exists():
                if _in_use(d):
                    raise BackendUnavailableError(
                        f"tflite converter environment {d} is incomplete but in use by another process; remove it "
                        f"once that run has finished")
                shutil.rmtree(d)
            if progress:
                progress(f"creating the litert-torch converter environment in {d} (once)")
            _build(d, lock, tuple(check_imports))
        _hold(d)
    return py


def _valid(d: Path, lock: Path) -> bool:
    try:
        return (d / "bin" / "python").exists() and json.loads((d / MARKER).read_text()).get("key") == env_key(lock)
    except (OSError, ValueError):
        return False


def _build(d: Path, lock: Path, check_imports: tuple[str, ...]) -> None:
    for stale in d.parent.glob(f".{d.name}.build-*"):  # a killed build (we hold the build lock: none is running)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = d.parent / f".{d.name}.build-{os.getpid()}"
    try:
        _run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], "create the venv", d)
        py = tmp / "bin" / "python"
        site = Path(_run([str(py), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                         "locate the venv", d).strip())
        # after the venv's own site-packages, so its pins win; the main environment supplies torch & co.
        parent = dict.fromkeys(os.path.realpath(p) for p in (_paths("purelib"), _paths("platlib")))
        (site / "_edgefm_parent_env.pth").write_text("\n".join(parent) + "\n")
        if _requirements(lock):
            # --no-deps: exactly the locked set; what it needs beyond it is the main environment's (incl. torch)
            _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-input",
                  "--disable-pip-version-check", "-r", str(lock)], f"pip install -r {lock} (offline?)", d)
        for mod in check_imports:
            _run([str(py), "-c", f"import {mod}"], f"import {mod} in it", d)
        (tmp / MARKER).write_text(json.dumps({"key": env_key(lock)}, indent=1))
        os.rename(tmp, d)  # atomic: the env appears complete or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _requirements(lock: Path) -> list[str]:
    return [ln for ln in Path(lock).read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _paths(name: str) -> str:
    import sysconfig

    return sysconfig.get_paths()[name]


def _run(cmd: list[str], what: str, d: Path, label: str = "tflite converter environment") -> str:
    """Run one build step of a tool environment; a failure is one line naming the environment and the step."""
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-2:])[:400]
        raise BackendUnavailableError(f"{label} {d.name}: could not {what}: {tail}; nothing was left behind")
    return r.stdout


@contextlib.contextmanager
def _exclusive(path: Path):
    """An exclusive lock, so two processes never build the same environment at once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _use_file(d: Path) -> Path:
    return d.parent / f".{d.name}.use"


def _hold(d: Path) -> None:
    """Mark ``d`` in use by this process (a shared lock, released by the kernel when the process ends)."""
    import fcntl

    if str(d) in _HELD:
        return
    f = open(_use_file(d), "a")
    fcntl.flock(f, fcntl.LOCK_SH)
    _HELD[str(d)] = f


def _in_use(d: Path) -> bool:
    """Whether any process (this one included) holds ``d``."""
    import fcntl

    if not _use_file(d).exists():
        return False
    with open(_use_file(d), "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        raise BackendUnavailableError("the tflite target converts the torch model and needs torch: "
                                      "pip install 'edgefm[torch]'") from None


def release(d: Optional[Path] = None) -> None:
    """Stop marking ``d`` (default: every environment) in use by this process (tests; normally process exit)."""
    for key in [k for k in _HELD if d is None or k == str(d)]:
        _HELD.pop(key).close()
