"""One measurement in its own process: ``python -m edgefm.bench.worker JOB.json``.

``mode: measure`` — note the idle RSS → load (timed) → first call at the asked batch (cold, timed) →
warm-up and timed runs (board power sampled meanwhile on a Jetson) → read the kernel's RSS high-water mark.
Nothing else runs in that process, so its peak is loading and running this model at this batch, and
``/usr/bin/time -v`` on the same command reports the same figure.
``mode: accuracy`` — load, run the whole eval set (in ``eval_batch`` chunks), score it against labels and
the fp32 reference, optionally save the outputs. A separate process, because a runtime keeps the memory
of a big eval batch in its arena, which would otherwise inflate the peak of the timed runs.

The result, or the error, is written as JSON to ``job.out``; the parent never imports the runtime."""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgefm.bench import memory
from edgefm.bench.jetson import power_window
from edgefm.bench.latency import TimingPlan, summarize, thin, time_calls
from edgefm.bench.schema import Accuracy, Measurement, MemoryStats
from edgefm.bench.subjects import Feed, Opened, Subject, open_subject
from edgefm.errors import EdgefmError
from edgefm.models.spec import ModelSpec
from edgefm.samples import Samples


class WorkerJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["measure", "accuracy"] = "measure"
    subject: Subject
    batch: int
    threads: Optional[int] = None
    warmup: int = 10
    runs: Optional[int] = None
    seconds: Optional[float] = 2.0
    min_runs: int = 10
    eval_npz: str
    eval_batch: int = 32
    save_outputs: Optional[str] = None
    out: str


def read_eval(path: str, spec: ModelSpec) -> tuple[Samples, Feed]:
    """(the eval samples, inputs cast to the spec's dtypes, in the model's layout; the reference outputs) from a
    prepared eval .npz (``edgefm.bench.runner.prepare_eval``)."""
    with np.load(path) as z:
        inputs = {s.name: np.asarray(z[f"in/{s.name}"], dtype=s.dtype, order="C") for s in spec.inputs
                  if f"in/{s.name}" in z.files}
        labels = z["labels"] if "labels" in z.files else None
        ref = {k[4:]: z[k] for k in z.files if k.startswith("ref/")}
    for s in spec.inputs:  # a constant is fed its recorded value (the Predictor checks a baked one, feeds none)
        if s.name not in inputs and s.constant:
            inputs[s.name] = s.constant_array()
    return Samples.for_spec(spec, inputs, labels), ref


def batch_of(samples: Samples, batch: int) -> Samples:
    """The first ``batch`` eval samples or streams (repeated when there are fewer), each input on its own batch
    axis, constants whole: real data, not random."""
    return samples.take(np.arange(batch) % len(samples))


def stream_calls(part: Samples, predict: Callable[[Feed], Feed]) -> Callable[[], Feed]:
    """One device call per invocation: the next chunk of ``part``'s streams with the state the previous call
    returned fed back; after the last chunk the streams start over from their initial state."""
    initial = {k: part.inputs[k] for k in part.state}
    chunks = [part.chunk(c, {}) for c in range(part.chunks)]
    at = {"chunk": 0, "state": initial}

    def call() -> Feed:
        c = at["chunk"]
        out = predict({**chunks[c], **at["state"]})
        at["state"] = {i: np.asarray(out[o]).astype(part.inputs[i].dtype, copy=False) for i, o in part.state.items()}
        at["chunk"] = (c + 1) % len(chunks)
        if at["chunk"] == 0:
            at["state"] = initial
        return out

    return call


def run_all(opened: Opened, samples: Samples, size: int) -> dict[str, np.ndarray]:
    """Outputs over every eval sample, ``size`` at a time (streams chunk by chunk, state fed back)."""
    return {k: np.asarray(v) for k, v in samples.run(opened.predict, size).items()}


def contract_of(subject: Subject):
    """The contract the subject is judged by: a bundle target's recorded one (the limits it was built with, as
    ``edgefm verify`` reads them), else the spec's kinds and default gates at the subject's precision."""
    from edgefm.contract import recorded, resolve

    if subject.kind == "bundle" and subject.bundle and subject.target:
        from edgefm.bundle import read_manifest

        manifest = read_manifest(Path(subject.bundle))
        if subject.target in manifest.targets:
            return recorded(manifest, subject.target)[0]
    return resolve(subject.spec, None, subject.precision)


def score(spec: ModelSpec, got: dict[str, np.ndarray], labels: Optional[np.ndarray], ref: Feed,
          contract=None, samples: Optional[int] = None) -> Accuracy:
    """Accuracy with labels and fidelity to the fp32 reference: the figures of ``edgefm.contract.judge`` under
    ``contract`` (default: the spec's kinds at fp32), so bench, verify and compress report the same numbers."""
    from edgefm.contract import _accuracy, judge, resolve

    n = samples if samples is not None else len(next(iter(got.values())))
    if ref:
        contract = contract if contract is not None else resolve(spec, None, "fp32")
        verdict = judge(contract, ref, got, labels)
        m = {k: v for k, v in verdict.metrics.items() if k != "_accuracy"}
        acc = verdict.metrics.get("_accuracy", {})
        return Accuracy(basis="labels" if labels is not None else "reference", samples=n, top1=acc.get("top1"),
                        top5=acc.get("top5"), fp32_top1=acc.get("fp32_top1"), fidelity=m,
                        contract_ok=verdict.ok, contract_failures=list(verdict.failures))
    if labels is not None:
        logits = [o.name for o in spec.outputs if o.kind in ("logits", "probabilities")] or list(got)[:1]
        acc = _accuracy(got[logits[0]], labels, {})
        return Accuracy(basis="labels", samples=n, top1=acc["top1"], top5=acc.get("top5"))
    return Accuracy(basis="none", samples=n)


def accuracy(job: WorkerJob) -> Accuracy:
    """Outputs on the whole eval set, scored (and saved to ``job.save_outputs`` when asked)."""
    s = job.subject
    opened = open_subject(s, job.threads)
    samples, ref = read_eval(job.eval_npz, s.spec)
    got = run_all(opened, samples, job.eval_batch)
    if job.save_outputs:
        np.savez(job.save_outputs, **{f"ref/{k}": v for k, v in got.items()})
    return score(s.spec, got, samples.labels, ref, contract_of(s), len(samples))


def measure(job: WorkerJob) -> Measurement:
    """Load, first call, then the timed runs at ``job.batch``; memory read around them."""
    s = job.subject
    idle = memory.rss_mb()
    t0 = time.perf_counter()
    opened = open_subject(s, job.threads)
    load_s = time.perf_counter() - t0
    samples, _ = read_eval(job.eval_npz, s.spec)
    part = batch_of(samples, job.batch)
    notes = list(opened.notes)
    if part.streamed:
        # as the device runs it: one call per chunk, each state output fed back to the next call
        call = stream_calls(part, opened.predict)
        notes.append(f"streaming: latency per call (one chunk of {job.batch} stream(s), state "
                     f"{', '.join(f'{o} -> {i}' for i, o in part.state.items())} fed back call to call; streams of "
                     f"{part.chunks} chunks, restarted from the initial state)")
    else:
        feed = part.inputs
        call = lambda: opened.predict(feed)  # noqa: E731
    t0 = time.perf_counter()
    call()
    cold_ms = (time.perf_counter() - t0) * 1e3
    loaded = memory.rss_mb()
    load_peak = memory.peak_rss_mb()
    plan = TimingPlan(warmup=job.warmup, runs=job.runs, seconds=job.seconds, min_runs=job.min_runs)
    with power_window() as power:
        timed = time_calls(call, plan)
        power.calls, power.batch = plan.warmup + len(timed.samples_ms), job.batch
    peak, after = memory.peak_rss_mb(), memory.rss_mb()
    stats = summarize(timed.samples_ms, job.batch, job.warmup, timed.cpu_s)
    return Measurement(
        name=s.name, role=s.role, backend=opened.backend, precision=s.precision, device=opened.device,
        batch=job.batch, threads=job.threads, artifact=opened.artifact, size_bytes=opened.size_bytes,
        load_s=load_s, cold_ms=cold_ms, latency=stats,
        memory=MemoryStats(peak_rss_mb=peak, idle_rss_mb=idle, load_peak_rss_mb=load_peak, loaded_rss_mb=loaded,
                           run_rss_mb=after),
        energy=power.energy, runtime_versions=opened.runtime_versions, settings=opened.settings,
        latencies_ms=thin(timed.samples_ms), notes=notes + ([power.note] if power.note else []))


def main(argv: list[str]) -> int:
    job = WorkerJob.model_validate_json(Path(argv[1]).read_text())
    try:
        done = measure(job) if job.mode == "measure" else accuracy(job)
        payload = done.model_dump_json()
        if isinstance(done, Measurement):
            # building and serialising the result costs the harness ~2 MiB; read the mark once more after it
            # so the figure is the whole process's, as /usr/bin/time -v sees it at exit
            done.memory.peak_rss_mb = max(done.memory.peak_rss_mb, memory.peak_rss_mb())
            payload = done.model_dump_json()
        result = {"ok": True, job.mode: json.loads(payload)}
    except EdgefmError as e:
        result = {"ok": False, "error_type": type(e).__name__, "message": str(e)}
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
        result = {"ok": False, "error_type": None, "message": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()}
    Path(job.out).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
