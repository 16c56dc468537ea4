"""A streaming model with carried state and a scalar sample-rate input (like silero-vad), compressed from a
state_dict + --arch, from scripted TorchScript (``sr: int``) and from ONNX with external data: calibration
and verification run streams chunk by chunk with the state fed back, as the device will."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

import edgefm
from edgefm.backends.base import Samples
from edgefm.cli import app
from edgefm.verify import verify_bundle
from tests.models import streaming as S

TARGETS = ["onnxruntime-cpu", "openvino-cpu"]
runner = CliRunner()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    torch.save({"model_state": S.stream_gru().state_dict(), "step": 10}, d / "ckpt.pt")
    S.scripted().save(str(d / "scripted.pt"))
    (d / "onnx").mkdir()
    tmp = d / "plain.onnx"
    torch.onnx.export(S.stream_gru().eval(), (torch.zeros(2, 64), torch.zeros(2, 2, 32), torch.tensor(16000)),
                      str(tmp), dynamo=False, input_names=["input", "state", "sr"], output_names=["prob", "stateN"],
                      dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"}, "prob": {0: "batch"},
                                    "stateN": {1: "batch"}})
    onnx.save_model(onnx.load(str(tmp)), str(d / "onnx" / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.weights", size_threshold=0)
    streams = S.streams(24, 6)
    np.savez(d / "calib.npz", x=streams)
    np.savez(d / "calib_onnx.npz", input=streams)
    return d


def _check(bundle, state_out: str):
    from edgefm.bundle import read_manifest

    man = read_manifest(bundle)
    assert man.spec.state and man.spec.state[0].output == state_out
    assert any("streaming: state" in n for n in man.stages[0].notes)
    for name, e in man.targets.items():
        m = e.metrics[state_out]  # the contract's state gate, read along the stream (chunks on axis 0)
        assert m["steps"] == 6 and m["final_drift"] <= m["drift"] < 0.1, (name, m)
    reports = verify_bundle(bundle)
    assert all(c.ok for r in reports for c in r.checks), reports
    # the device's loop: a Predictor fed chunk by chunk, state carried, reproduces the bundle's reference
    with np.load(bundle / "eval.npz") as z:
        inputs = {k[3:]: z[k] for k in z.files if k.startswith("in/")}
        ref = {k[4:]: z[k] for k in z.files if k.startswith("ref/")}
    assert inputs[man.spec.inputs[-1].name].shape == ()  # the constant sr is one scalar, never split
    pred = edgefm.load(bundle, "onnxruntime-cpu")
    got = Samples.for_spec(man.spec, inputs).run(pred, 4)
    for k in ref:
        assert got[k].shape == ref[k].shape
        cos = np.sum(got[k] * ref[k]) / (np.linalg.norm(got[k]) * np.linalg.norm(ref[k]))
        assert cos > 0.999, (k, cos)
    return man


def test_state_dict_source_via_cli(sources, tmp_path):
    out = tmp_path / "b"
    args = ["compress", str(sources / "ckpt.pt"), "-o", str(out), "--arch", "tests/models/streaming.py:stream_gru",
            "--calib", str(sources / "calib.npz"), "--state", "state:output"]
    for i in S.INPUTS:
        args += ["--input", i]
    for t in TARGETS + ["tensorrt"]:  # TensorRT: the Q/DQ ONNX, judged in ONNX Runtime here
        args += ["--target", t]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    man = _check(out, "output")
    assert any("'model_state' entry" in n for n in man.stages[0].notes)


def test_scripted_torchscript_with_int_sr(sources, tmp_path):
    from edgefm.config import build_config
    from edgefm.pipeline import compress

    cfg = build_config(None, source=sources / "scripted.pt", output=tmp_path / "b", inputs=S.INPUTS,
                       state=S.STATE, calib=sources / "calib.npz", targets=TARGETS)
    compress(cfg)
    man = _check(tmp_path / "b", "output")
    sr = man.spec.inputs[2]
    assert sr.baked and sr.value == 16000
    pred = edgefm.load(tmp_path / "b", "onnxruntime-cpu")
    feed = {"x": np.zeros((1, 64), np.float32), "state": np.zeros((2, 1, 32), np.float32)}
    assert pred({**feed, "sr": np.array(16000)})["output"].shape == (2, 1, 32)
    with pytest.raises(edgefm.errors.CalibrationError, match="fixed to 16000"):
        pred({**feed, "sr": np.array(8000)})


def test_onnx_source_with_external_data_recipe(sources, tmp_path):
    from edgefm.config import build_config
    from edgefm.pipeline import compress

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "inputs": [{"name": "sr", "shape": [], "dtype": "int64", "value": 16000}],
        "state": [{"input": "state", "output": "stateN"}], "targets": TARGETS + ["tflite-arm64"]}))
    cfg = build_config(recipe, source=sources / "onnx" / "model.onnx", output=tmp_path / "b",
                       calib=sources / "calib_onnx.npz")
    man = compress(cfg)
    assert "fp32/model.onnx.data" in man.files
    assert man.targets["tflite-arm64"].options["converter"].startswith("onnx2tf")  # an ONNX-only source
    _check(tmp_path / "b", "stateN")


def test_lstm_with_packed_state_for_all_cpu_targets(sources, tmp_path):
    """silero's layout (one LSTM, (h, c) packed in one (2, batch, hidden) state) from a state_dict, for ORT,
    OpenVINO and LiteRT (litert-torch: the initial state makes it unroll the LSTM), each judged by streaming."""
    from edgefm.config import build_config
    from edgefm.pipeline import compress

    torch.save(S.stream_lstm().state_dict(), tmp_path / "lstm.pt")
    cfg = build_config(None, source=tmp_path / "lstm.pt", output=tmp_path / "b",
                       arch="tests/models/streaming.py:stream_lstm", inputs=S.INPUTS, state=S.STATE,
                       calib=sources / "calib.npz", targets=TARGETS + ["tflite-arm64"])
    man = compress(cfg)
    assert man.targets["tflite-arm64"].precision == "int8"
    _check(tmp_path / "b", "output")
    pred = edgefm.load(tmp_path / "b", "tflite-arm64")
    got = pred({"x": np.zeros((3, 64), np.float32), "state": np.zeros((2, 3, 32), np.float32),
                "sr": np.array(16000)})
    assert got["output"].shape == (2, 3, 32) and got["logits"].shape == (3, 1)
