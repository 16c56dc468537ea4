"""Sources users actually have: nested training checkpoints, ONNX with external data, scripted TorchScript
with Python-number arguments; pruning that cannot remove anything says why, quickly."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgefm.errors import CheckpointError, ConfigError
from edgefm.models.load import load_checkpoint
from tests.models import streaming as S

ARCH = "tests/models/streaming.py:stream_gru"


def feed(n=3):
    return {"x": np.random.default_rng(0).random((n, 64), dtype=np.float32),
            "state": np.zeros((2, n, 32), np.float32), "sr": np.array(16000)}


def outputs(module, f):
    with torch.no_grad():
        return [o.numpy() for o in module(*[torch.from_numpy(v) for v in f.values()])]


@pytest.fixture(scope="module")
def weights():
    return S.stream_gru().state_dict()


@pytest.mark.parametrize("wrapper", ["training", "lightning", "state_dict", "model"])
def test_nested_checkpoints_take_the_matching_sub_dict(tmp_path, weights, wrapper):
    opt = torch.optim.SGD(S.stream_gru().parameters(), lr=0.1)
    ckpt = {"training": {"model_state": weights, "optimizer_state": opt.state_dict(), "step": 1200,
                         "ema": {"decay": torch.tensor(0.99)}},
            "lightning": {"state_dict": {f"model.{k}": v for k, v in weights.items()}, "epoch": 3,
                          "optimizer_states": [opt.state_dict()]},
            "state_dict": {"state_dict": weights},
            "model": {"model": weights, "args": {"lr": 0.1}}}[wrapper]
    torch.save(ckpt, tmp_path / "ckpt.pt")
    loaded = load_checkpoint(tmp_path / "ckpt.pt", ARCH, S.INPUTS)
    ref = S.stream_gru()
    ref.load_state_dict(weights)
    for a, b in zip(outputs(loaded.module, feed()), outputs(ref.eval(), feed())):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any("took the weights from the" in n for n in loaded.notes), loaded.notes


def test_ambiguous_nested_checkpoint_lists_the_candidates(tmp_path, weights):
    torch.save({"model": weights, "ema_model": dict(weights), "step": 3}, tmp_path / "two.pt")
    with pytest.raises(CheckpointError, match=r"several dicts of tensors could be the weights: 'model' .*'ema_model'"):
        load_checkpoint(tmp_path / "two.pt", ARCH, S.INPUTS)


def test_nested_checkpoint_that_does_not_fit_says_what_is_missing(tmp_path):
    torch.save({"model_state": {"other.weight": torch.zeros(3)}, "step": 3}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not fit --arch"):
        load_checkpoint(tmp_path / "bad.pt", ARCH, S.INPUTS)


def _export(path, external: str | None):
    m = S.stream_gru().eval()
    tmp = path.with_suffix(".plain.onnx")
    torch.onnx.export(m, (torch.zeros(2, 64), torch.zeros(2, 2, 32), torch.tensor(16000)), str(tmp), dynamo=False,
                      input_names=["input", "state", "sr"], output_names=["prob", "stateN"],
                      dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"}, "prob": {0: "batch"},
                                    "stateN": {1: "batch"}})
    model = onnx.load(str(tmp))
    tmp.unlink()
    if external is None:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, location=external, size_threshold=0)
    return model


def test_onnx_external_data_is_copied_and_hashed(tmp_path):
    from edgefm.models.onnx_graph import copy_onnx

    src = tmp_path / "src"
    src.mkdir()
    _export(src / "model.onnx", "weights.bin")
    loaded = load_checkpoint(src / "model.onnx", None, ["sr:scalar:int64=16000"])
    assert [i.batch_axis for i in loaded.spec.inputs] == [0, 1, None]
    assert loaded.spec.outputs[1].batch_axis == 1
    h1 = loaded.sha256
    (src / "weights.bin").write_bytes((src / "weights.bin").read_bytes()[:-4] + b"\0\0\0\1")
    assert load_checkpoint(src / "model.onnx", None, ["sr:scalar:int64=16000"]).sha256 != h1  # data is hashed
    out = tmp_path / "bundle"
    out.mkdir()
    notes = copy_onnx(src / "model.onnx", out / "model.onnx")
    assert (out / "model.onnx.data").is_file() and "model.onnx.data" in notes[0]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert len(sess.run(None, {"input": feed()["x"], "state": feed()["state"], "sr": feed()["sr"]})) == 2


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    _export(tmp_path / "src" / "model.onnx", "weights.bin")
    model = onnx.load(str(tmp_path / "src" / "model.onnx"), load_external_data=False)
    (tmp_path / "src" / "weights.bin").rename(tmp_path / "weights.bin")
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../weights.bin"
    onnx.save_model(model, str(tmp_path / "src" / "model.onnx"))
    with pytest.raises(CheckpointError, match=r"outside the model's folder .*refused"):
        load_checkpoint(tmp_path / "src" / "model.onnx", None, [])


def test_scripted_module_with_an_int_argument(tmp_path):
    S.scripted().save(str(tmp_path / "m.pt"))
    loaded = load_checkpoint(tmp_path / "m.pt", None, S.INPUTS)
    ref = S.scripted()
    got = outputs(loaded.module, feed())
    with torch.no_grad():
        want = ref(torch.from_numpy(feed()["x"]), torch.from_numpy(feed()["state"]), 16000)
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-6)
    assert any("exported as the constant 16000" in n for n in loaded.notes)
    with pytest.raises(ConfigError, match=r"forward takes 'sr: int' .*--input sr:scalar:int64=VALUE"):
        load_checkpoint(tmp_path / "m.pt", None, ["x:batch,64", "state:2,batch,32", "sr:scalar:int64"])


def test_scripted_code_failure_names_the_line_not_the_boilerplate(tmp_path):
    S.scripted().save(str(tmp_path / "m.pt"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "m.pt", None, ["x:batch,64", "state:2,batch,32", "sr:scalar:int64=44100"])
    msg = str(e.value)
    assert "following operation failed" not in msg and "\n" not in msg
    assert "streaming.py" in msg and 'raise ValueError("unsupported sample rate")' in msg
    assert "ValueError: unsupported sample rate" in msg
    with pytest.raises(CheckpointError, match=r"streaming.py:\d+: `frames = torch.relu.*shape '\[2, 4, 16\]'"):
        load_checkpoint(tmp_path / "m.pt", None, ["x:batch,32", "state:2,batch,32", "sr:scalar:int64=16000"])


class HeadOnState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 64, num_layers=2, batch_first=True)
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        _, (h, _c) = self.rnn(x)
        return self.fc(h[-1])


class StateOut(HeadOnState):
    def forward(self, x):
        _, (h, _c) = self.rnn(x)
        return h[-1]


class FixedReshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).view(-1, 256))


def _prune(cls, shape):
    from edgefm.backends.base import Samples
    from edgefm.models import wrap
    from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec
    from edgefm.stages.prune import PruneConfig, prune_model

    torch.manual_seed(0)
    spec = ModelSpec(family="rnn", inputs=[InputSpec(name="x", shape=["batch", *shape])],
                     outputs=[OutputSpec(name="y")])
    data = Samples({"x": np.random.default_rng(0).random((16, *shape), dtype=np.float32)})
    return prune_model(wrap.wrap(cls().eval(), ["x"]), spec, PruneConfig(ratio=0.5), data)


def test_lstm_final_state_into_a_head_prunes():
    _, rec = _prune(HeadOnState, (10, 8))
    m = rec.metrics
    assert m["params_after"] < 0.5 * m["params_before"] and m["macs_after"] < 0.5 * m["macs_before"]


def test_lstm_final_state_as_output_fails_fast_saying_why():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"would remove nothing: the model's output is the output/final hidden "
                                          r"state of 'rnn'"):
        _prune(StateOut, (10, 8))
    assert time.perf_counter() - t0 < 60


def test_pruned_model_that_reshapes_to_a_fixed_size_names_the_layer():
    with pytest.raises(ConfigError, match=r"does not run in layer 'fc' \(Linear\).*reshape"):
        _prune(FixedReshape, (1, 8, 8))
