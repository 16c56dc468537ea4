"""The litert-torch converter environment's keying, locking and atomic build, with a private tools folder and
tiny lock files (the real one takes a minute and ~750 MB; the shared ~/.cache/edgefm/tools is never touched)."""

import json
import os
import subprocess
import sys

import pytest

from edgefm.backends import litert_env
from edgefm.errors import BackendUnavailableError
from tests.conftest import ROOT


@pytest.fixture
def tools(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFM_TOOLS_DIR", str(tmp_path / "tools"))
    yield tmp_path / "tools"
    litert_env.release()


@pytest.fixture
def empty_lock(tmp_path):
    p = tmp_path / "empty.lock"
    p.write_text("# nothing beyond the main environment\n")
    return p


def test_committed_lock_pins_exact_versions():
    reqs = litert_env._requirements(litert_env.LOCK_FILE)
    assert any(r.startswith("litert-torch==") for r in reqs)
    assert all("==" in r and not r.startswith("torch==") for r in reqs), reqs


def test_second_interpreter_and_other_lock_get_other_envs(tools, empty_lock, tmp_path):
    venv = tmp_path / "venv2"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    other = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "from edgefm.backends import litert_env; print(litert_env.env_dir())"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    mine = litert_env.env_dir()
    assert other != str(mine) and os.path.dirname(other) == str(tools)
    assert litert_env.env_dir(empty_lock) != mine  # another lock file: another env, the old one stays


def test_build_is_atomic_reused_and_held(tools, empty_lock):
    py = litert_env.ensure_env(lock=empty_lock, check_imports=("json",))
    d = py.parent.parent
    assert json.loads((d / litert_env.MARKER).read_text())["key"] == litert_env.env_key(empty_lock)
    out = subprocess.run([str(py), "-c", "import sys, numpy; print(sys.prefix)"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == str(d)  # the renamed venv works where it landed, and sees the main environment's packages
    stamp = (d / litert_env.MARKER).stat().st_mtime_ns
    assert litert_env.ensure_env(lock=empty_lock, check_imports=("json",)) == py
    assert (d / litert_env.MARKER).stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert litert_env._in_use(d)
    assert sorted(p.name for p in tools.iterdir() if p.name.startswith(".") and "build" in p.name) == []


def test_failed_offline_build_leaves_nothing(tools, tmp_path, monkeypatch):
    lock = tmp_path / "bad.lock"
    lock.write_text("edgefm-no-such-package==0.0.0\n")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: pip may not reach any index
    with pytest.raises(BackendUnavailableError) as e:
        litert_env.ensure_env(lock=lock, check_imports=())
    msg = str(e.value)
    assert "\n" not in msg and "pip install" in msg and "nothing was left behind" in msg
    assert [p for p in tools.iterdir() if not p.name.endswith((".lock", ".use"))] == []


def test_env_in_use_is_never_deleted(tools, empty_lock):
    py = litert_env.ensure_env(lock=empty_lock, check_imports=())
    d = py.parent.parent
    litert_env.release()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_SH); print('held', "
        "flush=True); time.sleep(60)"), str(litert_env._use_file(d))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (d / litert_env.MARKER).write_text("{}")  # looks broken, but another process runs from it
        with pytest.raises(BackendUnavailableError, match="in use by another process"):
            litert_env.ensure_env(lock=empty_lock, check_imports=())
        assert (d / "bin" / "python").exists()
    finally:
        holder.kill()
        holder.wait()
    assert litert_env.ensure_env(lock=empty_lock, check_imports=()) == py  # unused now: rebuilt in place
