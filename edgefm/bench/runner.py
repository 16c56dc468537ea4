"""Benchmark a bundle: plan what to measure (its targets, the fp32 ONNX reference, the torch source),
check the inputs up front (one clear error, nothing measured), run each measurement in its own
subprocess (``edgefm.bench.worker``) one after another, and put the ratios beside every figure.

``measure_subjects`` is shared with the benchmarks/ suites, which add peers (other tools' outputs)."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

import edgefm
from edgefm import errors
from edgefm.bench.config import BenchConfig
from edgefm.bench.schema import Accuracy, BenchResult, BundleInfo, Measurement, Settings, Skipped
from edgefm.bench.subjects import Subject, env_for_threads
from edgefm.bundle import Manifest, read_manifest, sha256_path, target_files, verify_files
from edgefm.errors import BundleError, CalibrationError, ConfigError, EdgefmError
from edgefm.models.spec import ModelSpec
from edgefm.pylaunch import python_command
from edgefm.samples import Samples

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass
class Timing:
    """How every measurement of one run is taken (the same for all, so figures compare)."""

    batches: list[int] = field(default_factory=lambda: [1])
    threads: Optional[int] = None
    warmup: int = 10
    runs: Optional[int] = None
    seconds: Optional[float] = 2.0
    min_runs: int = 10
    eval_batch: int = 32
    worker_timeout_s: float = 900.0

    @classmethod
    def from_config(cls, cfg: BenchConfig) -> "Timing":
        return cls(batches=cfg.batches, threads=cfg.threads, warmup=cfg.warmup, runs=cfg.runs,
                   seconds=None if cfg.runs else cfg.seconds, min_runs=cfg.min_runs, eval_batch=cfg.eval_batch,
                   worker_timeout_s=cfg.worker_timeout_s)

    def settings(self, eval_path: Optional[Path], eval_samples: int) -> Settings:
        return Settings(batches=self.batches, threads=self.threads, warmup=self.warmup, runs=self.runs,
                        seconds=self.seconds, min_runs=self.min_runs,
                        eval=str(eval_path) if eval_path else None, eval_samples=eval_samples)


# ---------------------------------------------------------------- eval data

def _read_npz(path: Path, spec: ModelSpec) -> tuple[dict, Optional[np.ndarray], dict, bool]:
    """(inputs, labels, reference outputs, model layout?) of an eval .npz. Keys in/<input> (a bundle's eval.npz,
    or a prepared one) are in the model's layout already (streams: chunks first); bare names are a user's file
    (samples first; streams as (streams, chunks, ...)), laid out as ``edgefm.datasets`` does for compress."""
    from edgefm.bundle import read_npz

    z = read_npz(path, "eval data")  # no pickle, unpacked size capped
    files = set(z)
    prefixed = any(k.startswith("in/") for k in files)
    inputs = {k[3:]: z[k] for k in files if k.startswith("in/")} if prefixed else \
        {k: z[k] for k in files if k != "labels" and "/" not in k}
    if not prefixed and len(spec.inputs) == 1 and len(inputs) == 1 and spec.inputs[0].name not in inputs:
        # a single-input model and a single array of another name: take it (as edgefm.datasets does)
        inputs = {spec.inputs[0].name: next(iter(inputs.values()))}
    labels = z["labels"] if "labels" in files else None
    ref = {k[4:]: z[k] for k in files if k.startswith("ref/")}
    return inputs, labels, ref, prefixed


def _read_other(path: Path, spec: ModelSpec, bundle: Path):
    if importlib.util.find_spec("edgefm.datasets") is None:
        raise ConfigError(f"eval data {path}: only .npz is readable by this edgefm (edgefm.datasets is missing)")
    from edgefm.datasets import load_samples

    tok = spec.preprocessing.tokenizer
    tok_dir = None if tok is None else (Path(tok) if Path(tok).is_absolute() else bundle / tok)
    samples = load_samples(path, spec, tokenizer_dir=tok_dir, max_length=spec.preprocessing.max_length or 128)
    return samples.inputs, samples.labels, {}, True


def eval_samples(inputs: dict, labels: Optional[np.ndarray], spec: ModelSpec, where: str) -> Samples:
    """Model-layout eval arrays as ``Samples`` (each input on its recorded batch axis, constants whole, streams
    chunk first), checked against ``spec``: CalibrationError naming ``where`` for anything that does not fit."""
    inputs = dict(inputs)
    for i in spec.inputs:  # a constant the file leaves out is fed its recorded value (a baked one is not fed)
        if i.name not in inputs and i.constant and not i.baked:
            inputs[i.name] = i.constant_array()
    s = Samples.for_spec(spec, inputs, labels)
    for k, v in s.inputs.items():
        ax = s.axis(k)
        if ax is not None and np.ndim(v) <= ax:
            raise CalibrationError(f"{where}: input '{k}' has shape {list(np.shape(v))}; its samples are on axis "
                                   f"{ax}" + (" (streams: chunks first)" if s.streamed else ""))
    counts = {k: int(np.shape(v)[s.axis(k)]) for k, v in s.inputs.items() if s.axis(k) is not None}
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"{where}: inputs have different sample counts {counts}")
    if s.streamed:
        chunks = {k: int(np.shape(v)[0]) for k, v in s.inputs.items() if k not in s.state and s.axis(k) is not None}
        if len(set(chunks.values())) > 1:
            raise CalibrationError(f"{where}: streams have different chunk counts {chunks}")
    # every call's feed must fit the model (a stream's first chunk with the initial state stands for all)
    spec.check_feed(s.chunk(0, {k: s.inputs[k] for k in s.state}) if s.streamed else s.inputs, where)
    return s


def _take_outputs(ref: dict, s: Samples, n: int) -> dict:
    """The reference outputs of the first ``n`` samples, or {} when they do not line up with the inputs."""
    shift = 1 if s.streamed else 0
    out = {}
    for k, v in ref.items():
        ax = s.out_axes.get(k, 0) + shift
        if np.ndim(v) <= ax or np.shape(v)[ax] != len(s):
            return {}  # reference outputs that do not line up with the inputs are recomputed
        out[k] = np.take(v, np.arange(n), axis=ax)
    return out


def prepare_eval(path: Path, spec: ModelSpec, bundle: Path, out: Path, limit: Optional[int] = None
                 ) -> tuple[int, bool, Optional[np.ndarray]]:
    """Read eval data, check it fits ``spec`` (CalibrationError naming the file otherwise) and write it as
    ``out`` (keys in/<input>, labels, ref/<output>) in the model's layout: every input on its recorded batch
    axis, constants whole, streams (a spec with state) chunk first with the initial state. Returns (samples or
    streams, has reference outputs, labels)."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"eval data {path}: no such file")
    where = f"eval data {path}"
    inputs, labels, ref, model_layout = _read_npz(path, spec) if path.suffix == ".npz" else \
        _read_other(path, spec, bundle)
    if not model_layout:
        from edgefm.datasets import layout

        laid = layout(Samples(inputs, labels), spec, where)
        inputs, labels = laid.inputs, laid.labels
    s = eval_samples(inputs, labels, spec, where)
    n = len(s)
    if n == 0:
        raise CalibrationError(f"{where}: has no samples")
    if labels is not None and len(labels) != n:
        raise CalibrationError(f"{where}: {len(labels)} labels for {n} {'streams' if s.streamed else 'samples'}")
    if limit:
        n = min(n, limit)
    ref = _take_outputs(ref, s, n)
    s = s.take(slice(0, n))
    arrays = {f"in/{k}": v for k, v in s.inputs.items()}
    arrays.update({f"ref/{k}": v for k, v in ref.items()})
    if s.labels is not None:
        labels = np.asarray(s.labels)
        arrays["labels"] = labels
    np.savez(out, **arrays)
    return n, bool(ref), labels


def add_reference(eval_npz: Path, outputs_npz: Path) -> None:
    """Merge the fp32 reference outputs (written by the reference worker) into the eval file."""
    with np.load(eval_npz) as z, np.load(outputs_npz) as o:
        arrays = {k: z[k] for k in z.files}
        arrays.update({k: o[k] for k in o.files})
    np.savez(eval_npz, **arrays)


# ---------------------------------------------------------------- planning

def bundle_subjects(cfg: BenchConfig, manifest: Manifest, bundle: Path
                    ) -> tuple[list[Subject], list[Skipped]]:
    """The bundle's targets to measure, plus the baselines. Bad input raises before anything runs."""
    from edgefm.backends import get_backend

    names = cfg.targets or list(manifest.targets)
    unknown = [n for n in names if n not in manifest.targets]
    if unknown:
        have = ", ".join(manifest.targets) or "none"
        raise BundleError(f"bundle {bundle} has no target '{unknown[0]}'; it has: {have}")
    subjects: list[Subject] = []
    skipped: list[Skipped] = []
    spec = manifest.spec
    if cfg.baselines and manifest.reference:
        verify_files(bundle, manifest, only=[manifest.reference])
        subjects.append(Subject(name="fp32-onnx", role="fp32-reference", kind="onnx", spec=spec, precision="fp32",
                                path=str(bundle / manifest.reference)))
    for name in names:
        verify_files(bundle, manifest, only=target_files(manifest, name))
        entry = manifest.targets[name]
        try:
            get_backend(entry.backend)
        except errors.BackendUnavailableError as e:
            if cfg.targets:
                raise
            skipped.append(Skipped(name=name, reason=str(e)))
            continue
        subjects.append(Subject(name=name, role="target", kind="bundle", spec=spec, precision=entry.precision,
                                bundle=str(bundle), target=name))
    if cfg.baselines and cfg.torch_baseline:
        torch_subject, why = torch_baseline(manifest, cfg.torch_source, cfg.arch, cfg.trust_source)
        if torch_subject is not None:
            subjects.append(torch_subject)
        else:
            skipped.append(Skipped(name="torch-eager", reason=why))
    return subjects, skipped


def torch_baseline(manifest: Manifest, source: Optional[Path] = None, arch: Optional[str] = None,
                   trust_source: bool = False) -> tuple[Optional[Subject], str]:
    """The source model in torch eager mode, loaded from ``source`` (with ``arch``) as given on the bench
    command line. A bundle is data: its manifest's source path and --arch are never imported or run here,
    only its input declarations (shapes) and the source's sha256 are read from it."""
    if manifest.source.kind == "onnx":
        return None, "the bundle's source is an ONNX file (no torch model)"
    if source is None:
        return None, ("pass --torch-source CHECKPOINT (and --arch for a state_dict) to measure the source model in "
                      "torch eager mode; edgefm never runs code a bundle names")
    src = Path(source)
    if not src.exists():
        raise ConfigError(f"--torch-source {src}: no such file or folder")
    if importlib.util.find_spec("torch") is None:
        return None, "torch is not installed here"
    if manifest.source.sha256 and sha256_path(src) != manifest.source.sha256:
        return None, f"--torch-source {src} is not the checkpoint this bundle was made from (sha256 differs)"
    cfg = manifest.config or {}
    inputs = cfg.get("inputs") or []
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise BundleError("manifest.json: config.inputs must be a list of NAME:DIMS[:DTYPE] strings")
    return Subject(name="torch-eager", role="torch-eager", kind="torch", spec=manifest.spec, precision="fp32",
                   path=str(src), arch=arch, inputs=list(inputs), trust_source=trust_source), ""


# ---------------------------------------------------------------- running

def _spawn(job_fields: dict, subject: Subject, stem: str, timing: Timing, workdir: Path) -> dict:
    """Run one worker job in a fresh interpreter and return its result payload. EdgefmError from the worker
    is re-raised with its type; anything else becomes a RuntimeError carrying the worker's message."""
    from edgefm.bench.worker import WorkerJob

    out = workdir / f"{stem}.result.json"
    out.unlink(missing_ok=True)
    job = WorkerJob(subject=subject, threads=timing.threads, out=str(out), **job_fields)
    job_path = workdir / f"{stem}.job.json"
    job_path.write_text(job.model_dump_json())
    try:
        proc = subprocess.run([*python_command(), "-m", "edgefm.bench.worker", str(job_path)],
                              capture_output=True, text=True, timeout=timing.worker_timeout_s,
                              env=env_for_threads(timing.threads))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{subject.name}: no result within {timing.worker_timeout_s:.0f} s") from None
    if not out.is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"{subject.name}: the worker died (exit {proc.returncode}){': ' + tail if tail else ''}")
    res = json.loads(out.read_text())
    if res["ok"]:
        return res
    cls = getattr(errors, res.get("error_type") or "", None)
    if isinstance(cls, type) and issubclass(cls, EdgefmError):
        raise (cls(res["message"]) if cls is not errors.AccuracyError else EdgefmError(res["message"]))
    log.debug("worker traceback for %s:\n%s", subject.name, res.get("traceback", ""))
    raise RuntimeError(f"{subject.name}: {res['message']}")


def _stem(subject: Subject, what: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{subject.name}-{what}")


def run_worker(subject: Subject, batch: int, timing: Timing, eval_npz: Path, workdir: Path) -> Measurement:
    """Time one subject at one batch size in a fresh subprocess (load, cold call, timed runs, memory)."""
    res = _spawn(dict(mode="measure", batch=batch, warmup=timing.warmup, runs=timing.runs, seconds=timing.seconds,
                      min_runs=timing.min_runs, eval_npz=str(eval_npz)), subject, _stem(subject, f"b{batch}"),
                 timing, workdir)
    return Measurement.model_validate(res["measure"])


def run_accuracy(subject: Subject, timing: Timing, eval_npz: Path, workdir: Path,
                 save_outputs: Optional[Path] = None) -> Accuracy:
    """Outputs of one subject on the whole eval set, scored, in a fresh subprocess (optionally saved)."""
    res = _spawn(dict(mode="accuracy", batch=timing.eval_batch, eval_npz=str(eval_npz),
                      eval_batch=timing.eval_batch, save_outputs=str(save_outputs) if save_outputs else None),
                 subject, _stem(subject, "accuracy"), timing, workdir)
    return Accuracy.model_validate(res["accuracy"])


def measure_subjects(subjects: list[Subject], timing: Timing, eval_npz: Path, workdir: Path,
                     progress: Optional[Progress] = None, required: tuple[str, ...] = ()
                     ) -> tuple[list[Measurement], list[Skipped]]:
    """For every subject: accuracy on the eval data (one process; not for torch eager, which the fp32 ONNX
    was verified against at export), then the timed runs at every batch size (one process each), one
    process at a time. A subject that fails is skipped with its reason, unless its
    name is in ``required`` (then the error propagates)."""
    done: list[Measurement] = []
    skipped: list[Skipped] = []
    scores: dict[str, Optional[Accuracy]] = {}
    for s in subjects:
        if s.role == "torch-eager":
            # the source model: the export step already verified the fp32 ONNX against it, and a torch pass
            # over the eval set is the slowest thing here; it is measured for speed only
            scores[s.name] = None
            continue
        if progress:  # one process per step: loading and a pass over the eval set take seconds
            progress(f"{s.name}: accuracy on the eval data")
        try:
            scores[s.name] = run_accuracy(s, timing, eval_npz, workdir)
        except (EdgefmError, RuntimeError) as e:
            _skip(s, e, required, skipped, progress)
    for batch in timing.batches:
        for s in subjects:
            if s.name not in scores:
                continue
            if progress:
                progress(f"{s.name}: timing batch {batch}")
            try:
                m = run_worker(s, batch, timing, eval_npz, workdir)
            except (EdgefmError, RuntimeError) as e:
                _skip(s, e, required, skipped, progress)
                scores.pop(s.name)
                continue
            m.accuracy = scores[s.name]
            done.append(m)
            if progress:
                progress(f"{s.name:<24} batch {batch:<3} p50 {m.latency.p50:9.3f} ms  p90 {m.latency.p90:9.3f} ms"
                         f"  peak {m.memory.peak_rss_mb:7.1f} MiB")
    add_ratios(done)
    return done, skipped


def _skip(s: Subject, e: Exception, required: tuple[str, ...], skipped: list[Skipped],
          progress: Optional[Progress]) -> None:
    if s.name in required:
        raise e
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    skipped.append(Skipped(name=s.name, reason=reason))
    if progress:
        progress(f"skipped {s.name}: {reason}")


def add_ratios(ms: list[Measurement]) -> None:
    """speedup_vs_fp32 against the same backend's fp32 measurement at the same batch (else the fp32 ONNX
    reference), speedup_vs_torch against torch eager at the same batch."""
    for m in ms:
        same = [o for o in ms if o.batch == m.batch]
        fp32 = m if m.role == "fp32-reference" else next(
            (o for o in same if o.backend == m.backend and o.device == m.device and o.precision == "fp32"
             and o.role == "target"), None)
        fp32 = fp32 or next((o for o in same if o.role == "fp32-reference"), None)
        torch_m = next((o for o in same if o.role == "torch-eager"), None)
        if fp32 is not None:
            m.fp32_baseline = fp32.name
            m.speedup_vs_fp32 = fp32.latency.p50 / m.latency.p50
        if torch_m is not None:
            m.speedup_vs_torch = torch_m.latency.p50 / m.latency.p50


def bundle_info(bundle: Path, manifest: Manifest) -> BundleInfo:
    from edgefm.bench.report import model_name

    name = model_name(manifest.source.path, (manifest.config or {}).get("arch"), manifest.spec.arch)
    return BundleInfo(path=str(bundle), model=name, family=manifest.spec.family,
                      task=manifest.spec.task, arch=manifest.spec.arch, source=manifest.source.path,
                      created=manifest.created)


def run_bench(cfg: BenchConfig, progress: Optional[Progress] = None) -> BenchResult:
    """Benchmark ``cfg.bundle`` on this machine and return the result (nothing is written here)."""
    from edgefm.bench.machine import machine_info

    start = time.perf_counter()
    machine = machine_info()  # before we start working: the load average is other people's work
    bundle = Path(cfg.bundle)
    manifest = read_manifest(bundle)
    subjects, skipped = bundle_subjects(cfg, manifest, bundle)
    eval_path = cfg.eval or (bundle / manifest.eval_data if manifest.eval_data else None)
    if eval_path is None:
        raise CalibrationError(f"bundle {bundle} has no eval data; pass --eval FILE.npz")
    timing = Timing.from_config(cfg)
    with tempfile.TemporaryDirectory(prefix="edgefm-bench-") as tmp:
        work = Path(tmp)
        eval_npz = work / "eval.npz"
        n, has_ref, _ = prepare_eval(eval_path, manifest.spec, bundle, eval_npz, cfg.max_eval_samples)
        ref = next((s for s in subjects if s.role == "fp32-reference"), None)
        if not has_ref and manifest.reference:
            # the fp32 ONNX's outputs on this eval data are the reference every figure is compared with
            if ref is None:
                ref = Subject(name="fp32-onnx", role="fp32-reference", kind="onnx", spec=manifest.spec,
                              path=str(bundle / manifest.reference))
            outputs = work / "ref-outputs.npz"
            if progress:
                progress("fp32 reference outputs on the eval data")
            run_accuracy(ref, timing, eval_npz, work, save_outputs=outputs)
            add_reference(eval_npz, outputs)
        required = tuple(cfg.targets)
        measurements, failed = measure_subjects(subjects, timing, eval_npz, work, progress, required)
    return BenchResult(edgefm_version=edgefm.__version__, machine=machine,
                       bundle=bundle_info(bundle, manifest), settings=timing.settings(eval_path, n),
                       measurements=measurements, skipped=skipped + failed, wall_s=time.perf_counter() - start)
