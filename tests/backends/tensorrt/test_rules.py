"""The TensorRT rule checker on small Q/DQ models built by hand: one valid model (which ONNX Runtime runs),
then copies broken in each way the rules describe; each violation must name its node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.backends.tensorrt import helpers
from edgefm.backends import tensorrt_rules as rules

PROFILES = {"x": {"min": [1, 4, 8, 8], "opt": [1, 4, 8, 8], "max": [8, 4, 8, 8]},
            "v": {"min": [1, 16], "opt": [1, 16], "max": [8, 16]}}


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def valid_model(opset: int = 17) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(Q/DQ weights per channel) -> Relu ; v -> Q/DQ -> MatMul(Q/DQ weights) : TensorRT's form."""
    rng = np.random.default_rng(0)
    inits = [
        _init("sx", np.float32(0.02)), _init("zx", np.int8(0)),
        _init("w", rng.normal(size=(8, 4, 3, 3)).astype(np.float32)),
        _init("sw", np.full(8, 0.01, np.float32)), _init("zw", np.zeros(8, np.int8)),
        _init("b", np.zeros(8, np.float32)),
        _init("sv", np.float32(0.05)), _init("zv", np.int8(0)),
        _init("m", rng.normal(size=(16, 6)).astype(np.float32)),
        _init("sm", np.full(6, 0.02, np.float32)), _init("zm", np.zeros(6, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="dq_x"),
        helper.make_node("QuantizeLinear", ["w", "sw", "zw"], ["wq"], name="q_w", axis=0),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xd", "wd", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
        helper.make_node("QuantizeLinear", ["v", "sv", "zv"], ["vq"], name="q_v"),
        helper.make_node("DequantizeLinear", ["vq", "sv", "zv"], ["vd"], name="dq_v"),
        helper.make_node("QuantizeLinear", ["m", "sm", "zm"], ["mq"], name="q_m", axis=1),
        helper.make_node("DequantizeLinear", ["mq", "sm", "zm"], ["md"], name="dq_m", axis=1),
        helper.make_node("MatMul", ["vd", "md"], ["z"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8]),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 8, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _set(model, name, arr):
    for i in model.graph.initializer:
        if i.name == name:
            i.CopyFrom(_init(name, arr))
            return model
    raise KeyError(name)


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _hits(model, version="10.3", **kw):
    return [v for v in rules.check_model(model, version, **kw) if v.severity == "error"]


def test_valid_model_runs_and_passes(tmp_path):
    m = valid_model()
    onnx.checker.check_model(m)
    onnx.save(m, tmp_path / "ok.onnx")
    out = helpers.ort_run(tmp_path / "ok.onnx", {"x": np.ones((2, 4, 8, 8), np.float32),
                                                "v": np.ones((2, 16), np.float32)})
    assert out["y"].shape == (2, 8, 8, 8) and out["z"].shape == (2, 6)
    assert rules.check_model(m, "10.3", PROFILES, {"x": (2, 4, 8, 8)}) == []
    assert rules.check_model(m, "8.5.2", PROFILES) == []


@pytest.mark.parametrize("broken, rule, node", [
    (lambda m: _set(m, "zx", np.int8(3)), "qdq-zero-point", "q_x"),
    (lambda m: _set(m, "zx", np.uint8(0)), "qdq-type", "dq_x"),
    (lambda m: _set(m, "sx", np.float32(-0.02)), "qdq-scale", "q_x"),
    (lambda m: _set(_set(m, "sx", np.full(4, 0.02, np.float32)), "zx", np.zeros(4, np.int8)), "qdq-axis", "q_x"),
    (lambda m: [a.CopyFrom(helper.make_attribute("axis", 1)) for n in ("q_w", "dq_w") for a in _node(m, n).attribute]
     and _set(_set(m, "sw", np.full(4, 0.01, np.float32)), "zw", np.zeros(4, np.int8)), "qdq-axis", "dq_w"),
    (lambda m: [a.CopyFrom(helper.make_attribute("axis", 0)) for n in ("q_m", "dq_m") for a in _node(m, n).attribute]
     and _set(_set(m, "sm", np.full(16, 0.02, np.float32)), "zm", np.zeros(16, np.int8)), "qdq-axis", "q_m"),
    (lambda m: _set(m, "sv", np.float32(0.07)) and _node(m, "dq_v").input.__setitem__(1, "sx") or m,
     "qdq-pair", "q_v"),
    (lambda m: _node(m, "relu").input.__setitem__(0, "xq") or m, "qdq-pair", "q_x"),
])
def test_each_broken_qdq_rule_names_its_node(broken, rule, node):
    found = _hits(broken(valid_model()))
    assert any(v.rule == rule and v.node == node for v in found), [str(v) for v in found]


def test_runtime_scale_and_zero_point_are_refused():
    m = valid_model()
    m.graph.node.insert(0, helper.make_node("Identity", ["sx"], ["sx_rt"], name="scale_at_runtime"))
    _node(m, "q_x").input[1] = "sx_rt"
    assert [(v.rule, v.node) for v in _hits(m)] == [("qdq-scale", "q_x")]


def test_int8_weight_initializers_only_for_tensorrt_10():
    m = valid_model()
    w = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "w"))
    m.graph.initializer.append(_init("w8", np.clip(np.round(w / 0.01), -127, 127).astype(np.int8)))
    _node(m, "dq_w").input[0] = "w8"
    m.graph.node.remove(_node(m, "q_w"))
    assert [(v.rule, v.node) for v in _hits(m, "8.5")] == [("qdq-weights", "dq_w")]
    assert _hits(m, "10.3") == []


def test_ops_and_opsets_by_tensorrt_version():
    m = valid_model()
    m.graph.initializer.extend([_init("g", np.ones(6, np.float32)), _init("be", np.zeros(6, np.float32))])
    m.graph.node.append(helper.make_node("LayerNormalization", ["z", "g", "be"], ["zn"], name="ln", axis=-1))
    m.graph.node.append(helper.make_node("FusedMatMul", ["zn", "zn"], ["zz"], name="ort_only", domain="com.microsoft"))
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    on85 = {(v.rule, v.node) for v in _hits(m, "8.5")}
    on10 = {(v.rule, v.node) for v in _hits(m, "10.3")}
    assert on85 == {("op", "ln"), ("op", "ort_only")} and on10 == {("op", "ort_only")}
    assert [v.rule for v in _hits(valid_model(opset=18), "8.5")] == ["opset"]
    assert [v.rule for v in _hits(valid_model(opset=21), "10.3")] == ["opset"]
    with pytest.raises(ValueError, match="older than 8.5"):
        rules.check_model(m, "8.2")


def test_shapes_outside_the_profiles():
    m = valid_model()
    bad = {"x": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [2, 3, 8, 8]}}
    found = _hits(m, profiles=bad, data_shapes={"v": (2, 32)})
    msgs = {(v.node, v.message.split(":")[0]) for v in found}
    assert ("x", "axis 0") in msgs and ("x", "axis 1 is fixed at 4 in the model, but the profile says 3/3/3") in msgs
    assert any(v.node == "v" and "no optimisation profile" in v.message for v in found)
    found = _hits(m, profiles=PROFILES, data_shapes={"v": (2, 32)})
    assert [(v.rule, v.node) for v in found] == [("profile", "v")] and "outside" in found[0].message


def test_int64_inputs_warn_on_tensorrt_8():
    m = valid_model()
    m.graph.input.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 8]))
    warn = [v for v in rules.check_model(m, "8.5") if v.severity == "warning"]
    assert [(v.rule, v.node) for v in warn] == [("input-type", "ids")]
    assert not [v for v in rules.check_model(m, "10.3") if v.severity == "warning"]
