"""End to end: ``edgefm.pipeline.compress`` with the rpi5 (tflite) target next to ONNX Runtime, then
``edgefm.load`` and ``edgefm verify``."""

from __future__ import annotations

import json

import numpy as np

import edgefm
from edgefm.verify import verify_bundle

from .conftest import CALIB


def test_compress_rpi5_and_load(pipeline_bundle, cnn):
    out = pipeline_bundle
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["targets"]) == {"rpi5", "tflite-arm64", "onnxruntime-cpu"}
    arts = [out / man["targets"][t]["artifact"] for t in ("rpi5", "tflite-arm64")]
    assert arts[0].read_bytes() == arts[1].read_bytes()  # converted once, the same artifact for both
    entry = man["targets"]["rpi5"]
    assert entry["backend"] == "tflite" and entry["precision"] == "int8"
    assert entry["hardware"]["cpu_core"] == "cortex-a76" and entry["options"]["converter"].startswith("litert-torch")
    stages = [s["name"] for s in man["stages"] if s["target"] == "rpi5"]
    assert stages == ["convert", "quantize"]
    ev = np.load(CALIB / "digits_eval.npz")
    pred = edgefm.load(out, "rpi5")
    assert pred.backend == "tflite"
    top1 = float((pred({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
    assert 100 * (cnn[1] - top1) <= 1.0, (top1, cnn[1])


def test_verify_checks_the_tflite_target(pipeline_bundle):
    (report,) = verify_bundle(pipeline_bundle, ["rpi5"])
    assert report.ok, [(c.name, c.detail) for c in report.checks]
    assert [c.name for c in report.checks] == ["integrity", "fidelity", "direct"]


def test_cli_inspect_shows_the_tflite_target(pipeline_bundle):
    from typer.testing import CliRunner

    from edgefm.cli import app

    res = CliRunner().invoke(app, ["inspect", str(pipeline_bundle)])
    assert res.exit_code == 0, res.output
    assert "rpi5" in res.output and "tflite" in res.output
