"""fp16, bad options, unsupported ops, ONNX-only sources: typed errors and nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest

from edgefm.backends import tflite
from edgefm.backends.tflite_run import Runner, model_ops
from edgefm.errors import ConfigError, TargetError, UnsupportedOpError

from .conftest import digits_job, tflite_target


def test_fp16_weights(tmp_path, cnn):
    job = digits_job(tmp_path, cnn[0], False, tflite_target("fp16"))
    res = tflite.compile(job)
    model = job.out_dir / "model.tflite"
    quant = res.stages[-1]
    assert quant.settings["mode"] == "fp16" and quant.metrics["logits"]["top1_agreement"] == 1.0
    assert 0.45 < quant.settings["size_ratio"] < 0.6  # fp16 weights: about half the fp32 file
    assert "DEQUANTIZE" in {o["op"] for o in model_ops(model)}  # fp16 -> fp32 weights, folded by XNNPACK
    got = Runner(model).run({"x": job.eval.inputs["x"][:20]})["logits"]
    np.testing.assert_allclose(got, job.reference["logits"][:20], atol=5e-2)
    assert res.entry.precision == "fp16" and res.entry.artifact == f"{job.target.name}/model.tflite"


def test_unsupported_op_names_op_and_node(tmp_path):
    import torch

    class Binned(torch.nn.Module):  # exports to ONNX (Bucketize-free Less/Sum), but has no LiteRT lowering
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)
            self.register_buffer("edges", torch.tensor([-0.5, 0.0, 0.5]))

        def forward(self, x):
            return torch.bucketize(self.fc(x), self.edges).float().flatten(1)

    job = digits_job(tmp_path, Binned().eval(), True, tflite_target("fp32"))
    with pytest.raises(UnsupportedOpError) as e:
        tflite.compile(job)
    msg = str(e.value)
    assert "aten.bucketize" in msg and "node 'bucketize'" in msg and "Traceback" not in msg, msg
    assert not job.out_dir.exists()  # nothing half-written


def test_bad_target_options_and_inputs(tmp_path, cnn):
    with pytest.raises(TargetError, match="options.int8"):
        tflite.compile(digits_job(tmp_path, cnn[0], False, tflite_target("int8", int8="fulll")))
    with pytest.raises(ConfigError, match="bf16"):
        tflite.compile(digits_job(tmp_path, cnn[0], False, tflite_target("bf16")))
    job = digits_job(tmp_path, cnn[0], False, tflite_target("int8"))
    job.model = None
    with pytest.raises(ConfigError, match="torch model"):
        tflite.compile(job)
    assert not job.out_dir.exists()


def test_keep_fp32_by_op_type_and_by_node(tmp_path, cnn):
    """--keep-fp32 with ONNX names: an op type (Gemm -> FULLY_CONNECTED) and a node (the first conv, found by its
    module path in the LiteRT tensor names) stay float; an unknown node is a clear error, nothing written."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    job = digits_job(tmp_path / "a", cnn[0], False, tflite_target("int8"))
    conv0 = next(n.name for n in onnx.load(str(job.onnx_path)).graph.node if n.op_type == "Conv")
    job.config = job.config.model_copy(update={"keep_fp32": ["Gemm", conv0]})
    res = tflite.compile(job)
    kept = res.stages[-1].settings["kept_float"]
    assert kept["ops"] == ["FULLY_CONNECTED"] and len(kept["regex"]) == 1, kept
    it = Interpreter(model_path=str(job.out_dir / "model.tflite"))
    weights = {t["name"]: t["dtype"] for t in it.get_tensor_details() if len(t["shape"]) in (2, 4)
               and t["name"] != "serving_default_x:0"}
    fc = [n for n in weights if "Linear_classifier" in n]
    convs = sorted(n for n in weights if "Conv2d_" in n and weights[n] in (np.float32, np.int8))
    assert fc and all(weights[n] == np.float32 for n in fc), weights
    assert any(weights[n] == np.float32 for n in convs) and any(weights[n] == np.int8 for n in convs), convs
    assert res.stages[-1].metrics["logits"]["top1_agreement"] >= 0.98

    bad = digits_job(tmp_path / "b", cnn[0], False, tflite_target("int8"))
    bad.config = bad.config.model_copy(update={"keep_fp32": ["/no/such/Conv"]})
    with pytest.raises(ConfigError, match="neither an op type nor a node name"):
        tflite.compile(bad)
    assert not bad.out_dir.exists()


def test_lstm_unrolled_option(tmp_path, lstm):
    """``lstm: unrolled`` keeps litert-torch's unrolled graph (builtin ops XNNPACK runs, AI Edge Quantizer) and is
    a different conversion from the fused default, not a reuse of it."""
    fused = digits_job(tmp_path / "f", lstm[0], True, tflite_target("int8"))
    unrolled = digits_job(tmp_path / "u", lstm[0], True, tflite_target("int8", lstm="unrolled"))
    rf, ru = tflite.compile(fused), tflite.compile(unrolled)
    ops_f = [o["op"] for o in model_ops(fused.out_dir / "model.tflite")]
    ops_u = [o["op"] for o in model_ops(unrolled.out_dir / "model.tflite")]
    assert ops_f.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 4 and rf.entry.options["fused_lstm_layers"] == 2
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops_u and len(ops_u) > 100, len(ops_u)
    assert ru.entry.options["quantizer"] == "ai-edge-quantizer" and ru.entry.options["fused_lstm_layers"] == 0
    assert ru.stages[-1].metrics["logits"]["top1_agreement"] >= 0.97


def test_lstm_with_initial_state_falls_back_to_unrolled(tmp_path, lstm):
    """A model that hands nn.LSTM an initial state cannot use the fused op (it starts from zero): the compile
    converts it unrolled, says so in the manifest, and the int8 model still agrees with fp32."""
    import torch

    class WithState(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            h0 = torch.zeros(2, x.shape[0], 64)
            out, _ = self.inner.rnn(x, (h0, h0))
            return self.inner.classifier(out[:, -1])

    job = digits_job(tmp_path, WithState(lstm[0]).eval(), True, tflite_target("int8"))
    res = tflite.compile(job)
    assert any("fused LSTM conversion failed" in n for n in res.stages[0].notes), res.stages[0].notes
    ops = [o["op"] for o in model_ops(job.out_dir / "model.tflite")]
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops and res.entry.options["fused_lstm_layers"] == 0
    assert res.stages[-1].metrics["logits"]["top1_agreement"] >= 0.97
