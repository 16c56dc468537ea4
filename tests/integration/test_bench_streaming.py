"""``edgefm bench`` on a streaming bundle (``--state``: a (layers, batch, hidden) state whose batch axis is 1,
and a scalar sample-rate input, fed as a graph input or baked into the graph): every input on its recorded
batch axis, constants fed whole, and the timed calls a stream's chunks with the state fed back, as a device
runs them. The bundles are compressed here from the tiny streaming GRU of ``tests/models/streaming.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import edgefm
from edgefm.bench.config import BenchConfig
from edgefm.bench.schema import read_result
from edgefm.bundle import read_manifest
from edgefm.samples import Samples
from tests.models import streaming as S

FAST = dict(warmup=2, runs=20, min_runs=5, threads=1)


@pytest.fixture(scope="module", params=["state_dict", "scripted"])
def bundle(request, tmp_path_factory):
    """state_dict: ``sr`` is a graph input fed its recorded value; scripted (``sr: int``): ``sr`` is baked."""
    from edgefm.config import build_config
    from edgefm.pipeline import compress

    d = tmp_path_factory.mktemp(f"bench-stream-{request.param}")
    np.savez(d / "calib.npz", x=S.streams(16, 6))
    if request.param == "state_dict":
        torch.save(S.stream_gru().state_dict(), d / "ckpt.pt")
        src, arch = d / "ckpt.pt", "tests/models/streaming.py:stream_gru"
    else:
        S.scripted().save(str(d / "scripted.pt"))
        src, arch = d / "scripted.pt", None
    cfg = build_config(None, source=src, output=d / "b", arch=arch, inputs=S.INPUTS, state=S.STATE,
                       calib=d / "calib.npz", targets=["onnxruntime-cpu"])
    compress(cfg)
    man = read_manifest(d / "b")
    assert man.spec.input("state").batch_axis == 1 and man.spec.input("sr").baked == (request.param == "scripted")
    return d / "b"


def test_bench_streams_with_state_fed_back(bundle):
    from edgefm.bench.runner import run_bench

    man = read_manifest(bundle)
    res = run_bench(BenchConfig(bundle=bundle, batches=[1, 8], **FAST))  # 8 > the 3 eval streams: repeated
    assert {(m.name, m.batch) for m in res.measurements} == {(n, b) for n in ("fp32-onnx", "onnxruntime-cpu")
                                                             for b in (1, 8)}, res.skipped
    for m in res.measurements:
        assert m.latency.runs == 20 and m.cold_ms > 0
        assert any("streaming: latency per call" in n and "output -> state" in n for n in m.notes), m.notes
        # judged along the whole streams, as compress judged it: the same figures as the manifest's
        assert m.accuracy.samples == res.settings.eval_samples and m.accuracy.contract_ok
        assert m.accuracy.fidelity["output"]["steps"] == 6
    target = next(m for m in res.measurements if m.name == "onnxruntime-cpu")
    recorded = man.targets["onnxruntime-cpu"].metrics
    for out in ("logits", "output"):
        for k, v in recorded[out].items():
            assert target.accuracy.fidelity[out][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (out, k)


def test_timed_calls_carry_the_state_like_a_stream(bundle):
    """The calls bench times are a stream's: chunk after chunk, each given the state the last one returned
    (the same outputs as running the streams through), then the streams start over from the initial state."""
    from edgefm.bench.runner import prepare_eval
    from edgefm.bench.worker import batch_of, read_eval, stream_calls

    man = read_manifest(bundle)
    pred = edgefm.load(bundle, "onnxruntime-cpu")
    prepared = bundle.parent / "prepared.npz"
    prepare_eval(bundle / "eval.npz", man.spec, bundle, prepared)
    samples, _ = read_eval(str(prepared), man.spec)
    part = batch_of(samples, 2)
    assert part.streamed and part.inputs["state"].shape == (2, 2, 32) and part.inputs["x"].shape == (6, 2, 64)
    whole = part.run(pred, 2)
    call = stream_calls(part, pred)
    got = [call() for _ in range(part.chunks + 1)]
    for c in range(part.chunks):
        np.testing.assert_array_equal(got[c]["output"], whole["output"][c])
        np.testing.assert_array_equal(got[c]["logits"], whole["logits"][c])
    np.testing.assert_array_equal(got[-1]["output"], whole["output"][0])  # restarted from the initial state


def test_cli_bench_with_a_users_stream_file_verify_and_load(bundle, tmp_path):
    """A user's eval file holds streams as (streams, chunks, 64) without the constant: laid out as compress does."""
    from edgefm.cli import app
    from edgefm.verify import verify_bundle

    mine = tmp_path / "streams.npz"
    np.savez(mine, x=S.streams(4, 5, seed=3))
    runner = CliRunner()
    r = runner.invoke(app, ["bench", str(bundle), "--eval", str(mine), "--runs", "10", "--warmup", "1",
                            "--threads", "1", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    res = read_result(tmp_path / "r.json")
    assert res.settings.eval_samples == 4 and {m.name for m in res.measurements} == {"fp32-onnx", "onnxruntime-cpu"}
    target = next(m for m in res.measurements if m.name == "onnxruntime-cpu")
    assert target.accuracy.basis == "reference" and target.accuracy.fidelity["output"]["steps"] == 5
    assert target.accuracy.contract_ok, target.accuracy.contract_failures
    # a stream file that does not fit is one line naming it
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 64), np.float32))
    r = runner.invoke(app, ["bench", str(bundle), "--eval", str(bad), "--runs", "5"])
    assert r.exit_code == 2 and str(bad) in " ".join(r.output.split()) and "streams" in r.output, r.output
    assert all(c.ok for rep in verify_bundle(bundle) for c in rep.checks)
    pred = edgefm.load(bundle)
    out = pred({"x": np.zeros((3, 64), np.float32), "state": np.zeros((2, 3, 32), np.float32), "sr": np.array(16000)})
    assert out["output"].shape == (2, 3, 32) and out["logits"].shape == (3, 1)
    chunks = Samples.for_spec(pred.spec, {"x": np.zeros((2, 3, 64), np.float32),
                                          "state": np.zeros((2, 3, 32), np.float32), "sr": np.array(16000)})
    assert chunks.run(pred, 3)["output"].shape == (2, 2, 3, 32)
