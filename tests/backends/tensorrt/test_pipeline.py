"""End to end through the CLI: `edgefm compress --target jetson-orin-nano` next to the default ONNX Runtime
target, then `edgefm verify` (integrity, fidelity and TensorRT's rules), `edgefm.load`, and `edgefm compile` where
TensorRT is missing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import edgefm
from edgefm.backends.tensorrt import engine_available
from tests.conftest import CALIB
from tests.integration.test_compress import cli


def test_compress_verify_load_for_jetson(cnn, tmp_path):
    out = tmp_path / "bundle"
    code, text = cli("compress", cnn.checkpoint, "-o", out, "--arch", "edgefm.zoo:digits_cnn", "--input",
                     "x:1,1,8,8", "--calib", CALIB / "digits_calib.npz", "--eval", CALIB / "digits_eval.npz",
                     "--target", "jetson-orin-nano", "--target", "onnxruntime-cpu")
    assert code == 0, text
    m = json.loads((out / "manifest.json").read_text())
    entry = m["targets"]["jetson-orin-nano"]
    assert entry["backend"] == "tensorrt" and entry["artifact"] == "jetson-orin-nano/model.qdq.onnx"
    assert entry["options"]["engine"] is None and entry["hardware"]["target"]["compute_capability"] == "8.7"
    assert (out / "jetson-orin-nano" / "build.json").is_file()
    code, text = cli("verify", out, "--target", "jetson-orin-nano")
    assert code == 0, text
    assert "rules" in text and "all rules hold" in text
    # the same bundle checked against an older Jetson's TensorRT (8.5): int8 weight initializers are rejected
    code, text = cli("verify", out, "--target", "jetson-xavier-nx")
    assert code == 1 and "FAIL" in text and "int8" in text and "jetson-xavier-nx" in text, text
    ev = np.load(CALIB / "digits_eval.npz")
    p = edgefm.load(out, "jetson-orin-nano")
    top1 = float((p({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
    fp32 = float((cnn.reference["logits"].argmax(1) == cnn.eval.labels).mean())
    assert p.executes == "onnxruntime" and top1 >= fp32 - 0.01, (top1, fp32)


@pytest.mark.skipif(engine_available(), reason="TensorRT is here: test_engine.py builds engines")
def test_compile_without_tensorrt_is_one_clear_error(cnn_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(cnn_bundle, b)
    before = (b / "manifest.json").read_text()
    code, text = cli("compile", b)
    assert code != 0 and "needs TensorRT's Python bindings" in text and "Traceback" not in text
    assert (b / "manifest.json").read_text() == before
    code, text = cli("compile", b, "--target", "onnxruntime-cpu")
    assert code != 0 and "no TensorRT target named 'onnxruntime-cpu'" in text
