"""What a user sees from the ``edgefm`` command: its version, a quiet compress (edgefm's own step lines with
seconds, no third-party chatter), sizes against fp32, and tables that keep whole values when piped."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import edgefm
from edgefm.cli import app
from tests.conftest import CALIB, ROOT

# Lines third-party libraries print when left alone: NNCF's progress bars, LiteRT's delegate banner, glog /
# torch-logging records (W1202 12:00:00...), Python warnings, ONNX Runtime's C++ log, rich's log paths.
THIRD_PARTY = re.compile(r"Statistics collection|Applying .*correction|INFO: Created TensorFlow|^[IWE]\d{4} "
                         r"|Warning:|UserWarning|TracerWarning|^\d{4}-\d\d-\d\d .*\[W:onnxruntime|cli\.py:\d+"
                         r"|torch\.onnx|absl::", re.M)


def _edgefm(*args, columns: int = 60, timeout: int = 600) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, its output piped, in a 60-column "terminal"."""
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT)}
    env.pop("EDGEFM_QUIET", None)
    return subprocess.run([sys.executable, "-m", "edgefm.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"edgefm {edgefm.__version__}"
    assert _edgefm("--version").stdout.strip() == f"edgefm {edgefm.__version__}"


@pytest.fixture(scope="module")
def quiet_compress(digits_cnn_ckpt, tmp_path_factory):
    """A three-target compress (ONNX Runtime, OpenVINO through NNCF, LiteRT through litert-torch) run as a
    subprocess with its output piped."""
    out = tmp_path_factory.mktemp("cli") / "cnn"
    res = _edgefm("compress", digits_cnn_ckpt[0], "-o", out, "--arch", "edgefm.zoo:digits_cnn", "--input",
                  "x:1,1,8,8", "--calib", CALIB / "digits_calib.npz", "--eval", CALIB / "digits_eval.npz",
                  "-t", "onnxruntime-cpu", "-t", "openvino-cpu", "-t", "tflite-arm64")
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_compress_is_quiet_and_shows_steps_with_seconds(quiet_compress):
    _, res = quiet_compress
    for stream in (res.stdout, res.stderr):
        bad = [m.group(0) for m in THIRD_PARTY.finditer(stream)]
        assert not bad, (bad, stream[-3000:])
    steps = re.findall(r"^\[\s*(\d+\.\d) s\] (.+)$", res.stderr, re.M)
    said = [s for _, s in steps]
    assert any(s.startswith("loading ") for s in said) and any(s.startswith("wrote ") for s in said), said
    for t in ("onnxruntime-cpu", "openvino-cpu", "tflite-arm64"):
        assert any(s.startswith(f"compiling {t} ") for s in said), said
    seconds = [float(x) for x, _ in steps]
    assert seconds == sorted(seconds) and seconds[-1] > 1.0  # seconds since the start, in order
    assert not res.stderr.strip().replace("\n", "").startswith("Traceback")


def test_compress_summary_has_sizes_and_fidelity_unbroken(quiet_compress):
    out, res = quiet_compress
    from edgefm.bundle import read_manifest
    from edgefm.contract import summarize

    m = read_manifest(out)
    fp32 = (out / "fp32" / "model.onnx").stat().st_size
    for name, e in m.targets.items():
        row = next(line for line in res.stdout.splitlines() if f" {name} " in line)
        # whole values on the target's one line, although COLUMNS=60: the artifact path, the fidelity text
        assert e.artifact in row and summarize(e.metrics) in row, row
        size = sum((out / f).stat().st_size for f in e.files)
        assert f"{size / 1e3:.1f} kB ({fp32 / 1e3:.1f} kB, {size / fp32:.2f}x)" in row, row


def test_inspect_piped_keeps_whole_values(quiet_compress):
    out, _ = quiet_compress
    res = _edgefm("inspect", out, columns=40)
    assert res.returncode == 0, res.stderr
    from edgefm.bundle import read_manifest
    from edgefm.contract import summarize

    m = read_manifest(out)
    text = res.stdout
    assert m.source.sha256 in text and "all files match their sha256" in text
    assert "…" not in text
    for name, e in m.targets.items():
        assert e.artifact in text and summarize(e.metrics) in text
        for k, v in e.runtime_versions.items():
            assert f"{k}={v}" in text
    for s in m.stages:  # every stage and its notes (folded over lines, so compare without the line breaks)
        flat = re.sub(r"[\s│]+", " ", text)
        for note in s.notes:
            assert re.sub(r"\s+", " ", note)[:60] in flat, note
    res = _edgefm("inspect", out, "--json")
    import json

    assert json.loads(res.stdout)["targets"].keys() == m.targets.keys()


def test_bench_shows_steps_with_seconds(quiet_compress):
    out, _ = quiet_compress
    res = _edgefm("bench", out, "-t", "onnxruntime-cpu", "--no-baselines", "--runs", "5", "--warmup", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    said = re.findall(r"^\[\s*\d+\.\d s\] (.+)$", res.stderr, re.M)
    assert "onnxruntime-cpu: accuracy on the eval data" in said and "onnxruntime-cpu: timing batch 1" in said, said
    assert not [m.group(0) for m in THIRD_PARTY.finditer(res.stdout + res.stderr)]
    # the table names the machine and the model on each row; the model is the checkpoint's, not a folder's
    row = next(line for line in res.stdout.splitlines() if "| onnxruntime-cpu |" in line)
    assert "| digits_cnn |" in row, row
