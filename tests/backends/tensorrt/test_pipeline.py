"""End to end through the CLI: `edgefm compress --target jetson-orin-nano` next to the default ONNX Runtime
target, then `edgefm verify` (integrity, fidelity and TensorRT's rules) and `edgefm.load`."""

from __future__ import annotations

import json

import numpy as np

import edgefm
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
    ev = np.load(CALIB / "digits_eval.npz")
    p = edgefm.load(out, "jetson-orin-nano")
    top1 = float((p({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
    fp32 = float((cnn.reference["logits"].argmax(1) == cnn.eval.labels).mean())
    assert p.executes == "onnxruntime" and top1 >= fp32 - 0.01, (top1, fp32)
