"""The accuracy contract: for each kind of output where the old gate (cosine + top-1 of every 2-D output)
was wrong, the new gate certifies what its user would accept and refuses what its user would not.
Models are tiny ONNX graphs built here and run in ONNX Runtime (fp32 and a real int8 quantization)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefm.config import CompressConfig, build_config
from edgefm.contract import (Contract, Gate, enforce, judge, parse_output_decl, recorded, resolve)
from edgefm.errors import AccuracyError, ConfigError
from edgefm.models.output_kinds import declare, infer_kinds
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec


def _save(path, nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path, feed):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed)))


def _spec(outputs, inputs=(("x", ["batch", 16]),)):
    return ModelSpec(family="other", inputs=[InputSpec(name=n, shape=s) for n, s in inputs],
                     outputs=[OutputSpec(name=n, kind=k, declared=True, reason="declared") for n, k in outputs])


def _contract(outputs, precision="int8", **decls):
    cfg = CompressConfig(source="m.onnx", output="out", outputs=decls)
    return resolve(_spec(outputs), cfg, precision)


def _int8(src, dst, x):
    """A real ORT static QDQ int8 model of ``src`` calibrated on ``x``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": x[i:i + 8]} for i in range(0, len(x), 8)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=False)
    return dst


# --- embedding: high cosine, top-1 of argmax changes: certified ------------------------------------------------

def test_embedding_certified_where_argmax_flips(tmp_path):
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 64)).astype(np.float32) / 4
    w2 = rng.normal(size=(64, 256)).astype(np.float32) / 8
    w2[:, 0] = -8 * np.abs(w2).max()  # an outlier column: per-tensor int8 steps get coarse for every other one
    src = _save(tmp_path / "emb.onnx",
                [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
                 helper.make_node("MatMul", ["t", "w2"], ["speaker_embedding"])],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                [helper.make_tensor_value_info("speaker_embedding", TensorProto.FLOAT, ["batch", 256])],
                {"w1": w1, "w2": w2})
    x = rng.normal(size=(96, 16)).astype(np.float32)
    ref = _run(src, {"x": x})
    got = _run(_int8(src, tmp_path / "emb.int8.onnx", x), {"x": x})
    as_logits = judge(_contract([("speaker_embedding", "logits")]), ref, got)
    # the premise: read as class scores, int8 changes the argmax of many samples (the old gate refused it)
    assert as_logits.metrics["speaker_embedding"]["top1_agreement"] < 0.9  # 0.80 on Zen 4
    assert not as_logits.ok
    verdict = judge(_contract([("speaker_embedding", "embedding")]), ref, got)
    m = verdict.metrics["speaker_embedding"]
    assert verdict.ok, verdict.failures
    assert m["cosine"] >= 0.98 and m["knn_recall"] >= 0.9 and verdict.margin >= 0  # 0.9935, 0.998 on Zen 4


def test_embedding_refused_when_neighbours_change():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(40, 32))
    got = ref.copy()
    got[:, :] = ref[rng.permutation(40)]  # every sample's vector swapped with another's: retrieval is broken
    v = judge(_contract([("e", "embedding")]), {"e": ref}, {"e": got})
    assert not v.ok and any("knn_recall" in f or "cosine" in f for f in v.failures)


# --- ordinal: many bins, one-bin flips: certified; jumps: refused -----------------------------------------------

def _pitch_model(path, shift_bins: float, bins: int = 360):
    """Bins of a pitch-like classifier: logit_b = -(b - 360 * x - shift)^2 / 8 (a peak at the true bin)."""
    grid = np.arange(bins, dtype=np.float32)[None, :]
    return _save(path,
                 [helper.make_node("Mul", ["x", "scale"], ["p"]), helper.make_node("Add", ["p", "shift"], ["ps"]),
                  helper.make_node("Sub", ["grid", "ps"], ["d"]), helper.make_node("Mul", ["d", "d"], ["d2"]),
                  helper.make_node("Mul", ["d2", "neg"], ["pitch_bins"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
                 [helper.make_tensor_value_info("pitch_bins", TensorProto.FLOAT, ["batch", bins])],
                 {"scale": np.array([[bins - 1]], np.float32), "shift": np.array([[shift_bins]], np.float32),
                  "grid": grid, "neg": np.array([[-1 / 8]], np.float32)})


def test_ordinal_one_bin_flips_certified_big_jumps_refused(tmp_path):
    x = np.random.default_rng(2).random((200, 1)).astype(np.float32)
    ref = _run(_pitch_model(tmp_path / "ref.onnx", 0.0), {"x": x})
    near = _run(_pitch_model(tmp_path / "near.onnx", 0.35), {"x": x})  # a third of a bin: argmax flips often
    far = _run(_pitch_model(tmp_path / "far.onnx", 12.0), {"x": x})  # 12 bins off: wrong pitch
    assert not judge(_contract([("pitch_bins", "logits")]), ref, near).ok  # the old gate: top-1 < 95 %
    v = judge(_contract([("pitch_bins", "ordinal")]), ref, near)
    m = v.metrics["pitch_bins"]
    assert m["top1_agreement"] < 0.95 and m["within_k"] == 1.0 and m["k"] == 4
    assert v.ok, v.failures
    bad = judge(_contract([("pitch_bins", "ordinal")]), ref, far)
    assert not bad.ok and any("within_k" in f for f in bad.failures)


# --- binary, one column: a drifting probability is refused ------------------------------------------------------

def _vad_model(path, bias: float):
    w = np.random.default_rng(3).normal(size=(16, 1)).astype(np.float32) / 2
    return _save(path,
                 [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["zb"]),
                  helper.make_node("Sigmoid", ["zb"], ["speech_prob"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                 [helper.make_tensor_value_info("speech_prob", TensorProto.FLOAT, ["batch", 1])],
                 {"w": w, "b": np.array([bias], np.float32)})


def test_one_column_probability_drift_refused(tmp_path):
    x = np.random.default_rng(4).normal(size=(128, 16)).astype(np.float32)
    src = _vad_model(tmp_path / "vad.onnx", 0.0)
    ref = _run(src, {"x": x})
    got = _run(_vad_model(tmp_path / "vad_drift.onnx", 2.0), {"x": x})
    drift = float(np.abs(ref["speech_prob"] - got["speech_prob"]).mean())
    assert 0.15 < drift < 0.3  # the drift the old gate certified as "cos 1.0000, top-1 100 %"
    # the kind is guessed from the graph: Sigmoid at the end -> binary
    spec = ModelSpec(family="other", inputs=[InputSpec(name="x", shape=["batch", 16])],
                     outputs=[OutputSpec(name="speech_prob", kind="logits")])
    spec, notes = infer_kinds(spec, src, ref)
    assert spec.outputs[0].kind == "binary" and "Sigmoid" in notes[0]
    contract = resolve(spec, CompressConfig(source="m.onnx", output="o"), "int8")
    v = judge(contract, ref, got)
    assert not v.ok
    assert v.metrics["speech_prob"]["mean_abs_error"] == pytest.approx(drift, rel=1e-4)
    with pytest.raises(AccuracyError, match="speech_prob.*(mean_abs_error|decision_agreement|max_abs_error)"):
        enforce("quantize int8", v)
    # and a real int8 model of the same network passes the same gates
    q = _run(_int8(src, tmp_path / "vad.int8.onnx", x), {"x": x})
    assert judge(contract, ref, q).ok


def test_one_column_logits_can_never_pass():
    """Declared (or left) as class scores, a single column has no top-1 and no meaningful cosine: refused,
    with a note saying to declare it binary."""
    ref = {"p": np.random.default_rng(5).random((20, 1))}
    v = judge(_contract([("p", "logits")]), ref, {"p": ref["p"].copy()})
    assert not v.ok and "not computable" in v.failures[0] and "binary" in v.notes[0]


def test_one_column_guess_uses_the_values():
    spec = ModelSpec(family="other", inputs=[InputSpec(name="x", shape=["batch", 4])],
                     outputs=[OutputSpec(name="a"), OutputSpec(name="b")])
    ref = {"a": np.array([[0.1], [0.9]]), "b": np.array([[3.0], [-2.0]])}
    spec, _ = infer_kinds(spec, None, ref)
    assert [o.kind for o in spec.outputs] == ["binary", "regression"]


# --- detections packed in one tensor (YOLOv8 layout) ------------------------------------------------------------

def _yolo(rng, n=200, classes=3, real=10):
    """(1, 4 + C, N): boxes cxcywh then class scores; ``real`` candidates score high."""
    out = np.zeros((1, 4 + classes, n), np.float32)
    out[0, 0:2] = rng.uniform(50, 590, (2, n))
    out[0, 2:4] = rng.uniform(20, 80, (2, n))
    out[0, 4:] = rng.uniform(0, 0.1, (classes, n))
    idx = rng.choice(n, real, replace=False)
    out[0, 4 + rng.integers(0, classes, real), idx] = rng.uniform(0.6, 0.95, real)
    return out, idx


def test_packed_detector_losing_detections_refused():
    rng = np.random.default_rng(6)
    ref, idx = _yolo(rng)
    lost = ref.copy()
    lost[0, 4:, idx[:2]] = 0.05  # 2 of 10 detections fall below the score threshold
    params = "boxes=0:4,scores=4:,layout=cxcywh,axis=1"
    name, decl = parse_output_decl(f"output0:detections:{params}")
    contract = _contract([("output0", "detections")], output0=decl)
    from edgefm.output_metrics import cosine_rows, per_sample

    assert cosine_rows(per_sample(ref), per_sample(lost))[0] > 0.998  # the old gate saw nothing
    v = judge(contract, {"output0": ref}, {"output0": lost})
    m = v.metrics["output0"]
    assert m["ref_detections"] == 10 and m["recall"] == pytest.approx(0.8) and m["precision"] == 1.0
    assert not v.ok and any("recall" in f for f in v.failures)
    jitter = ref.copy()
    jitter[0, :4] += rng.normal(0, 0.5, jitter[0, :4].shape)  # half-pixel box noise: same detections
    assert judge(contract, {"output0": ref}, {"output0": jitter}).ok


def test_detections_class_must_match():
    rng = np.random.default_rng(7)
    ref, idx = _yolo(rng, classes=2)
    swapped = ref.copy()
    swapped[0, 4:] = ref[0, 4:][::-1]  # same boxes, other class
    contract = _contract([("d", "detections")], d={"kind": "detections", "layout": "cxcywh", "axis": 1})
    v = judge(contract, {"d": ref}, {"d": swapped})
    assert v.metrics["d"]["recall"] == 0.0 and not v.ok


# --- regression: relative error -------------------------------------------------------------------------------

def test_regression_judged_by_relative_error(tmp_path):
    rng = np.random.default_rng(8)
    w = rng.normal(size=(16, 8)).astype(np.float32)
    src = _save(tmp_path / "reg.onnx", [helper.make_node("MatMul", ["x", "w"], ["depth"])],
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                [helper.make_tensor_value_info("depth", TensorProto.FLOAT, ["batch", 8])], {"w": w})
    x = rng.normal(size=(64, 16)).astype(np.float32)
    ref = _run(src, {"x": x})
    q = _run(_int8(src, tmp_path / "reg.int8.onnx", x), {"x": x})
    contract = _contract([("depth", "regression")])
    v = judge(contract, ref, q)
    assert v.ok and 0 < v.metrics["depth"]["rel_error"] < 0.1 and v.metrics["depth"]["sqnr_db"] > 20
    noisy = {"depth": ref["depth"] * (1 + 0.25 * rng.standard_normal(ref["depth"].shape))}
    bad = judge(contract, ref, noisy)
    assert not bad.ok and bad.failures[0].startswith("output 'depth': rel_error")
    assert bad.margin < 0 <= v.margin


def test_state_drift_per_step():
    rng = np.random.default_rng(9)
    ref = rng.normal(size=(4, 10, 32))  # (batch, steps, hidden)
    got = ref.copy()
    got[:, 9] *= 1.5  # the last step drifts
    contract = _contract([("h", "state")], h={"kind": "state", "step_axis": 1})
    v = judge(contract, {"h": ref}, {"h": got})
    assert v.metrics["h"]["drift"] == pytest.approx(0.5) and v.metrics["h"]["steps"] == 10 and not v.ok


# --- declarations, user metric, contract plumbing ---------------------------------------------------------------

def test_declaration_parsing_and_errors():
    assert parse_output_decl("vad:binary:threshold=0.3,mean_abs_error=0.05") == (
        "vad", {"kind": "binary", "threshold": 0.3, "mean_abs_error": 0.05})
    with pytest.raises(ConfigError, match="kind 'embeding' is not one of"):
        parse_output_decl("x:embeding")
    with pytest.raises(ConfigError, match="unknown params \\['treshold'\\]"):
        parse_output_decl("x:binary:treshold=0.3")
    with pytest.raises(ConfigError, match="outputs.*'zz'.*not outputs of the model"):
        declare(_spec([("a", "other")]), {"zz": {"kind": "embedding"}})
    with pytest.raises(ConfigError, match="limit cosine='high' is not a number"):
        build_config(None, source="m.onnx", output="o", outputs={"a": {"kind": "embedding", "cosine": "high"}})


def test_declared_limits_replace_defaults_and_none_drops_a_gate():
    c = _contract([("e", "embedding")], e={"kind": "embedding", "cosine": 0.9, "knn_recall": None})
    gates = {g.metric: g.limit for g in c.output("e").gates}
    assert gates == {"cosine": 0.9, "min_cosine": 0.9}
    assert {g.metric: g.limit for g in _contract([("e", "embedding")], "fp16").output("e").gates}["cosine"] == 0.999


def test_user_metric_gates_and_is_never_imported_from_a_manifest(tmp_path):
    (tmp_path / "m.py").write_text("import numpy as np\n"
                                   "def score(ref, got, labels):\n"
                                   "    return {'score': float(np.mean(np.abs(got['y']) < 1)), 'n': len(got['y'])}\n")
    cfg = CompressConfig(source="m.onnx", output="o", metric=f"{tmp_path}/m.py:score", metric_drop=0.05)
    contract = resolve(_spec([("y", "regression")]), cfg, "int8")
    ref = {"y": np.full((20, 2), 0.5)}
    v = judge(contract, ref, {"y": ref["y"] * 3})  # every value leaves (-1, 1): the task score drops 1.0
    assert v.metrics["_task"]["task_drop"] == pytest.approx(1.0) and not v.ok
    assert any("task_drop" in f for f in v.failures)
    reread = Contract.model_validate_json(contract.model_dump_json())  # as verify reads it from a manifest
    v2 = judge(reread, ref, {"y": ref["y"] * 1.0001})
    assert "_task" not in v2.metrics and "not re-run" in v2.notes[0] and v2.ok
    with pytest.raises(ConfigError, match="no function 'nope'"):
        resolve(_spec([("y", "regression")]), cfg.model_copy(update={"metric": f"{tmp_path}/m.py:nope"}), "int8")


def test_labels_accuracy_drop_gate():
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 5, 100)
    ref = np.eye(5)[labels] * 4 + rng.normal(0, 0.1, (100, 5))
    got = ref.copy()
    got[:5] = np.roll(got[:5], 1, axis=1)  # 5 % of the samples now wrong
    c = _contract([("logits", "logits")])
    c.output("logits").gates = []  # only the labels gate
    v = judge(c, {"logits": ref}, {"logits": got}, labels)
    assert v.metrics["_accuracy"]["drop_points"] == pytest.approx(5.0)
    assert not v.ok and "accuracy_drop_points" in v.failures[0]


def test_margin_and_gate_lines():
    g = Gate(output="o", metric="cosine", limit=0.98, direction="min")
    assert g.slack(0.99) == pytest.approx(0.5) and g.slack(0.97) == pytest.approx(-0.5)
    assert g.line(0.97) == "output 'o': cosine 0.97 < limit 0.98"


def test_old_manifest_kinds_still_read_and_contract_is_derived():
    from edgefm.bundle import Manifest, SourceInfo, TargetEntry

    spec = ModelSpec.model_validate({"family": "transformer", "inputs": [{"name": "x", "shape": ["batch", 4]}],
                                     "outputs": [{"name": "last_hidden_state", "kind": "hidden"}]})
    assert spec.outputs[0].kind == "embedding"
    m = Manifest(edgefm_version="0", source=SourceInfo(path="p", kind="onnx"), spec=spec,
                 targets={"t": TargetEntry(backend="onnxruntime", precision="int8", artifact="a")})
    contract, how = recorded(m, "t")
    assert "derived" in how and contract.output("last_hidden_state").kind == "embedding"


def test_state_guessed_from_name_and_shape():
    spec = ModelSpec(family="rnn", inputs=[InputSpec(name="x", shape=["batch", 10, 4]),
                                          InputSpec(name="h_in", shape=[2, "batch", 8])],
                     outputs=[OutputSpec(name="y"), OutputSpec(name="h_out")])
    ref = {"y": np.zeros((3, 10, 8), np.float32), "h_out": np.zeros((2, 3, 8), np.float32)}
    spec, notes = infer_kinds(spec, None, ref)
    assert [o.kind for o in spec.outputs] == ["other", "state"] and "h_in" in spec.outputs[1].reason


def test_detections_with_a_separate_scores_tensor():
    rng = np.random.default_rng(11)
    packed, idx = _yolo(rng, classes=4)
    boxes = np.moveaxis(packed[:, :4], 1, 2)  # (1, N, 4) xyxy-agnostic layout cxcywh
    scores = np.moveaxis(packed[:, 4:], 1, 2)  # (1, N, 4)
    lost = scores.copy()
    lost[0, idx[:5]] = 0.0
    contract = _contract([("boxes", "detections"), ("scores", "other")],
                         boxes={"kind": "detections", "layout": "cxcywh", "scores_output": "scores"})
    ok = judge(contract, {"boxes": boxes, "scores": scores}, {"boxes": boxes, "scores": scores})
    assert ok.ok and ok.metrics["boxes"]["ref_detections"] == 10
    v = judge(contract, {"boxes": boxes, "scores": scores}, {"boxes": boxes, "scores": lost})
    assert v.metrics["boxes"]["recall"] == pytest.approx(0.5) and not v.ok


def test_detection_params_that_do_not_fit_are_one_clear_error():
    ref = np.zeros((1, 7, 50), np.float32)
    contract = _contract([("d", "detections")], d={"kind": "detections", "boxes": "0:3", "axis": 1})
    with pytest.raises(ConfigError, match=r"output 'd' \(detections, shape \[1, 7, 50\].*boxes=0:3 selects 3 fields"):
        judge(contract, {"d": ref}, {"d": ref})


# --- fp32 max_abs: relative to the output's scale ---------------------------------------------------------------

def _mlp(path, scale, fold=False, drop_bias=False):
    """64 -> 256 -> 256 -> 4 ReLU MLP whose output is multiplied by ``scale`` (coordinates in a big frame, PCM
    samples): ``fold`` multiplies the last Gemm's weights and bias by it instead (what a converter's constant
    folding does: the same function, other fp32 rounding); ``drop_bias`` loses the last bias (a real bug)."""
    rng = np.random.default_rng(5)
    dims, nodes, inits, prev = [64, 256, 256, 4], [], {}, "x"
    for i in range(3):
        inits[f"W{i}"] = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits[f"b{i}"] = (0.1 * rng.standard_normal(dims[i + 1])).astype(np.float32)
    if fold:
        inits["W2"], inits["b2"] = inits["W2"] * np.float32(scale), inits["b2"] * np.float32(scale)
    if drop_bias:
        inits["b2"] = np.zeros_like(inits["b2"])
    for i in range(3):
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"h{i}"]))
        prev = f"h{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    if not fold:
        inits["s"] = np.array(scale, np.float32)
        nodes.append(helper.make_node("Mul", [prev, "s"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [prev], ["y"]))
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)


def test_fp32_max_abs_is_relative_to_the_output_scale(tmp_path):
    """An fp32 conversion of an output that reaches ~2e4 (1 ulp there is 0.002) differs from the reference by a
    few ulps: the old absolute 1e-3 refused it, the default limit max(1e-3, 2e-5 x max|ref|) certifies it, and
    still refuses the same conversion with the last bias dropped. Recorded, the gate reads back the same."""
    x = np.random.default_rng(6).standard_normal((64, 64)).astype(np.float32)
    ref = _run(_mlp(tmp_path / "a.onnx", 20000.0), {"x": x})
    folded = _run(_mlp(tmp_path / "b.onnx", 20000.0, fold=True), {"x": x})
    broken = _run(_mlp(tmp_path / "c.onnx", 20000.0, fold=True, drop_bias=True), {"x": x})
    diff = float(np.abs(ref["y"] - folded["y"]).max())
    assert 1e-3 < diff < 1e-5 * float(np.abs(ref["y"]).max())  # rounding: above the old limit, far below the new

    spec = _spec([("y", "regression")], inputs=(("x", ["batch", 64]),))
    new = resolve(spec, CompressConfig(source="m.onnx", output="out"), "fp32")
    gate = next(g for g in new.output("y").gates if g.metric == "max_abs")
    assert gate.limit == 1e-3 and gate.scale_limit == 2e-5
    old = resolve(spec, build_config(source="m.onnx", output="out",
                                     tolerances={"compile": {"max_abs": 1e-3, "cosine": 0.9999}}), "fp32")
    assert next(g for g in old.output("y").gates if g.metric == "max_abs").scale_limit is None  # user's own: absolute

    refused = judge(old, ref, folded)
    assert not refused.ok and any("max_abs" in f for f in refused.failures)
    ok = judge(new, ref, folded)
    assert ok.ok, ok.failures
    assert ok.metrics["y"]["ref_max_abs"] == pytest.approx(float(np.abs(ref["y"]).max()))
    bug = judge(new, ref, broken)
    assert not bug.ok and any("max_abs" in f and "2e-05 x max|ref|" in f for f in bug.failures)
    with pytest.raises(AccuracyError, match=r"convert: output 'y' max_abs = .*larger of its floor and 2e-05"):
        enforce("convert", bug)

    again = Contract.model_validate_json(new.model_dump_json())  # what verify reads from the manifest
    assert judge(again, ref, folded).ok and not judge(again, ref, broken).ok


def test_export_max_abs_is_relative_to_the_output_scale():
    """The torch -> ONNX check's max abs follows the fp32 rule: a pixel-valued output (up to 320) differing by
    fp32 rounding (1.1e-3) passes the default export limits; a real error (a dropped bias of 0.05) does not; a
    user's own absolute max_abs stays absolute."""
    import numpy as np
    import pytest

    from edgefm.config import Tolerances
    from edgefm.errors import AccuracyError
    from edgefm.fidelity import Limits, check, compare

    rng = np.random.default_rng(0)
    ref = {"boxes": rng.uniform(0, 320, size=(8, 4, 100)).astype(np.float32)}
    rounding = {"boxes": ref["boxes"] + np.float32(1.1e-3)}
    biased = {"boxes": ref["boxes"] + np.float32(0.05)}
    limits = Tolerances().export
    check("export", compare(ref, rounding), limits)
    with pytest.raises(AccuracyError, match="max_abs"):
        check("export", compare(ref, biased), limits)
    with pytest.raises(AccuracyError, match="max_abs"):
        check("export", compare(ref, rounding), Limits(max_abs=1e-3))
