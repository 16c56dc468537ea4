"""An "int8" artifact must hold int8: a model whose every compute op sits inside an If subgraph (which ONNX
Runtime's quantizer and the TensorRT Q/DQ pass do not enter) is refused for int8 with a reason and a way
out, instead of being certified as int8 while it is the fp32 model under another name (the shipped silero-vad
ONNX was, before)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.integration.test_compress import cli


@pytest.fixture(scope="module")
def if_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("ifm")
    rng = np.random.default_rng(0)
    w1, w2 = (rng.normal(size=(16, 8)).astype(np.float32) for _ in range(2))

    def branch(name, w):
        return helper.make_graph([helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", 8])],
                                 [numpy_helper.from_array(w, f"{name}_w")])

    # the condition reads the batch size (dynamic: never folded away; outputs stay per-sample)
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "batch"], ["n"]),
             helper.make_node("Greater", ["n", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("a", w1), else_branch=branch("b", w2))]
    graph = helper.make_graph(nodes, "ifm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
                              [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                               numpy_helper.from_array(np.array(0, np.int64), "batch")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(d / "if.onnx"))
    np.savez(d / "calib.npz", x=rng.normal(size=(64, 16)).astype(np.float32))
    return d


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "jetson-orin-nano"])
def test_int8_that_quantizes_nothing_is_refused(if_model, tmp_path, target):
    out = tmp_path / "b"
    code, text = cli("compress", if_model / "if.onnx", "-o", out, "--calib", if_model / "calib.npz",
                     "--target", target, "--quantize", "int8", "--output-kind", "y:regression")
    flat = " ".join(text.split())
    assert code == 2 and "int8_ops = 0" in flat and "--quantize fp" in flat, text
    assert not out.exists()
    # the same model in float is fine
    code, text = cli("compress", if_model / "if.onnx", "-o", out, "--calib", if_model / "calib.npz",
                     "--target", target, "--quantize", "fp16" if target.startswith("jetson") else "fp32",
                     "--output-kind", "y:regression")
    assert code == 0, text


def test_openvino_if_branch_no_sample_takes_is_one_line(if_model, tmp_path):
    """NNCF quantizes each If branch with the samples that take it; the else branch here is never taken: a
    one-line error naming the If and the ways out (before: a raw nncf.errors.ValidationError traceback)."""
    out = tmp_path / "b"
    code, text = cli("compress", if_model / "if.onnx", "-o", out, "--calib", if_model / "calib.npz",
                     "--target", "openvino-cpu", "--quantize", "int8", "--output-kind", "y:regression")
    flat = " ".join(text.split())
    assert code == 2 and "Traceback" not in text and "If node(s)" in flat and "--quantize fp32" in flat, text
    assert not out.exists()


def test_litert_int8_with_no_int8_tensor_is_refused(tmp_path):
    """LiteRT's `int8: matmul` quantizes FULLY_CONNECTED / BATCH_MATMUL only: on a conv-only model nothing is
    int8, and the .tflite is refused (int8_ops = 0) instead of certified as int8."""
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
    (tmp_path / "t.yaml").write_text("name: tflite-matmul\nbackend: tflite\nprecision: int8\ndevice: cpu\narch: aarch64\n"
                                     "options: {int8: matmul}\n")
    out = tmp_path / "b"
    code, text = cli("compress", tmp_path / "conv.onnx", "-o", out, "--calib", tmp_path / "calib.npz",
                     "--target", tmp_path / "t.yaml", "--output-kind", "y:regression")
    flat = " ".join(text.split())
    assert code == 2 and "int8_ops = 0" in flat and "--quantize fp32" in flat, text
    assert not out.exists()
