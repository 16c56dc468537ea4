"""Inputs described fully: a batch axis anywhere, scalar and constant inputs, state pairs; ``Samples`` split
on each input's batch axis and run streams chunk by chunk with the state fed back."""

from __future__ import annotations

import numpy as np
import pytest

from edgefm.backends.base import Samples
from edgefm.datasets import layout, load_samples, save_npz
from edgefm.errors import CalibrationError, ConfigError
from edgefm.models.spec import (InputSpec, ModelSpec, OutputSpec, StatePair, input_from_config, parse_input_decl,
                                parse_state_decl)


def stream_spec() -> ModelSpec:
    spec = ModelSpec(family="rnn", inputs=[parse_input_decl("x:batch,4"), parse_input_decl("state:2,batch,3"),
                                           parse_input_decl("sr:scalar:int64=16000")],
                     outputs=[OutputSpec(name="y"), OutputSpec(name="state_out")])
    spec.declare_state([parse_state_decl("state:state_out")], "test")
    return spec


def step(feed):
    """A toy recurrent cell: state' = state + sum(x) (per sample), y = state'[0].sum(-1) * sr / 16000."""
    x, s, sr = feed["x"], feed["state"], feed["sr"]
    assert x.ndim == 2 and s.shape == (2, x.shape[0], 3) and sr.shape == ()
    s2 = s + x.sum(1)[None, :, None]
    return {"y": s2[0].sum(-1, keepdims=True) * float(sr) / 16000.0, "state_out": s2}


def test_input_declarations():
    i = parse_input_decl("sr:scalar:int64=16000")
    assert (i.shape, i.dtype, i.value, i.batch_axis, i.constant) == ([], "int64", 16000, None, True)
    assert i.constant_array().shape == () and i.constant_array().flags.writeable
    s = parse_input_decl("state:2,batch,128")
    assert (s.shape, s.batch_axis) == ([2, "batch", 128], 1)
    assert parse_input_decl("x:1,512").shape == ["batch", 512] and parse_input_decl("x:1,512").batch_axis == 0
    assert parse_input_decl("t:scalar:float32").batch_axis is None
    m = input_from_config({"name": "h", "shape": [1, "batch", 8], "dtype": "float32"})
    assert m.batch_axis == 1
    with pytest.raises(ConfigError, match="not a int64 number"):
        parse_input_decl("sr:scalar:int64=fast")
    with pytest.raises(ConfigError, match="STATE_INPUT:STATE_OUTPUT"):
        parse_state_decl("state")
    spec = stream_spec()
    assert spec.output_axes == {"y": 0, "state_out": 1} and spec.outputs[1].kind == "state"
    with pytest.raises(ConfigError, match="not an output of the model"):
        spec.declare_state([StatePair(input="state", output="nope")], "test")


def test_samples_split_on_each_inputs_batch_axis():
    spec = ModelSpec(family="rnn", inputs=[parse_input_decl("x:batch,4"), parse_input_decl("state:2,batch,3"),
                                           parse_input_decl("sr:scalar:int64=16000")],
                     outputs=[OutputSpec(name="y"), OutputSpec(name="state_out", batch_axis=1)])
    rng = np.random.default_rng(0)
    # a file holds samples first; the state in model layout (2, N, 3) is accepted too
    raw = Samples({"x": rng.random((5, 4), dtype=np.float32), "state": rng.random((5, 2, 3), dtype=np.float32)})
    s = layout(raw, spec, "test")
    assert s.inputs["state"].shape == (2, 5, 3) and s.inputs["sr"].shape == () and len(s) == 5
    part = s.take(slice(1, 3))
    assert part.inputs["state"].shape == (2, 2, 3) and part.inputs["sr"].shape == ()
    np.testing.assert_array_equal(part.inputs["state"], raw.inputs["state"][1:3].transpose(1, 0, 2))
    out = s.run(step, 2)  # batches of 2, 2, 1, joined on each output's own batch axis
    assert out["state_out"].shape == (2, 5, 3) and out["y"].shape == (5, 1)
    np.testing.assert_allclose(out["state_out"], step(s.inputs)["state_out"], rtol=1e-6)
    same = layout(Samples({"x": raw.inputs["x"], "state": s.inputs["state"]}), spec, "test")
    np.testing.assert_array_equal(same.inputs["state"], s.inputs["state"])


def test_streams_feed_the_state_back(tmp_path):
    spec = stream_spec()
    x = np.random.default_rng(1).random((3, 4, 4), dtype=np.float32)  # 3 streams of 4 chunks
    np.savez(tmp_path / "s.npz", x=x)
    s = load_samples(tmp_path / "s.npz", spec)
    assert s.streamed and len(s) == 3 and s.chunks == 4 and s.inputs["state"].shape == (2, 3, 3)
    out = s.run(step, 2)
    assert out["y"].shape == (4, 3, 1) and out["state_out"].shape == (4, 2, 3, 3)
    # the state carried: after chunk c the state is the running sum of every chunk so far
    want = np.cumsum(x.sum(-1), axis=1).T  # (chunks, streams)
    np.testing.assert_allclose(out["y"][..., 0], 3 * want, rtol=1e-5)
    # calibration steps: one plain sample per (stream, chunk), its state the one carried there
    flat = s.steps(step, 2)
    assert not flat.streamed and len(flat) == 12 and flat.inputs["state"].shape == (2, 12, 3)
    assert np.count_nonzero(flat.inputs["state"]) > 0
    save_npz(tmp_path / "back.npz", s)
    again = load_samples(tmp_path / "back.npz", spec)
    np.testing.assert_array_equal(again.inputs["x"], s.inputs["x"])
    with pytest.raises(CalibrationError, match=r"streams of chunks: \(streams, chunks, \*\[4\]\)"):
        layout(Samples({"x": x[:, 0]}), spec, "data f.npz")


def test_state_pairs_guessed_from_names():
    from edgefm.models.spec import guess_state_pairs

    spec = ModelSpec(family="rnn", inputs=[parse_input_decl("input:batch,512"), parse_input_decl("state:2,batch,128"),
                                           parse_input_decl("sr:scalar:int64=16000"), parse_input_decl("h0:1,batch,8")],
                     outputs=[OutputSpec(name="output"), OutputSpec(name="stateN"), OutputSpec(name="hn")])
    assert [(p.input, p.output) for p in guess_state_pairs(spec)] == [("state", "stateN"), ("h0", "hn")]
    plain = ModelSpec(family="cnn", inputs=[parse_input_decl("x:batch,3")], outputs=[OutputSpec(name="logits")])
    assert guess_state_pairs(plain) == []
