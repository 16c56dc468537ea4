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
    if which == "lstm":  # one fused op per layer, quantized by TFLite's own quantizer (int16 cell state),
        # each followed by the zero-weight LSTM that resets the shared state at the end of the call
        assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 4 and len(ops) < 10, ops
        assert entry["options"]["lstm_state"].startswith("reset after every call")
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


def _plain_litert(path, x: np.ndarray, order) -> np.ndarray:
    """Logits from LiteRT's own interpreter and signature runner, one sample per call in ``order``: no edgefm
    code, no reset call, as a user would run the .tflite (XNNPACK applied by default)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    d, o = runner.get_input_details()["x"], runner.get_output_details()["logits"]
    out: dict[int, np.ndarray] = {}
    for i in order:
        xi = x[i:i + 1]
        if d["dtype"] == np.int8:  # the model's own int8 input: quantize with its scale and zero point
            scale, zero = d["quantization"]
            xi = np.clip(np.round(xi / scale) + zero, -128, 127).astype(np.int8)
        y = runner(x=xi)["logits"]
        if o["dtype"] == np.int8:
            scale, zero = o["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        out[i] = np.array(y, copy=True)
    return np.concatenate([out[i] for i in range(len(x))])


@pytest.mark.parametrize("io", ["int8", "float", "fp32-model"])
def test_full_int8_lstm_is_stateless_in_plain_litert(io, request, lstm, tmp_path):
    """Issue 14: the fused LSTM keeps its state in variable tensors, which LiteRT carries from one call to the
    next. The artifact must start every call from zero by itself: 50 held-out samples run forward and in
    reverse order in a bare LiteRT interpreter give identical outputs, and top-1 stays within 1 point of fp32."""
    import torch

    if io == "int8":
        out, _ = request.getfixturevalue("lstm_bundle")
    else:  # float I/O: the quantize op at the model's edge, same fused int8 LSTMs inside; or the fp32 model
        from .conftest import digits_job, tflite_target, write_bundle

        out = tmp_path / "bundle"
        target = tflite_target("fp32") if io == "fp32-model" else tflite_target("int8", io="float")
        write_bundle(out, lambda d: digits_job(d, lstm[0], True, target, bundle_dir=d), target)
    entry = json.loads((out / "manifest.json").read_text())["targets"]["tflite-arm64"]
    path = out / entry["artifact"]
    _, x, y = _digits(True)
    x, y = x[:50], y[:50]
    forward = _plain_litert(path, x, range(50))
    backward = _plain_litert(path, x, reversed(range(50)))
    np.testing.assert_array_equal(forward, backward)
    # the same as one fresh interpreter per sample (the state a first call sees)
    fresh = np.concatenate([_plain_litert(path, x[i:i + 1], [0]) for i in (0, 17, 49)])
    np.testing.assert_array_equal(fresh, forward[[0, 17, 49]])
    with torch.no_grad():
        fp32 = lstm[0](torch.from_numpy(x)).numpy()
    top1, fp32_top1 = float((forward.argmax(1) == y).mean()), float((fp32.argmax(1) == y).mean())
    print(f"plain LiteRT, {io}: top-1 {top1:.3f} on 50 held-out samples (fp32 torch {fp32_top1:.3f})")
    assert 100 * (fp32_top1 - top1) <= 1.0, (top1, fp32_top1)
