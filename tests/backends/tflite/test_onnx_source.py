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


def test_onnx_streaming_lstm_converts_and_verifies_by_streaming(tmp_path):
    """silero's layout from ONNX only: onnx2tf (shapes folded by onnxsim) unrolls the LSTM into a WHILE loop and
    writes the (2, 1, hidden) state as NWC; the artifact transposes it back, is judged by streaming, and its int8
    is dynamic-range where full-integer calibration cannot run (noted). Either way it verifies."""
    from tests.models import streaming as S

    (tmp_path / "src").mkdir()
    torch.onnx.export(S.stream_lstm().eval(), (torch.zeros(2, 64), torch.zeros(2, 2, 32), torch.tensor(16000)),
                      str(tmp_path / "src" / "model.onnx"), dynamo=False, input_names=["input", "state", "sr"],
                      output_names=["prob", "stateN"], dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"},
                                                                     "prob": {0: "batch"}, "stateN": {1: "batch"}})
    np.savez(tmp_path / "calib.npz", input=S.streams(12, 4))
    cfg = build_config(None, source=tmp_path / "src" / "model.onnx", output=tmp_path / "b",
                       inputs=["sr:scalar:int64=16000"], calib=tmp_path / "calib.npz", targets=["tflite-arm64"])
    man = compress(cfg)  # the state pair state/stateN is read off the names
    assert man.spec.state[0].output == "stateN"
    assert all(c.ok for r in verify_bundle(tmp_path / "b") for c in r.checks)
    e = man.targets["tflite-arm64"]
    assert e.options["converter"].startswith("onnx2tf") and e.metrics["stateN"]["final_drift"] < 0.1
    conv = next(s for s in man.stages if s.name == "convert")
    assert any("constant inputs ['sr'] folded" in n for n in conv.notes)
    if e.options["quantization"] == "dynamic":
        assert any("dynamic-range int8 instead" in n for n in conv.notes), conv.notes


def test_onnx_channel_slice_before_lstm_converts(tmp_path):
    """silero's STFT front end from ONNX only: a channel Slice of a Conv1d output chained to full-range Slices
    (a scripted export writes them), feeding an LSTM with state. onnx2tf alone mislays the channel bounds in NWC
    (0-sized tensors, then the LSTM fails); with the no-op Slices removed first it converts and verifies."""
    from tests.models import streaming as S

    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "model.onnx"
    torch.onnx.export(S.scripted_stft_lstm(), (torch.zeros(2, 64), torch.zeros(2, 2, 32)), str(src), dynamo=False,
                      input_names=["input", "state"], output_names=["prob", "stateN"],
                      dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"}, "prob": {0: "batch"},
                                    "stateN": {1: "batch"}})
    assert sum(n.op_type == "Slice" for n in onnx.load(str(src)).graph.node) >= 5  # the chained full-range ones
    np.savez(tmp_path / "calib.npz", input=S.streams(12, 4))
    cfg = build_config(None, source=src, output=tmp_path / "b", calib=tmp_path / "calib.npz", targets=["tflite-arm64"])
    man = compress(cfg)
    assert all(c.ok for r in verify_bundle(tmp_path / "b") for c in r.checks)
    e = man.targets["tflite-arm64"]
    assert e.options["converter"].startswith("onnx2tf") and e.metrics["stateN"]["final_drift"] < 0.1
    conv = next(s for s in man.stages if s.name == "convert")
    assert any("full-range Slice axes removed before onnx2tf" in n for n in conv.notes), conv.notes
    # the state comes out in the ONNX layout inside the model, so LiteRT's own API can feed it back as it is
    assert "output_perm" not in e.options and e.options["weight_granularity"] == "channel"
    from ai_edge_litert.interpreter import Interpreter

    run = Interpreter(str(tmp_path / "b" / "tflite-arm64" / "model.tflite")).get_signature_runner()
    state = np.zeros((2, 1, 32), np.float32)
    for chunk in S.streams(1, 3)[0]:
        state = run(input=chunk[None], state=state)["stateN"]
        assert state.shape == (2, 1, 32)


def test_square_nchw_output_is_laid_out_as_onnx_in_litert(tmp_path):
    """A conv output with C == H == W (8, 8, 8): onnx2tf's NHWC output has the same shape as the ONNX NCHW one,
    so only its values tell the layouts apart. It is transposed back inside the model, and LiteRT's own
    Interpreter (no edgefm code) returns the ONNX layout (before: refused at the fp32 conversion, max abs 14)."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 8, 8])],
                              [numpy_helper.from_array(w, "w")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "conv.onnx"))
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(16, 3, 8, 8)).astype(np.float32))
    compress(build_config(source=tmp_path / "conv.onnx", output=tmp_path / "b", targets=["tflite-arm64"],
                          calib=tmp_path / "calib.npz", quantize="fp32", outputs={"y": {"kind": "regression"}}))
    x = rng.normal(size=(1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "conv.onnx")).run(None, {"x": x})[0]
    runner = Interpreter(model_path=str(tmp_path / "b" / "tflite-arm64" / "model.tflite")).get_signature_runner()
    for _ in range(3):  # call after call
        got = list(runner(x=x).values())[0]
        assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4
