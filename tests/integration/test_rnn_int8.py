"""int8 for recurrent models the way the peers do it: only the compute-heavy ops' inputs and weights in int8, the
LSTM cell's gate and state arithmetic in float. A tiny silero-like streaming cell (``streaming.StreamCell``: an
LSTM cell as Gemms + gates, (h, c) carried call to call, one long-memory unit) breaks the state gate under ONNX
Runtime's default static QDQ (every Mul/Add rounded onto an 8-bit grid), while the MatMul/Gemm-only recipe keeps
it; the chosen artifact runs in ONNX Runtime and the manifest says what runs in int8."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tests.models import streaming as S


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    d = tmp_path_factory.mktemp("cell")
    torch.save(S.stream_cell().state_dict(), d / "cell.pt")
    np.savez(d / "calib.npz", x=S.streams(8, 48))  # long streams: the long-memory unit's c grows to ~48
    return d


def _target(d, recipes):
    path = d / "ort-rnn.yaml"
    path.write_text("name: ort-rnn\nbackend: onnxruntime\nprecision: int8\ndevice: cpu\narch: any\n"
                    f"options:\n  recipes: [{', '.join(recipes)}]\n")
    return path


def test_matmul_only_recipe_keeps_the_carried_state_where_full_qdq_breaks_it(cell, tmp_path):
    from edgefm.config import build_config
    from edgefm.pipeline import compress
    from edgefm.quantize.onnxruntime import int8_ops

    target = _target(tmp_path, ["static-qdq-u8s8-per-channel-minmax", "static-qdq-u8s8-per-channel-matmul-only"])
    cfg = build_config(None, source=cell / "cell.pt", output=tmp_path / "b", arch="tests/models/streaming.py:stream_cell",
                       inputs=["x:batch,64", "state:2,batch,32"], state=S.STATE, calib=cell / "calib.npz",
                       targets=[str(target)], fallback=False)
    man = compress(cfg)
    entry = man.targets["ort-rnn"]
    stage = next(s for s in man.stages if s.name == "quantize")
    notes = " ".join(stage.notes)
    # the full static QDQ was tried and refused on the carried state; the MatMul/Gemm-only one was chosen
    assert "recipe static-qdq-u8s8-per-channel-minmax" in notes and "'output' drift" in notes, notes
    assert stage.settings["recipe"] == "static-qdq-u8s8-per-channel-matmul-only", stage.settings
    assert entry.metrics["output"]["drift"] < 0.02 and entry.metrics["logits"]["decision_agreement"] == 1.0
    # what was built: Q/DQ only in front of the Gemms; the gate and state arithmetic stays float
    art = tmp_path / "b" / entry.artifact
    ops = int8_ops(art)
    assert ops["int8"] == {"Gemm": 4} and {"Mul", "Add", "Sigmoid", "Tanh"} <= set(ops["float"]), ops
    assert stage.settings["int8_ops"] == ops and any("int8: Gemm x4" in n for n in entry.notes), entry.notes
    model = onnx.load(str(art))
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    gemm_out = {o for n in model.graph.node if n.op_type == "Gemm" for o in n.output}
    assert not quantized & gemm_out  # Gemm outputs stay float (no output Q/DQ)
    # the artifact itself, streamed in ONNX Runtime with the state fed back, stays with the fp32 reference
    import onnxruntime as ort

    ref = ort.InferenceSession(str(tmp_path / "b" / man.reference), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(art), providers=["CPUExecutionProvider"])
    chunks = S.streams(1, 48, seed=5)[0]
    st_r = st_g = np.zeros((2, 1, S.HIDDEN), np.float32)
    for c in chunks:
        p_r, st_r = ref.run(None, {"x": c[None], "state": st_r})
        p_g, st_g = got.run(None, {"x": c[None], "state": st_g})
        assert abs(float(p_r[0, 0]) - float(p_g[0, 0])) < 0.01
    assert np.abs(st_r - st_g).max() < 0.05 * np.abs(st_r).max()


def _stream(run, n=48, seed=5):
    """Probabilities and final state of one stream, one chunk per call with the state fed back."""
    chunks = S.streams(1, n, seed=seed)[0]
    st = np.zeros((2, 1, S.HIDDEN), np.float32)
    probs = []
    for c in chunks:
        p, st = run(c[None], st)
        probs.append(float(np.ravel(p)[0]))
    return np.asarray(probs), st


def test_openvino_rnn_recipe_quantizes_only_the_matmuls(cell, tmp_path):
    """NNCF's default int8 breaks the carried state; the backend then builds the RNN recipe (MatMul inputs and
    weights only, min/max activation ranges), records it, and the IR runs in OpenVINO next to the fp32 ONNX."""
    import openvino as ov
    import onnxruntime as ort

    from edgefm.config import build_config
    from edgefm.pipeline import compress

    cfg = build_config(None, source=cell / "cell.pt", output=tmp_path / "b", arch="tests/models/streaming.py:stream_cell",
                       inputs=["x:batch,64", "state:2,batch,32"], state=S.STATE, calib=cell / "calib.npz",
                       targets=["openvino-cpu"])
    man = compress(cfg)
    entry = man.targets["openvino-cpu"]
    stage = next(s for s in man.stages if s.name == "quantize")
    assert stage.settings["recipe"] == "matmul-only" and stage.settings["activation_range"] == "minmax"
    assert any("NNCF int8 of every quantizable op missed the contract" in n and "drift" in n for n in stage.notes)
    assert stage.metrics["_int8_layers"]["by_type"] == {"MatMul": 4}, stage.metrics["_int8_layers"]
    assert any(n.startswith("int8: MatMul x4; every other op float") for n in entry.notes), entry.notes
    assert not entry.kept_in_float and entry.metrics["output"]["drift"] < 0.02
    req = ov.Core().compile_model(str(tmp_path / "b" / entry.artifact), "CPU").create_infer_request()
    ref = ort.InferenceSession(str(tmp_path / "b" / man.reference), providers=["CPUExecutionProvider"])

    def run_ov(x, st):
        r = req.infer({"x": x, "state": st})
        return [np.asarray(v) for v in r.values()]
    p, st = _stream(run_ov)
    p0, st0 = _stream(lambda x, st: ref.run(None, {"x": x, "state": st}))
    assert np.abs(p - p0).max() < 0.01 and np.abs(st - st0).max() < 0.05 * np.abs(st0).max()


def test_tflite_matmul_mode_is_dynamic_range_on_fully_connected_only(cell, tmp_path):
    """``int8: matmul``: LiteRT's hybrid FULLY_CONNECTED (int8 weights, float in and out), every other op float;
    streamed in the LiteRT interpreter it stays with the fp32 ONNX."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from edgefm.config import build_config
    from edgefm.pipeline import compress

    target = tmp_path / "tfl-mm.yaml"
    target.write_text("name: tfl-mm\nbackend: tflite\nprecision: int8\ndevice: cpu\narch: aarch64\n"
                      "options:\n  int8: matmul\n")
    cfg = build_config(None, source=cell / "cell.pt", output=tmp_path / "b", arch="tests/models/streaming.py:stream_cell",
                       inputs=["x:batch,64", "state:2,batch,32"], state=S.STATE, calib=cell / "calib.npz",
                       targets=[str(target)], fallback=False)
    man = compress(cfg)
    entry = man.targets["tfl-mm"]
    assert entry.options["quantization"] == "matmul" and entry.options["int8_ops"] == ["FULLY_CONNECTED", "BATCH_MATMUL"]
    assert entry.metrics["output"]["drift"] < 0.02 and entry.metrics["logits"]["decision_agreement"] == 1.0
    it = Interpreter(model_path=str(tmp_path / "b" / entry.artifact))
    it.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    fcs = [o for o in ops if o["op_name"] == "FULLY_CONNECTED"]
    assert len(fcs) >= 3
    for o in ops:
        ins = [int(i) for i in o["inputs"] if int(i) >= 0]
        if o["op_name"] == "FULLY_CONNECTED":
            assert dtypes[ins[1]] == np.int8 and all(dtypes[int(i)] == np.float32 for i in o["outputs"])
        else:  # no other op reads int8 data, and nothing is quantized/dequantized on the way
            assert o["op_name"] not in ("QUANTIZE", "DEQUANTIZE") and np.int8 not in {dtypes[i] for i in ins}, o
    sig = it.get_signature_runner("serving_default")
    ref = ort.InferenceSession(str(tmp_path / "b" / man.reference), providers=["CPUExecutionProvider"])
    outs = list(sig.get_output_details())

    def run_tfl(x, st):
        r = sig(x=x, state=st)
        return [r[k] for k in sorted(outs, key=lambda k: r[k].ndim)]  # (1, 1) probability, then (2, 1, H) state
    p, st = _stream(run_tfl)
    p0, st0 = _stream(lambda x, st: ref.run(None, {"x": x, "state": st}))
    assert np.abs(p - p0).max() < 0.01 and np.abs(st - st0).max() < 0.05 * np.abs(st0).max()
