"""The direct check: every target's artifact run by its runtime's own API (ONNX Runtime InferenceSession,
OpenVINO Core/InferRequest, the LiteRT Interpreter's signature runner), one call after another in order and
then reversed, with identical outputs per sample and the recorded contract's verdict; recorded in the manifest
and reported by verify. An artifact that carries state between calls is caught."""

from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefm.bundle import TargetEntry, read_manifest
from edgefm.cli import app
from edgefm.contract import Contract, Gate, OutputContract
from edgefm.direct import caller, check_entry, compare_orders
from edgefm.verify import verify_bundle

from ..conftest import CALIB

TARGETS = ["onnxruntime-cpu", "openvino-cpu", "tflite-arm64", "jetson-orin-nano"]
MODELS = {"cnn": ("digits_cnn_ckpt", "edgefm.zoo:digits_cnn", "x:1,1,8,8", "digits_calib.npz", "digits_eval.npz"),
          "lstm": ("digits_lstm_ckpt", "edgefm.zoo:digits_lstm", "x:1,8,8", "digits_seq_calib.npz",
                   "digits_seq_eval.npz")}


@pytest.fixture(scope="module", params=list(MODELS))
def bundle(request, tmp_path_factory):
    fixture, arch, inp, calib, ev = MODELS[request.param]
    ckpt, _ = request.getfixturevalue(fixture)
    out = tmp_path_factory.mktemp("direct") / request.param
    targets = [a for t in TARGETS for a in ("-t", t)]
    res = CliRunner().invoke(app, ["compress", str(ckpt), "-o", str(out), "--arch", arch, "--input", inp,
                                   "--calib", str(CALIB / calib), "--eval", str(CALIB / ev), *targets])
    assert res.exit_code == 0, res.output
    return out


def test_direct_check_passes_recorded_and_verified(bundle):
    m = read_manifest(bundle)
    assert set(m.targets) == set(TARGETS) and not m.failed
    n = len(np.load(bundle / "eval.npz")["in/x"][:128])
    for name, entry in m.targets.items():
        d = entry.direct
        assert d is not None and d["ok"] and d["order_identical"] and d["max_order_diff"] == 0.0, (name, d)
        assert d["samples"] == n and d["calls"] >= 2 and d["verdict"]["ok"], (name, d)
        # batch 1 (any-batch artifacts) or the artifact's fixed batch: twice over the samples
        assert d["calls"] % 2 == 0 and d["calls"] <= 2 * n, (name, d)
    runtimes = {n: e.direct["runtime"].split()[0] for n, e in m.targets.items()}
    assert runtimes == {"onnxruntime-cpu": "onnxruntime", "openvino-cpu": "openvino", "tflite-arm64": "ai-edge-litert",
                        "jetson-orin-nano": "onnxruntime"}
    for report in verify_bundle(bundle):
        direct = next(c for c in report.checks if c.name == "direct")
        assert direct.ok and not direct.skipped and "in order and reversed: identical" in direct.detail, direct


def _stateful_ir(path, stateful: bool):
    """An OpenVINO IR y = x + acc; with ``stateful`` acc is a ReadValue/Assign variable (y accumulates over
    calls, as an RNN that keeps its state in the infer request does), else a zero constant."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    x = ops.parameter([1, 4], np.float32, name="x")
    zeros = ops.constant(np.zeros((1, 4), np.float32))
    sinks = []
    if stateful:
        info = VariableInfo()
        info.data_shape, info.data_type, info.variable_id = ov.PartialShape([1, 4]), ov.Type.f32, "acc"
        var = Variable(info)
        y = ops.add(ops.read_value(zeros, var), x)
        sinks = [ops.assign(y, var)]
    else:
        y = ops.add(zeros, x)
    res = ops.result(y)
    res.get_output_tensor(0).set_names({"y"})
    ov.save_model(ov.Model([res], sinks, [x], "acc"), str(path))


@pytest.mark.parametrize("stateful", [True, False])
def test_state_carried_between_calls_is_caught(tmp_path, stateful):
    _stateful_ir(tmp_path / "m.xml", stateful)
    entry = TargetEntry(backend="openvino", precision="fp32", artifact="m.xml", files=["m.xml", "m.bin"])
    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    call, batch, runtime = caller("openvino", tmp_path, entry, ["y"])
    got, calls, same, diff = compare_orders(call, {"x": x}, batch)
    assert batch == 1 and calls == 32 and "openvino" in runtime
    assert same is (not stateful) and (diff > 0) is stateful
    contract = Contract(precision="fp32", outputs=[OutputContract(name="y", kind="regression", gates=[
        Gate(output="y", metric="rel_error", limit=1e-3, direction="max")])])
    spec = SimpleNamespace(outputs=[SimpleNamespace(name="y")], state=[])
    res = check_entry(tmp_path, entry, spec, {"x": x}, {"y": x}, None, contract)
    assert res.ok is (not stateful) and res.order_identical is (not stateful)
    if stateful:
        assert "carries state from one call to the next" in res.detail and not res.record()["ok"]
    else:
        assert res.verdict.ok and "identical" in res.detail


def _without_state_reset(src, dst) -> int:
    """The .tflite as it was before its fused LSTMs zeroed their own state: drop every UNIDIRECTIONAL_SEQUENCE_LSTM
    that writes the state tensors of an earlier one (the zero-weight reset ops), so LiteRT carries the state in
    its variable tensors from one invocation to the next. Returns how many were dropped."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as S

    model = S.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)
    dropped = 0
    for sg in model.subgraphs:
        seen, kept = set(), []
        for op in sg.operators:
            if model.operatorCodes[op.opcodeIndex].builtinCode == S.BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM:
                state = (int(op.inputs[18]), int(op.inputs[19]))
                if state in seen:
                    dropped += 1
                    continue
                seen.add(state)
            kept.append(op)
        sg.operators = kept
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    dst.write_bytes(b.Output())
    return dropped


def test_litert_lstm_state_carried_between_invocations_is_caught(digits_lstm_ckpt, tmp_path):
    ckpt, _ = digits_lstm_ckpt
    out = tmp_path / "lstm"
    res = CliRunner().invoke(app, ["compress", str(ckpt), "-o", str(out), "--arch", "edgefm.zoo:digits_lstm",
                                   "--input", "x:1,8,8", "--calib", str(CALIB / "digits_seq_calib.npz"),
                                   "--eval", str(CALIB / "digits_seq_eval.npz"), "-t", "tflite-arm64"])
    assert res.exit_code == 0, res.output
    m = read_manifest(out)
    entry = m.targets["tflite-arm64"]
    assert entry.direct["order_identical"] and entry.direct["ok"]
    stateful = entry.model_copy(update={"artifact": "stateful.tflite"})
    if not _without_state_reset(out / entry.artifact, out / "stateful.tflite"):
        pytest.skip("the LiteRT artifact has no fused LSTM (converted the unrolled way)")
    from edgefm.bundle import read_eval

    inputs, ref, labels = read_eval(out, m)
    got = check_entry(out, stateful, m.spec, inputs, ref, labels, entry.contract)
    assert got.ok is False and got.order_identical is False and got.max_order_diff > 0.1, got.record()
    assert "carries state from one call to the next" in got.detail
