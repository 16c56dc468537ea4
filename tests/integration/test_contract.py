"""The contract end to end through the CLI: kinds guessed from the graph and declared with --output-kind
are recorded with their gates in the manifest, the backend enforces them, `verify` reads them back, an
int8 artifact no smaller than fp32 says so, and a failing target among several leaves the others written
(exit code 1)."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import edgefm
from edgefm.bundle import read_manifest
from edgefm.cli import app
from edgefm.verify import verify_bundle

runner = CliRunner()


def cli(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    """A voice-activity-like ONNX model: one speech probability (Sigmoid, ONE column) and a 32-d embedding."""
    d = tmp_path_factory.mktemp("vad")
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(16, 32)).astype(np.float32) / 3, "b": np.zeros(32, np.float32),
             "wp": rng.normal(size=(32, 1)).astype(np.float32) / 3, "bp": np.array([0.1], np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"]), helper.make_node("Add", ["h0", "b"], ["h1"]),
             helper.make_node("Tanh", ["h1"], ["emb"]), helper.make_node("MatMul", ["emb", "wp"], ["z"]),
             helper.make_node("Add", ["z", "bp"], ["z1"]), helper.make_node("Sigmoid", ["z1"], ["speech_prob"])]
    graph = helper.make_graph(nodes, "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("speech_prob", TensorProto.FLOAT, ["batch", 1]),
                               helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", 32])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "vad.onnx"))
    np.savez(d / "calib.npz", x=rng.normal(size=(128, 16)).astype(np.float32))
    return d


def test_kinds_guessed_declared_recorded_and_verified(vad, tmp_path):
    out = tmp_path / "b"
    code, text = cli("compress", vad / "vad.onnx", "-o", out, "--calib", vad / "calib.npz", "--quantize", "int8",
                     "--output-kind", "emb:embedding:knn_recall=0.8", "--keep-fp32", "MatMul")
    assert code == 0, text
    m = read_manifest(out)
    kinds = {o.name: (o.kind, o.declared, o.reason) for o in m.spec.outputs}
    assert kinds["speech_prob"][:2] == ("binary", False) and "Sigmoid" in kinds["speech_prob"][2]
    assert kinds["emb"][:2] == ("embedding", True)
    entry = m.targets["onnxruntime-cpu"]
    c = entry.contract
    assert c is not None and c.precision == "int8"
    gates = {(g.output, g.metric): g.limit for g in c.gates()}
    assert gates[("emb", "knn_recall")] == 0.8 and ("speech_prob", "mean_abs_error") in gates
    assert "decision_agreement" in entry.metrics["speech_prob"] and "knn_recall" in entry.metrics["emb"]
    assert "cosine" not in entry.metrics["speech_prob"]  # no meaningless cosine of one column any more
    # every MatMul kept in float: the "int8" file is not smaller than fp32, and the entry and summary say so
    assert (out / entry.artifact).stat().st_size >= (out / "fp32/model.onnx").stat().st_size
    assert any("not smaller than the fp32" in n for n in entry.notes) and "not smaller than the fp32" in text
    [report] = verify_bundle(out)
    fid = next(c for c in report.checks if c.name == "fidelity")
    assert report.ok and "recorded contract" in fid.detail
    stamped = json.loads((out / "manifest.json").read_text())["targets"]["onnxruntime-cpu"]["contract"]
    assert {o["name"]: o["kind"] for o in stamped["outputs"]} == {"speech_prob": "binary", "emb": "embedding"}


def test_one_failing_target_keeps_the_others(vad, tmp_path):
    """tflite converts from torch, so it cannot build an ONNX-only source: that target fails, onnxruntime's
    is written, the failure is recorded, the CLI exits 1 and the bundle verifies for what it holds."""
    out = tmp_path / "b"
    code, text = cli("compress", vad / "vad.onnx", "-o", out, "--calib", vad / "calib.npz",
                     "--target", "onnxruntime-cpu", "--target", "tflite-arm64")
    assert code == 1, text
    assert "1 of 2 targets failed" in text and "tflite-arm64" in text
    m = read_manifest(out)
    assert list(m.targets) == ["onnxruntime-cpu"]
    f = m.failed["tflite-arm64"]
    assert f.error == "ConfigError" and "ONNX file only" in f.reason and f.contract is not None
    assert not (out / "tflite-arm64").exists()
    reports = verify_bundle(out)
    assert all(r.ok for r in reports) and {r.target for r in reports} == {"onnxruntime-cpu", "tflite-arm64"}
    assert edgefm.load(out)({"x": np.zeros((2, 16), np.float32)})["speech_prob"].shape == (2, 1)
    with pytest.raises(edgefm.errors.BundleError, match="failed when the bundle was made"):
        edgefm.load(out, "tflite-arm64")
    code, text = cli("verify", out, "--target", "tflite-arm64")
    assert code == 1


def test_all_targets_failing_writes_nothing(vad, tmp_path):
    out = tmp_path / "b"
    code, text = cli("compress", vad / "vad.onnx", "-o", out, "--calib", vad / "calib.npz",
                     "--target", "tflite-arm64", "--target", "rpi5")
    assert code == 2 and "every target failed" in text and not out.exists()


def test_user_metric_refuses_at_compress_and_is_not_rerun_by_verify(vad, tmp_path):
    """The user's task metric gates the artifact at compress time; verify never imports it (it says so)."""
    metric = tmp_path / "task.py"
    metric.write_text("import numpy as np\n"
                      "def speech_frames(ref, got, labels):\n"
                      "    # share of frames where the artifact agrees with fp32 on speech, to 1e-9\n"
                      "    return float(np.mean(np.abs(got['speech_prob'] - ref['speech_prob']) < 1e-9))\n")
    code, text = cli("compress", vad / "vad.onnx", "-o", tmp_path / "refused", "--calib", vad / "calib.npz",
                     "--metric", f"{metric}:speech_frames", "--metric-drop", "0.01")
    assert code == 2 and "task_drop" in text and not (tmp_path / "refused").exists()
    out = tmp_path / "b"
    code, text = cli("compress", vad / "vad.onnx", "-o", out, "--calib", vad / "calib.npz", "--quantize", "fp32",
                     "--metric", f"{metric}:speech_frames")
    assert code == 0, text
    entry = read_manifest(out).targets["onnxruntime-cpu"]
    assert entry.contract.metric.endswith("task.py:speech_frames") and entry.metrics["_task"]["task_drop"] == 0.0
    metric.write_text("raise SystemExit('verify must not import this file')\n")
    [report] = verify_bundle(out)
    fid = next(c for c in report.checks if c.name == "fidelity")
    assert report.ok and "not re-run" in fid.detail


def test_packed_detector_declared_on_the_command_line(tmp_path):
    """A YOLOv8-style head (1 tensor: (batch, 4 + C, N), boxes cxcywh then class scores) declared with
    --output-kind: the contract decodes it and records precision/recall of matched detections."""
    rng = np.random.default_rng(1)
    n, classes = 64, 3
    inits = {"wb": rng.uniform(0, 40, size=(8, 4 * n)).astype(np.float32),
             "ws": rng.normal(size=(8, classes * n)).astype(np.float32),
             "shape_b": np.array([-1, 4, n], np.int64), "shape_s": np.array([-1, classes, n], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "wb"], ["b0"]), helper.make_node("Reshape", ["b0", "shape_b"], ["boxes"]),
             helper.make_node("MatMul", ["x", "ws"], ["s0"]), helper.make_node("Reshape", ["s0", "shape_s"], ["s1"]),
             helper.make_node("Sigmoid", ["s1"], ["scores"]),
             helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1)]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + classes, n])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "det.onnx"))
    np.savez(tmp_path / "calib.npz", x=rng.uniform(0, 1, size=(32, 8)).astype(np.float32))
    out = tmp_path / "b"
    code, text = cli("compress", tmp_path / "det.onnx", "-o", out, "--calib", tmp_path / "calib.npz",
                     "--quantize", "fp32", "--output-kind",
                     "output0:detections:boxes=0:4,scores=4:,layout=cxcywh,axis=1,score_threshold=0.5")
    assert code == 0, text
    entry = read_manifest(out).targets["onnxruntime-cpu"]
    m = entry.metrics["output0"]
    assert m["ref_detections"] > 20 and m["precision"] == 1.0 and m["recall"] == 1.0
    o = entry.contract.output("output0")
    assert o.kind == "detections" and o.params["layout"] == "cxcywh" and not o.inferred
    assert {g.metric for g in o.gates} >= {"precision", "recall"}
