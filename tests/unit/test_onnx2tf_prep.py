"""Full-range Slice axes are removed before onnx2tf (edgefm.backends.onnx2tf_prep) without changing any output."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefm.backends.onnx2tf_prep import drop_noop_slices

BIG = np.iinfo(np.int64).max


def _model():
    """x (1, 6, 5) -> Slice axis 0 whole -> Slice channels [0:3] -> Slice axis 2 whole -> y1;
    x -> Slice axes [0, 1, 2] = (whole, [3:], whole) -> y2; x -> Slice axis 2 whole -> y3 (a graph output)."""
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    inits = [c("z", [0]), c("big", [BIG]), c("a0", [0]), c("a1", [1]), c("a2", [2]), c("three", [3]),
             c("s3", [0, 3, 0]), c("e3", [BIG, BIG, BIG]), c("ax3", [0, 1, 2]), c("st3", [1, 1, 1])]
    nodes = [helper.make_node("Slice", ["x", "z", "big", "a0"], ["t0"]),
             helper.make_node("Slice", ["t0", "z", "three", "a1"], ["t1"]),
             helper.make_node("Slice", ["t1", "z", "big", "a2"], ["t2"]),
             helper.make_node("Relu", ["t2"], ["y1"]),
             helper.make_node("Slice", ["x", "s3", "e3", "ax3", "st3"], ["y2"]),
             helper.make_node("Slice", ["x", "z", "big", "a2"], ["y3"])]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [1, 6, 5])],
                              [helper.make_tensor_value_info(n, f, s) for n, s in (("y1", [1, 3, 5]), ("y2", [1, 3, 5]),
                                                                                   ("y3", [1, 6, 5]))], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_noop_slice_axes_dropped_outputs_kept():
    model = _model()
    x = np.random.default_rng(0).standard_normal((1, 6, 5)).astype(np.float32)
    want = _run(model, x)
    assert drop_noop_slices(model) == 2 + 2  # the chain's two whole Slices, y2's two whole axes (y3 kept)
    onnx.checker.check_model(model)
    slices = [n for n in model.graph.node if n.op_type == "Slice"]
    assert len(slices) == 3  # t1, y2 (now on axis 1 only), y3 (a graph output)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    y2 = next(n for n in slices if n.output[0] == "y2")
    assert consts[y2.input[3]].tolist() == [1] and consts[y2.input[1]].tolist() == [3]
    for a, b in zip(want, _run(model, x)):
        np.testing.assert_array_equal(a, b)
    assert drop_noop_slices(model) == 0
