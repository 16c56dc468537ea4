"""The TensorRT-ready Q/DQ ONNX of the digits CNN, the digits LSTM and MiniLM: valid int8 models that run in
ONNX Runtime within the spine's bounds, with Q/DQ where TensorRT fuses them and nowhere else."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.backends.tensorrt import helpers
from edgefm import fidelity
from edgefm.backends import tensorrt_rules as rules
from edgefm.bundle import read_manifest


def _qdq(bundle, target):
    entry = read_manifest(bundle).targets[target]
    model = onnx.load(str(bundle / entry.options["onnx"]))
    build = json.loads((bundle / entry.options["build"]).read_text())
    return entry, model, build


def _dq_fed(model):
    """Names of nodes with at least one DequantizeLinear input."""
    prod = {o: n for n in model.graph.node for o in n.output}
    return {n.name for n in model.graph.node
            if any(prod.get(i) is not None and prod[i].op_type == "DequantizeLinear" for i in n.input)}


def _assert_symmetric_int8(model):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qs = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qs, "no Q/DQ nodes: not an int8 model"
    for n in qs:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), f"{n.name}: zero-point {zp.dtype} {zp.ravel()[:3]}"
        assert (inits[n.input[1]] > 0).all()


def _top1(bundle, ex, target):
    """Top-1 of the Q/DQ ONNX on held-out digits, computed here independently of the backend's metrics."""
    entry = read_manifest(bundle).targets[target]
    got = helpers.ort_run(bundle / entry.options["onnx"], ex.eval.inputs)["logits"]
    return float((got.argmax(1) == ex.eval.labels).mean()), float((ex.reference["logits"].argmax(1)
                                                                    == ex.eval.labels).mean())


def test_cnn_qdq_is_int8_within_one_point(cnn, cnn_bundle):
    entry, model, build = _qdq(cnn_bundle, "jetson-orin-nano")
    _assert_symmetric_int8(model)
    top1, fp32 = _top1(cnn_bundle, cnn, "jetson-orin-nano")
    assert fp32 - top1 <= 0.01, (top1, fp32)
    assert entry.metrics["_accuracy"]["top1"] == pytest.approx(top1)
    convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert set(convs) <= _dq_fed(model)  # every weighted layer reads int8
    inits = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:  # weights: one scale per output channel, on axis 0 (Conv) / 0 (Gemm transB)
        if n.op_type == "DequantizeLinear" and len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] > 1:
            assert next(a.i for a in n.attribute if a.name == "axis") == 0
    assert build["quantization"]["calibration"] == "MinMax"
    assert {f["op"] for f in build["fp16_layers"]} <= {"Flatten"}  # Relu/pools fuse into the int8 convs


def test_lstm_cells_stay_fp16_and_accuracy_holds(lstm, lstm_bundle):
    entry, model, build = _qdq(lstm_bundle, "jetson-orin-nx")
    _assert_symmetric_int8(model)
    top1, fp32 = _top1(lstm_bundle, lstm, "jetson-orin-nx")
    assert fp32 - top1 <= 0.01, (top1, fp32)
    fed = _dq_fed(model)
    assert [n.op_type for n in model.graph.node if n.name in fed] == ["Gemm"]
    assert [f["op"] for f in build["fp16_layers"]].count("LSTM") == 2


def test_minilm_cosine_and_float_islands(minilm, minilm_bundle):
    entry, model, build = _qdq(minilm_bundle, "jetson-agx-orin")
    _assert_symmetric_int8(model)
    got = helpers.ort_run(minilm_bundle / entry.options["onnx"], minilm.eval.inputs)["sentence_embedding"]
    cos = fidelity.cosine_per_sample(minilm.reference["sentence_embedding"], got)
    assert cos.mean() >= 0.98, cos.mean()
    fed = _dq_fed(model)
    by_op = {}
    for n in model.graph.node:
        by_op.setdefault(n.op_type, []).append(n.name in fed)
    for op in ("LayerNormalization", "Softmax", "Erf", "Add"):
        assert not any(by_op.get(op, [])), f"{op} reads int8"
    linear = sum(by_op["MatMul"])
    assert 30 <= linear <= 36 and len(by_op["MatMul"]) - linear >= 12  # attention BMMs stay float
    assert build["quantization"]["calibration"] == "Percentile"
    assert build["profiles"]["input_ids"] == {"min": [1, 1], "opt": [1, 64], "max": [64, 64]}


def test_rules_accept_the_orin_models_and_xavier_refuses_layernorm(cnn_bundle, lstm_bundle, minilm_bundle):
    for bundle, target in ((cnn_bundle, "jetson-orin-nano"), (lstm_bundle, "jetson-orin-nx"),
                           (minilm_bundle, "jetson-agx-orin")):
        assert [v for v in rules.verify_bundle(bundle, target) if v.severity == "error"] == []
    # the same MiniLM bundle checked against Xavier NX's TensorRT 8.5, which has no LayerNormalization
    found = rules.verify_bundle(minilm_bundle, "jetson-xavier-nx")
    ln = [v for v in found if v.rule == "op"]
    assert len(ln) == 13 and all(v.op == "LayerNormalization" and "8.5" in v.message for v in ln)
    assert {v.rule for v in found if v.severity == "warning"} == {"input-type"}  # int64 ids on 8.5
