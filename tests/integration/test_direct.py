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
