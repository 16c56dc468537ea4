"""What a non-editable install carries: the wheel built from pyproject holds every subpackage and the device
profiles of targets/ (as edgefm._profiles), and edgefm unpacked from it, away from the checkout, finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_is_listed_in_pyproject():
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "edgefm").rglob("__init__.py")}
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    assert on_disk | {"edgefm._profiles", "edgefm._calibration"} == listed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # no build isolation: the installed setuptools builds it in seconds without reaching an index
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT)], check=True, cwd=out, capture_output=True)
    (whl,) = out.glob("edgefm-*.whl")
    return whl


def test_wheel_carries_the_target_profiles(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    profiles = sorted(p.name for p in (ROOT / "targets").glob("*.yaml"))
    assert profiles and {f"edgefm/_profiles/{p}" for p in profiles} <= names
    assert "edgefm/backends/tflite_run.py" in names  # copied to the arm64 root by edgefm.emulate
    shipped = sorted(p.name for p in (ROOT / "calibration").iterdir() if p.is_file())
    assert "sentences.txt" in shipped and {f"edgefm/_calibration/{p}" for p in shipped} <= names


def test_unpacked_wheel_lists_the_targets_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import edgefm.targets as t, edgefm.shipped as s; "
            "print(t.builtin_dir().resolve()); print(' '.join(sorted(t.list_targets()))); "
            "print(s.calibration('sentences.txt').resolve())")
    got = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    where, names, sentences = got.stdout.splitlines()
    assert Path(where).is_relative_to(site)  # read from the package, not from the checkout's targets/
    assert names.split() == sorted(p.stem for p in (ROOT / "targets").glob("*.yaml"))
    assert Path(sentences).is_relative_to(site)
    assert Path(sentences).read_text() == (ROOT / "calibration/sentences.txt").read_text()
