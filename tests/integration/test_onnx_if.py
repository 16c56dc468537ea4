"""An ONNX source that branches (``If``) on a constant input and on a fixed dimension, like silero-vad's shipped
graph (``sr`` picks the 16 kHz or 8 kHz weights; inside, torch's ``squeeze`` became an ``If`` on a size): the
declared inputs decide every branch, so edgefm inlines the taken ones, and OpenVINO (which refuses the
original graph) and ONNX Runtime's quantizer (which does not look inside a branch) see a plain graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgefm
from edgefm.bundle import read_manifest
from edgefm.config import build_config
from edgefm.models.onnx_fold import count_ifs, resolve_ifs
from edgefm.models.spec import ModelSpec, parse_input_decl
from edgefm.pipeline import compress

INPUTS = ["x:batch,8:float32", "sr:scalar:int64=16000"]
RNG = np.random.default_rng(0)
W = {k: RNG.normal(size=s).astype(np.float32) / 2 for k, s in
     [("w16", (8, 16)), ("v16", (16, 4)), ("w8", (8, 16)), ("v8", (16, 4))]}


def _rate_branch(tag: str, index: np.ndarray = np.array([1], np.int64)) -> onnx.GraphProto:
    """x @ w -> Relu -> an If on x's width (as torch's ``squeeze`` exports: the branches differ in rank): width 8
    takes ``@ v``, any other width an Unsqueeze. The width is gathered with a 1-D index, as in silero's graph, or
    with a 0-d one (torch's ``x.size(1)``), which onnxscript 0.7 cannot read a shape through by itself."""
    i = lambda n: f"{tag}_{n}"  # noqa: E731 - names unique across both branches, as exporters write them
    width = helper.make_graph(
        [helper.make_node("Shape", ["x"], [i("shape")]),
         helper.make_node("Gather", [i("shape"), i("one")], [i("w")], axis=0),
         helper.make_node("Equal", [i("w"), i("eight")], [i("is8")])], "unused", [], [])
    nested = helper.make_node(
        "If", [i("is8")], [i("y")],
        then_branch=helper.make_graph([helper.make_node("MatMul", [i("h"), f"v{tag}"], [i("t")])], i("then"), [],
                                      [helper.make_tensor_value_info(i("t"), TensorProto.FLOAT, ["batch", 4])]),
        else_branch=helper.make_graph([helper.make_node("Unsqueeze", [i("h"), i("axis0")], [i("e")])], i("else"),
                                      [], [helper.make_tensor_value_info(i("e"), TensorProto.FLOAT, None)]))
    nodes = [helper.make_node("MatMul", ["x", f"w{tag}"], [i("m")]), helper.make_node("Relu", [i("m")], [i("h")]),
             *width.node, nested]
    return helper.make_graph(nodes, f"rate{tag}", [], [helper.make_tensor_value_info(i("y"), TensorProto.FLOAT, None)],
                             [numpy_helper.from_array(index, i("one")),
                              numpy_helper.from_array(np.array([8], np.int64), i("eight")),
                              numpy_helper.from_array(np.array([0], np.int64), i("axis0"))])


def _branching_model(index: np.ndarray = np.array([1], np.int64)) -> onnx.ModelProto:
    """The model: x's width left open in the graph, as silero's is."""
    nodes = [helper.make_node("Equal", ["sr", "k16000"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["z"], then_branch=_rate_branch("16", index),
                              else_branch=_rate_branch("8", index)),
             helper.make_node("Sigmoid", ["z"], ["speech"])]
    graph = helper.make_graph(
        nodes, "branching",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("speech", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(16000, np.int64), "k16000")]
        + [numpy_helper.from_array(v, k) for k, v in W.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def branching(tmp_path_factory):
    """The model and calibration data."""
    d = tmp_path_factory.mktemp("ifs")
    onnx.save(_branching_model(), str(d / "branching.onnx"))
    np.savez(d / "calib.npz", x=RNG.normal(size=(96, 8)).astype(np.float32))
    return d


def _spec(*decls: str) -> ModelSpec:
    return ModelSpec(family="other", task="other", inputs=[parse_input_decl(t) for t in decls], outputs=[])


def test_only_branches_the_declared_inputs_decide_are_resolved(branching):
    model = onnx.load(str(branching / "branching.onnx"))
    assert count_ifs(model) == 3
    out, before, after = resolve_ifs(model, _spec(*INPUTS))
    assert (before, after) == (3, 0) and [i.name for i in out.graph.input] == ["x"]
    assert {n.op_type for n in out.graph.node} >= {"MatMul", "Relu", "Sigmoid"}
    used = {i for n in out.graph.node for i in n.input}
    assert {"w16", "v16"} <= used and not {"w8", "v8"} & used  # the 8 kHz weights went with their branch
    # sr fed at run time (not declared constant): only the width Ifs inside the branches are decided
    out, before, after = resolve_ifs(model, _spec("x:batch,8:float32", "sr:scalar:int64"))
    assert (before, after) == (3, 1) and [i.name for i in out.graph.input] == ["x", "sr"]
    # and with the width left open too, nothing is: the model comes back untouched
    same, before, after = resolve_ifs(model, _spec("x:batch,width:float32", "sr:scalar:int64"))
    assert same is model and before == after == 3


def test_a_shape_read_through_a_0d_index_is_resolved_too():
    model = _branching_model(np.array(1, np.int64))
    out, before, after = resolve_ifs(model, _spec(*INPUTS))
    assert (before, after) == (3, 0) and "If" not in {n.op_type for n in out.graph.node}
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "sr": np.array(16000)})[0]
    got = ort.InferenceSession(out.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_openvino_and_onnxruntime_run_the_inlined_graph(branching, tmp_path):
    """fp32 for both CPU targets: OpenVINO converts it, each artifact run in its own runtime gives ONNX Runtime's
    outputs on the original graph (fed sr=16000), and sr is a baked constant the Predictor checks."""
    import openvino as ov

    out = tmp_path / "b"
    compress(build_config(None, source=branching / "branching.onnx", output=out, inputs=INPUTS,
                          calib=branching / "calib.npz", targets=["onnxruntime-cpu", "openvino-cpu"],
                          quantize="fp32"))
    man = read_manifest(out)
    assert set(man.targets) == {"onnxruntime-cpu", "openvino-cpu"} and not man.failed
    sr = next(i for i in man.spec.inputs if i.name == "sr")
    assert sr.baked and sr.value == 16000
    export = next(s for s in man.stages if s.name == "export")
    assert any("3 of 3 If node(s) (nested ones counted) resolved" in n and "outputs = the source's" in n for n in export.notes), export.notes
    assert count_ifs(onnx.load(str(out / man.reference))) == 0

    x = RNG.normal(size=(5, 8)).astype(np.float32)
    want = ort.InferenceSession(str(branching / "branching.onnx")).run(None, {"x": x, "sr": np.array(16000)})[0]
    sess = ort.InferenceSession(str(out / man.targets["onnxruntime-cpu"].artifact))
    assert [i.name for i in sess.get_inputs()] == ["x"]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], want, rtol=1e-6, atol=1e-6)
    compiled = ov.Core().compile_model(str(out / man.targets["openvino-cpu"].artifact), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    assert [i.get_any_name() for i in compiled.inputs] == ["x"]
    np.testing.assert_allclose(compiled.create_infer_request().infer({"x": x})[compiled.outputs[0]], want,
                               rtol=1e-5, atol=1e-6)
    pred = edgefm.load(out, "openvino-cpu")
    np.testing.assert_allclose(pred({"x": x, "sr": np.array(16000)})["speech"], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(edgefm.errors.CalibrationError, match="fixed to 16000"):
        pred({"x": x, "sr": np.array(8000)})


def test_onnxruntime_int8_quantizes_what_was_inside_the_branch(branching, tmp_path):
    """Before, the MatMuls sat inside the If, which ONNX Runtime's quantizer skips: "int8" was the fp32 graph.
    Now they are in the main graph and get Q/DQ pairs."""
    out = tmp_path / "b"
    compress(build_config(None, source=branching / "branching.onnx", output=out, inputs=INPUTS,
                          calib=branching / "calib.npz", targets=["onnxruntime-cpu"], quantize="int8",
                          outputs={"speech": {"kind": "regression"}}))
    entry = read_manifest(out).targets["onnxruntime-cpu"]
    model = onnx.load(str(out / entry.artifact))
    ops = {n.op_type for n in model.graph.node}
    assert count_ifs(model) == 0 and ops & {"MatMulInteger", "DequantizeLinear", "QLinearMatMul"}, ops
    weights_int8 = [tuple(t.dims) for t in model.graph.initializer if t.data_type == TensorProto.INT8]
    assert {(8, 16), (16, 4)} <= set(weights_int8), weights_int8  # both MatMul weights of the 16 kHz branch
    assert {t.name for t in model.graph.initializer}.isdisjoint({"w8", "v8"})  # the 8 kHz ones are gone


def test_openvino_refuses_the_original_graph(branching):
    """The reason for all this: OpenVINO's ONNX frontend cannot convert the graph as shipped (the branches'
    ranks differ, so what follows has no static rank)."""
    import openvino as ov

    with pytest.raises(Exception, match="rank|convert|If"):
        ov.Core().compile_model(str(branching / "branching.onnx"), "CPU")
