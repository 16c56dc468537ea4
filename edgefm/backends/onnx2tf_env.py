"""The onnx2tf converter environment: an isolated venv (it sees none of the main environment's packages) with
the exact versions of ``onnx2tf.lock``, used to turn ONNX sources into LiteRT models.

Why isolated: onnx2tf hard-pins numpy 1.26, onnx 1.19, onnxruntime 1.23 and tensorflow 2.19 (~2.5 GB), none of
which may enter the main environment. Same guarantees as the litert-torch environment:

- one environment per key: edgefm version, this interpreter (real path, prefix, Python version) and the lock
  file's sha256; a change builds a new environment beside the old one, never in place;
- an environment in use is never deleted (users hold a shared ``flock`` on ``.<name>.use``);
- the build goes into ``.<name>.build-<pid>`` and is renamed into place once ``import onnx2tf`` works, so a
  failed or offline build leaves nothing half-built and says so in one line."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

# the build lock and the in-use marks work exactly as for the LiteRT converter environment
from edgefm.backends import litert_env
from edgefm.backends.litert_env import _exclusive, _hold, _in_use
from edgefm.errors import BackendUnavailableError

LOCK_FILE = Path(__file__).with_name("onnx2tf.lock")
RUNNER = Path(__file__).with_name("onnx2tf_run.py")
MARKER = "edgefm-env.json"


def tools_dir() -> Path:
    """``$EDGEFM_TOOLS_DIR`` or ``~/.cache/edgefm/tools``."""
    return Path(os.environ.get("EDGEFM_TOOLS_DIR") or Path.home() / ".cache" / "edgefm" / "tools")


def env_key(lock: Path = LOCK_FILE) -> dict[str, str]:
    import edgefm

    return {"edgefm": edgefm.__version__, "python": os.path.realpath(sys.executable),
            "prefix": os.path.realpath(sys.prefix), "version": sys.version.split()[0],
            "lock_sha256": hashlib.sha256(Path(lock).read_bytes()).hexdigest()}


def env_dir(lock: Path = LOCK_FILE) -> Path:
    key = hashlib.sha256(json.dumps(env_key(lock), sort_keys=True).encode()).hexdigest()[:12]
    return tools_dir() / f"onnx2tf-py{sys.version_info[0]}{sys.version_info[1]}-{key}"


def ensure_env(progress=None, lock: Path = LOCK_FILE) -> Path:
    """The environment's Python, built on first use (a few minutes, ~2.5 GB from PyPI), marked in use."""
    d = env_dir(lock)
    with _exclusive(d.parent / f".{d.name}.lock"):
        if not _valid(d, lock):
            if d.exists():
                if _in_use(d):
                    raise BackendUnavailableError(f"onnx2tf environment {d} is incomplete but in use by another "
                                                  f"process; remove it once that run has finished")
                shutil.rmtree(d)
            if progress:
                progress(f"creating the onnx2tf converter environment in {d} (once; ~2.5 GB)")
            _build(d, lock)
        _repair_scripts(d)
        _hold(d)
    return d / "bin" / "python"


def adopt(built: Path, lock: Path = LOCK_FILE) -> Path:
    """Move an environment already built from ``lock`` (e.g. the one whose ``pip freeze`` wrote it) into place."""
    d = env_dir(lock)
    with _exclusive(d.parent / f".{d.name}.lock"):
        if not _valid(d, lock):
            (Path(built) / MARKER).write_text(json.dumps({"key": env_key(lock)}, indent=1))
            os.rename(built, d)
            _fix_scripts(Path(built), d)
    return d


def _fix_scripts(old: Path, new: Path) -> None:
    """Console scripts (``onnxsim``, which onnx2tf runs as a command) name their venv's python in the shebang:
    point them at the folder the venv now lives in."""
    for f in (new / "bin").iterdir():
        if not f.is_file() or f.is_symlink():
            continue
        head = f.read_bytes()[:256]
        if head.startswith(b"#!") and str(old).encode() in head.split(b"\n", 1)[0]:
            f.write_bytes(f.read_bytes().replace(str(old).encode(), str(new).encode(), 1))


def _repair_scripts(d: Path) -> None:
    """An environment built before its scripts were fixed after the rename (an older edgefm) still names its build
    folder in ``bin/onnxsim``'s shebang: point every script whose interpreter is gone at this environment."""
    for f in (d / "bin").iterdir():
        if not f.is_file() or f.is_symlink():
            continue
        first = f.read_bytes()[:512].split(b"\n", 1)[0]
        if first.startswith(b"#!") and first.endswith(b"/bin/python") and not Path(first[2:].decode()).exists():
            _fix_scripts(Path(first[2:].decode()).parent.parent, d)


def _valid(d: Path, lock: Path) -> bool:
    try:
        return (d / "bin" / "python").exists() and json.loads((d / MARKER).read_text()).get("key") == env_key(lock)
    except (OSError, ValueError):
        return False


def _build(d: Path, lock: Path) -> None:
    for stale in d.parent.glob(f".{d.name}.build-*"):  # a killed build (we hold the build lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = d.parent / f".{d.name}.build-{os.getpid()}"
    try:
        _run([sys.executable, "-m", "venv", str(tmp)], "create the venv", d)
        py = tmp / "bin" / "python"
        _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-input", "--disable-pip-version-check",
              "-r", str(lock)], f"pip install -r {lock} (offline?)", d)
        _run([str(py), "-c", "import onnx2tf"], "import onnx2tf in it", d)
        (tmp / MARKER).write_text(json.dumps({"key": env_key(lock)}, indent=1))
        os.rename(tmp, d)
        _fix_scripts(tmp, d)  # bin/onnxsim's shebang still names the build folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _run(cmd: list[str], what: str, d: Path) -> str:
    return litert_env._run(cmd, what, d, label="onnx2tf environment")


def convert(python: Path, onnx_path: Path, out: Path, input_shapes: dict[str, list[int]], keep_layout: list[str],
            timeout: float = 1800, replace: Optional[list[dict]] = None) -> dict:
    """ONNX -> fp32 .tflite at ``out`` with onnx2tf in its environment (a one-shot process that imports only
    onnx2tf's own packages). Inputs keep the ONNX layout (no NCHW -> NHWC at the boundary) and their names,
    at the fixed ``input_shapes``. Returns {"versions", "seconds"}; raises ``ExportError`` with onnx2tf's
    own last error line. ``replace``: operations of an onnx2tf parameter replacement file (``-prf``)."""
    from edgefm.errors import ExportError

    work = Path(out).parent / "onnx2tf"
    work.mkdir(exist_ok=True)
    req = {"onnx": str(onnx_path), "out_dir": str(work), "out": str(out), "input_shapes": input_shapes,
           "keep_layout": keep_layout, "param_replacement": replace or []}
    (work / "request.json").write_text(json.dumps(req))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}  # nothing of the main env
    # onnx2tf runs `onnxsim` as a command (it folds shapes: without it an RNN's shapes stay symbolic and
    # onnx2tf lays its states out wrong): the environment's bin/ comes first on PATH
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PATH=os.pathsep.join([str(Path(python).parent), env.get("PATH", "")]))
    try:
        r = subprocess.run([str(python), "-I", str(RUNNER), str(work / "request.json")], capture_output=True,
                           text=True, timeout=timeout, cwd=work, env=env)
    except subprocess.TimeoutExpired:  # subprocess.run kills and waits for the child before raising
        raise ExportError(f"tflite: onnx2tf took longer than {timeout:.0f} s") from None
    res = work / "result.json"
    result = json.loads(res.read_text()) if res.exists() else {"ok": False}
    if not result.get("ok"):
        why = _one_line(result.get("error") or " | ".join((r.stderr or r.stdout).strip().splitlines()[-2:]))
        raise ExportError(f"tflite: onnx2tf {result.get('versions', {}).get('onnx2tf', '')} cannot convert "
                          f"{Path(onnx_path).name}{_failed_node(r.stdout or '', onnx_path)}: {why}")
    return result


def _one_line(error: str, limit: int = 300) -> str:
    """onnx2tf's (Keras') multi-line exception text as one line, without the "Call arguments" listing."""
    text = error.split("Call arguments received", 1)[0]
    return " ".join(text.split())[:limit]


def _failed_node(stdout: str, onnx_path: Path) -> str:
    """" at node NAME (OpType)" for the ONNX node onnx2tf names in its error report (``onnx_op_name: ...``)."""
    import re

    names = re.findall(r"onnx_op_name: (\S+)", re.sub(r"\x1b\[[0-9;]*m", "", stdout))
    if not names:
        return ""
    op = ""
    try:
        import onnx

        model = onnx.load(str(onnx_path), load_external_data=False)
        op = next((f" ({n.op_type})" for n in model.graph.node if n.name == names[-1]), "")
    except Exception:  # noqa: BLE001 - the name alone still says where
        pass
    return f" at node '{names[-1]}'{op}"
