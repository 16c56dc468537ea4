"""LiteRT from ONNX-only sources (onnx2tf in its own environment, AI Edge Quantizer after it): an ONNX file with
external data and a plain ONNX file each give a verified .tflite within the contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgefm.config import build_config
from edgefm.errors import UnsupportedOpError
from edgefm.pipeline import compress
from edgefm.verify import verify_bundle

CALIB = Path(__file__).resolve().parents[3] / "calibration"


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    from edgefm import zoo

    d = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    m = zoo.digits_cnn()
    zoo.train_digits(m, epochs=4)
    tmp = d / "plain.onnx"
    torch.onnx.export(m.eval(), (torch.zeros(2, 1, 8, 8),), str(tmp), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    (d / "ext").mkdir()
    onnx.save_model(onnx.load(str(tmp)), str(d / "ext" / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    return tmp, d / "ext" / "model.onnx"


def _compress(source, out, targets, **kw):
    cfg = build_config(None, source=source, output=out, calib=CALIB / "digits_calib.npz",
                       eval=CALIB / "digits_eval.npz", targets=targets, **kw)
    man = compress(cfg)
    assert all(c.ok for r in verify_bundle(out) for c in r.checks)
    return man


def test_onnx_with_external_data_to_full_int8(cnn_onnx, tmp_path):
    man = _compress(cnn_onnx[1], tmp_path / "b", ["tflite-arm64"])
    e = man.targets["tflite-arm64"]
    assert e.options["converter"].startswith("onnx2tf") and e.options["quantization"] == "full"
    assert e.metrics["logits"]["top1_agreement"] >= 0.95
    acc = e.metrics["_accuracy"]
    assert 100 * (acc["fp32_top1"] - acc["top1"]) <= 1.0
    assert "fp32/model.onnx.data" in man.files
    conv = next(s for s in man.stages if s.name == "convert")
    assert conv.settings["converter"] == "onnx2tf" and conv.settings["input_shapes"]["x"] == [1, 1, 8, 8]


def test_plain_onnx_to_dynamic_int8(cnn_onnx, tmp_path):
    target = tmp_path / "tflite-dyn.yaml"
    text = (Path(__file__).resolve().parents[3] / "targets" / "tflite-arm64.yaml").read_text()
    target.write_text(text.replace("name: tflite-arm64", "name: tflite-dyn").replace("int8: auto", "int8: dynamic"))
    man = _compress(cnn_onnx[0], tmp_path / "b", [str(target)])
    e = next(iter(man.targets.values()))
    assert e.options["quantization"] == "dynamic" and e.metrics["logits"]["top1_agreement"] >= 0.95


def test_onnx_rnn_that_onnx2tf_gets_wrong_is_refused_in_one_line(tmp_path):
    """onnx2tf 1.29 turns an LSTM's final state (given an initial state) into the per-step outputs; the
    streamed verification catches it and says so (or, once onnx2tf converts it right, it verifies)."""
    from tests.models import streaming as S

    (tmp_path / "src").mkdir()
    torch.onnx.export(S.stream_lstm().eval(), (torch.zeros(2, 64), torch.zeros(2, 2, 32), torch.tensor(16000)),
                      str(tmp_path / "src" / "model.onnx"), dynamo=False, input_names=["input", "state", "sr"],
                      output_names=["prob", "stateN"], dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"},
                                                                     "prob": {0: "batch"}, "stateN": {1: "batch"}})
    np.savez(tmp_path / "calib.npz", input=S.streams(12, 4))
    cfg = build_config(None, source=tmp_path / "src" / "model.onnx", output=tmp_path / "b", quantize="fp32",
                       inputs=["sr:scalar:int64=16000"], state=["state:stateN"], calib=tmp_path / "calib.npz",
                       targets=["tflite-arm64"])
    try:
        compress(cfg)
    except UnsupportedOpError as e:
        msg = str(e)
        assert "onnx2tf conversion is wrong: output 'stateN'" in msg and "\n" not in msg
        assert not (tmp_path / "b").exists()
    else:
        assert all(c.ok for r in verify_bundle(tmp_path / "b") for c in r.checks)
