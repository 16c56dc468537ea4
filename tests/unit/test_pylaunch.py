"""edgefm.pylaunch: the command that starts a Python like this one ($EDGEFM_PYTHON, else sys.executable)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgefm.errors import ConfigError
from edgefm.pylaunch import python_command


def test_default_is_this_interpreter(monkeypatch):
    monkeypatch.delenv("EDGEFM_PYTHON", raising=False)
    assert python_command() == [sys.executable]
    monkeypatch.setenv("EDGEFM_PYTHON", "  ")
    assert python_command() == [sys.executable]


def test_a_launcher_is_split_and_starts_python(monkeypatch, tmp_path):
    # a launcher with arguments, one of them quoted with a space (as a qemu -L ROOT path may be)
    monkeypatch.setenv("EDGEFM_PYTHON", f"env 'EDGEFM_SEEN=via launcher' {sys.executable}")
    cmd = python_command()
    assert cmd == ["env", "EDGEFM_SEEN=via launcher", sys.executable]
    r = subprocess.run([*cmd, "-c", "import os; print(os.environ['EDGEFM_SEEN'])"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "via launcher"


def test_bad_quoting_names_the_variable(monkeypatch):
    monkeypatch.setenv("EDGEFM_PYTHON", "qemu-aarch64-static -L '/opt/root")
    with pytest.raises(ConfigError, match=r"\$EDGEFM_PYTHON=.*not a valid command line"):
        python_command()
