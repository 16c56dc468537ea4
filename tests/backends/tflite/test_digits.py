"""Digits CNN and 2-layer LSTM through litert-torch + AI Edge Quantizer, run in LiteRT."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import edgefm
from edgefm.backends.tflite_run import model_ops

from .conftest import _digits


def _top1(pred, seq: bool) -> float:
    _, x, y = _digits(seq)
    return float((pred({"x": x})["logits"].argmax(1) == y).mean())


@pytest.mark.parametrize("which", ["cnn", "lstm"])
def test_full_int8_accuracy_and_size(which, request):
    out, res = request.getfixturevalue(f"{which}_bundle")
    _, fp32_torch_top1 = request.getfixturevalue(which)
    seq = which == "lstm"
    pred = edgefm.load(out)
    top1 = _top1(pred, seq)
    assert 100 * (fp32_torch_top1 - top1) <= 1.0, (top1, fp32_torch_top1)
    quant = res.stages[-1]
    assert quant.name == "quantize" and quant.settings["mode"] == "full"
    ratio = quant.settings["size_ratio"]
    print(f"{which}: fp32 torch top-1 {fp32_torch_top1:.4f}, full-int8 tflite {top1:.4f}, "
          f"size {quant.settings['output_bytes']} / {quant.settings['fp32_bytes']} = {ratio:.3f}")
    # Issue 5's bound. The LSTM meets it only as fused UNIDIRECTIONAL_SEQUENCE_LSTM ops (0.295 measured):
    # unrolled by litert-torch into ~270 ops it was 0.47.
    assert ratio <= 0.30


@pytest.mark.parametrize("which", ["cnn", "lstm"])
def test_artifact_is_int8_builtin_with_spec_names(which, request):
    out, res = request.getfixturevalue(f"{which}_bundle")
    man = json.loads((out / "manifest.json").read_text())
    entry = man["targets"]["tflite-arm64"]
    assert entry["options"]["converter"].startswith("litert-torch ")
    assert entry["runtime_versions"]["litert-torch"]
    ops = [o["op"] for o in model_ops(out / entry["artifact"])]
    assert not any(o.startswith("Flex") or o in ("CUSTOM", "WHILE") for o in ops), ops
    assert "FULLY_CONNECTED" in ops and ("CONV_2D" in ops) == (which == "cnn")
    if which == "lstm":  # one fused op per layer, quantized by TFLite's own quantizer (int16 cell state)
        assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 2 and len(ops) < 10, ops
        assert entry["options"]["quantizer"] == "litert-calibrator" and entry["options"]["fused_lstm_layers"] == 2
    else:
        assert entry["runtime_versions"]["ai-edge-quantizer"] and entry["options"]["quantizer"] == "ai-edge-quantizer"
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(out / entry["artifact"]))
    assert it.get_signature_list() == {"serving_default": {"inputs": ["x"], "outputs": ["logits"]}}
    r = it.get_signature_runner()
    assert list(r.get_input_details()["x"]["shape"]) == ([1, 8, 8] if which == "lstm" else [1, 1, 8, 8])  # NCHW kept
    # Activations are int8 inside; with io=float the graph quantizes its float input itself.
    io = np.int8 if which == "lstm" else np.float32
    assert r.get_input_details()["x"]["dtype"] == io and r.get_output_details()["logits"]["dtype"] == io
    assert any(t["dtype"] == np.int8 and len(t["shape"]) > 1 for t in it.get_tensor_details())
    assert entry["options"]["io"] == ("int8" if which == "lstm" else "float")


@pytest.mark.parametrize("which", ["cnn", "lstm"])
def test_fp32_conversion_matches_onnx_reference(which, request):
    """Every compile first checks the fp32 .tflite against the fp32 ONNX outputs (compile limits)."""
    _, res = request.getfixturevalue(f"{which}_bundle")
    convert = res.stages[0]
    assert convert.name == "convert" and convert.settings["converter"] == "litert-torch"
    m = convert.metrics["logits"]
    assert m["max_abs"] < 1e-4 and m["top1_agreement"] == 1.0, m
    assert convert.metrics["_accuracy"]["top1"] == convert.metrics["_accuracy"]["fp32_top1"]


def test_predictor_takes_floats_for_int8_io(lstm_bundle):
    out, res = lstm_bundle
    pred = edgefm.load(out)
    _, x, _ = _digits(True)
    got = pred({"x": x[:50]})["logits"]
    assert got.dtype == np.float32
    ref = np.load(out / "eval.npz")["ref/logits"][:50]
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.abs(got - ref).max() < 3.0  # one int8 step of the output scale is ~0.05
    # The fused LSTM ops keep their state in variable tensors: every sample must still start from zero,
    # whatever ran before it.
    backwards = np.concatenate([pred({"x": x[i:i + 1]})["logits"] for i in reversed(range(50))])[::-1]
    np.testing.assert_array_equal(backwards, got)


def test_predictor_batches_and_threads(cnn_bundle):
    out, _ = cnn_bundle
    pred = edgefm.load(out, threads=2)
    assert pred.input_names == ["x"] and pred.output_names == ["logits"]
    _, x, _ = _digits(False)
    x = x[:40]
    one = np.concatenate([pred({"x": x[i:i + 1]})["logits"] for i in range(len(x))])
    np.testing.assert_array_equal(pred({"x": x})["logits"], one)
    assert pred({"x": x[:7]})["logits"].shape == (7, 10) and one.dtype == np.float32
    assert pred({"x": x[:0]})["logits"].shape == (0, 10)
    with ThreadPoolExecutor(8) as ex:  # more callers than the pool: they must queue, not share interpreters
        results = list(ex.map(lambda i: pred({"x": x[i:i + 5]})["logits"], range(0, 40, 5)))
    np.testing.assert_array_equal(np.concatenate(results), one)
