"""ONNX Runtime backend: the default target. fp32 uses the verified fp32 ONNX as it is; int8 tries the
family's recipes (edgefm.quantize.onnxruntime) and keeps the fastest within the limits; fp16 uses ORT's
float16 converter."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefm.backends.base import (CompileJob, CompileResult, LoadOptions, fallback_allowed, int8_slower_than_fp32,
                                  int8_way_out, judge_job)
from edgefm.bundle import StageRecord, TargetEntry, sha256_file
from edgefm.contract import enforce
from edgefm.errors import AccuracyError, ConfigError
from edgefm.models.spec import ModelSpec
from edgefm.predictor import BasePredictor
from edgefm.targets import TargetSpec, backend_options

log = logging.getLogger(__name__)
EXTRA = "onnxruntime"  # part of the core install
CAPABILITIES: frozenset = frozenset()  # no optional verbs (edgefm.backends.base.CAPABILITIES)
EVAL_BATCH = 32
PREFERENCE_MARGIN = 1.2  # an earlier recipe within 20 % of the fastest is kept


class Options(BaseModel):
    """``options:`` of an onnxruntime target YAML."""

    model_config = ConfigDict(extra="forbid")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"],
                                 description="Execution providers in order of preference")
    graph_optimization: str = Field("all", description="disable, basic, extended or all")
    recipes: Optional[list[str]] = Field(None, description="int8 recipe names to try (default: the family's)")


OPTIONS = Options  # a target's ``options:``, validated when compress plans (before any model is loaded)


def is_available() -> bool:
    # find_spec, not import: `edgefm compress` checks every target's backend before loading anything heavy
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


def parse_options(raw: dict[str, Any], where: str) -> Options:
    return backend_options(Options, TargetSpec(name=where, backend="onnxruntime", options=raw))


def _session(path: Path, opts: Options, threads: Optional[int]):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so.graph_optimization_level = levels[opts.graph_optimization]
    if threads:
        so.intra_op_num_threads = threads
    available = set(ort.get_available_providers())
    providers = [p for p in opts.providers if p in available] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


class OrtPredictor(BasePredictor):
    """``InferenceSession.run`` is thread-safe, so one session serves every thread."""

    def __init__(self, path: Path, spec: ModelSpec, target: str, opts: Options, threads: Optional[int]):
        super().__init__(spec, target, "onnxruntime")
        self.session = _session(path, opts, threads)
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._outputs, self.session.run(self._outputs, feed)))


def eval_outputs(path: Path, job: CompileJob, opts: Options) -> dict[str, np.ndarray]:
    """Outputs of the ONNX file at ``path`` on the job's eval data, batch by batch."""
    pred = OrtPredictor(path, job.spec, job.target.name, opts, job.target.threads)
    wanted = {i.name for i in pred.session.get_inputs()}
    return job.eval.run(lambda f: pred._run({k: v for k, v in f.items() if k in wanted}), EVAL_BATCH)


def _int8(job: CompileJob, opts: Options, out: Path) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Try the family's recipes; keep the fastest within limits. Returns (settings, metrics, notes)."""
    from edgefm.quantize.onnxruntime import RECIPES, describe_int8, int8_ops, quantize, quick_latency_ms

    recipes = RECIPES[job.spec.family]
    if opts.recipes:
        known = {r.name: r for rs in RECIPES.values() for r in rs}
        bad = [r for r in opts.recipes if r not in known]
        if bad:
            raise ConfigError(f"target {job.target.name}: unknown int8 recipes {bad}; known: {sorted(known)}")
        recipes = tuple(known[r] for r in opts.recipes)
    one = job.eval.first()
    base_ms = quick_latency_ms(job.onnx_path, one, threads=job.target.threads or 0)
    candidates, notes = [], []
    for i, recipe in enumerate(recipes):
        path = out.with_name(f".candidate{i}.onnx")
        if job.progress:
            job.progress(f"{job.target.name}: int8 recipe {recipe.name}")
        try:
            settings = quantize(job.onnx_path, path, recipe, job.calib, job.spec.input_names, job.config.keep_fp32)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - a recipe ORT cannot apply is recorded and skipped
            notes.append(f"recipe {recipe.name} failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        if not _quantized(path):  # e.g. every op inside an If subgraph, which ORT's quantizer does not enter
            notes.append(f"recipe {recipe.name} quantized nothing: no int8 op in its graph")
            path.unlink(missing_ok=True)
            continue
        verdict = judge_job(job, eval_outputs(path, job, opts))
        metrics = verdict.metrics
        ms = quick_latency_ms(path, one, threads=job.target.threads or 0)
        try:
            enforce(f"quantize int8 ({recipe.name})", verdict)
            error = None
        except AccuracyError as e:
            error = e
        summary = {k: {m: round(v, 5) for m, v in d.items()} for k, d in metrics.items()}
        notes.append(f"recipe {recipe.name}: {ms:.3f} ms at batch 1 (fp32 {base_ms:.3f}), "
                     f"{'within limits' if error is None else 'rejected: ' + str(error)}; {summary}")
        candidates.append((recipe, settings, verdict, ms, path, error))
    ok = [c for c in candidates if c[5] is None]
    if not ok and fallback_allowed(job.config):
        # Keep the most damaged nodes in float until the contract holds (recorded; --no-fallback refuses instead).
        ok = _fallback(job, opts, out, [c for c in candidates if c[0].mode == "static"], notes)
    if not ok:
        for c in candidates:
            c[4].unlink(missing_ok=True)
        if not candidates:
            if any("quantized nothing" in n for n in notes):
                raise AccuracyError("quantize int8", "-", "int8_ops", 0, 1, hint=(
                    "ONNX Runtime's quantizer found nothing it could quantize (it does not enter If/Loop subgraphs), "
                    "so an 'int8' artifact would be the fp32 model under another name; use --quantize fp32 for this "
                    "target. " + "; ".join(notes)))
            raise AccuracyError("quantize int8", "-", "recipes_applied", 0, 1, hint="; ".join(notes))
        best = max(candidates, key=lambda c: c[2].margin)
        raise AccuracyError(best[5].step, best[5].output, best[5].metric, best[5].value, best[5].limit,
                            direction=getattr(best[5], "direction", None), hint="no int8 recipe met the limits; relax them in a recipe's tolerances, "
                                 + int8_way_out(job.config, "nodes or op types") + ". Tried: "
                                 + " | ".join(notes))
    # int8 is for speed and size. Quick timings are noisy (a shared CPU swings them by 10 %+), so the family's
    # preferred (earlier) recipe is kept unless another is clearly faster without being larger (static QDQ of
    # a small LSTM can time faster, but it leaves the LSTM weights in float).
    size = {id(c): c[4].stat().st_size for c in ok}

    def beaten(c) -> bool:
        return any(d[3] * PREFERENCE_MARGIN < c[3] and size[id(d)] <= 1.1 * size[id(c)] for d in ok)

    recipe, settings, verdict, ms, path, _ = next(c for c in ok if not beaten(c))
    metrics = verdict.metrics
    for c in candidates:
        if c[4] != path:
            c[4].unlink(missing_ok=True)
    path.rename(out)
    notes.append(f"chose {recipe.name}: within limits, and no other recipe is 20 % faster without being larger "
                 f"({ms:.3f} ms vs fp32 {base_ms:.3f} ms, quick median at batch 1)")
    ops = int8_ops(out)
    settings["int8_ops"] = ops
    notes.append(f"what runs in int8 ({recipe.name}): {describe_int8(ops)}")
    settings.update(latency_ms_batch1=round(ms, 4), fp32_latency_ms_batch1=round(base_ms, 4))
    return settings, metrics, notes


def _quantized(path: Path) -> bool:
    import onnx

    from edgefm.models.onnx_graph import int8_op_count

    return int8_op_count(onnx.load(str(path), load_external_data=False)) > 0


class OrtFallback:
    """Fallback hooks (edgefm.quantize.fallback) for ORT's static QDQ: units are quantized activations ranked
    by ORT's QDQ debugger (per-channel SQNR, ``sensitive_tensors``); keeping one excludes the nodes that
    produce or consume it (in QDQ form a producer quantizes its output, a consumer its input)."""

    precision_kept = "float"

    def __init__(self, job: CompileJob, opts: Options, out: Path, recipe):
        self.job, self.opts, self.out, self.recipe = job, opts, out, recipe
        self.settings: dict[str, Any] = {}
        self.made: list[Path] = []

    def sensitivity(self, candidate):
        from edgefm.quantize.fallback import Unit
        from edgefm.quantize.onnxruntime import sensitive_tensors

        ranked = sensitive_tensors(self.job.onnx_path, candidate.path, self.job.calib, self.job.spec.input_names)
        return [Unit(t, s, list(nodes)) for t, s, nodes in ranked]

    def build(self, keep):
        from edgefm.quantize.fallback import Candidate
        from edgefm.quantize.onnxruntime import quantize

        nodes = list(dict.fromkeys(n for u in keep for n in u.nodes))
        path = self.out.with_name(f".fallback{len(self.made)}.onnx")
        self.made.append(path)
        self.settings = quantize(self.job.onnx_path, path, self.recipe, self.job.calib, self.job.spec.input_names,
                                 self.job.config.keep_fp32, fallback_nodes=nodes)
        return Candidate(path, kept=nodes)

    def run(self, candidate):
        return eval_outputs(candidate.path, self.job, self.opts)


def _fallback(job: CompileJob, opts: Options, out: Path, static: list, notes: list[str]) -> list:
    """The accuracy fallback (edgefm.quantize.fallback) on the static candidate closest to the limits.
    Returns [candidate] or []; every round goes into ``notes`` and the kept nodes into the settings."""
    from edgefm.quantize.fallback import Candidate, run_fallback
    from edgefm.quantize.onnxruntime import quick_latency_ms

    if not static:
        notes.append("fallback: no static (QDQ) recipe to refine; dynamic recipes have no per-node fallback")
        return []
    recipe, _, _, _, start, _ = max(static, key=lambda c: c[2].margin)
    hooks = OrtFallback(job, opts, out, recipe)
    res = run_fallback(hooks, lambda got: judge_job(job, got), Candidate(start), progress=job.progress)
    notes += res.notes()
    for p in hooks.made:
        if res.candidate is None or p != res.candidate.path:
            p.unlink(missing_ok=True)
    if not res.ok:
        return []
    path = res.candidate.path
    ms = quick_latency_ms(path, job.eval.first(), threads=job.target.threads or 0)
    settings = dict(hooks.settings, fallback_nodes_fp32=list(res.kept), fallback=res.record())
    return [(recipe, settings, res.verdict, ms, path, None)]


def compile(job: CompileJob) -> CompileResult:  # noqa: A001 - the backend contract's name
    """Build the ORT artifact for ``job.precision`` into ``job.out_dir`` and verify it on the eval data."""
    opts = parse_options(job.target.options, job.target.name)
    t0 = time.perf_counter()
    job.out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if job.precision == "fp32":
        artifact, settings = job.onnx_path, {"artifact": "the verified fp32 ONNX, unchanged"}
        verdict = judge_job(job, eval_outputs(artifact, job, opts))
        enforce("onnxruntime fp32", verdict)  # the reference itself: fails only on a broken runtime
        metrics = verdict.metrics
    elif job.precision == "int8":
        artifact = job.out_dir / "model.int8.onnx"
        settings, metrics, notes = _int8(job, opts, artifact)
    elif job.precision == "fp16":
        from edgefm.quantize.onnxruntime import to_fp16

        artifact = job.out_dir / "model.fp16.onnx"
        settings = to_fp16(job.onnx_path, artifact)
        verdict = judge_job(job, eval_outputs(artifact, job, opts))
        enforce("convert fp16", verdict)
        metrics = verdict.metrics
    else:
        raise ConfigError(f"target {job.target.name}: onnxruntime does not support precision '{job.precision}' "
                          f"(use int8, fp16 or fp32)")
    rel = str(Path(artifact).relative_to(job.bundle_dir))
    entry = TargetEntry(backend="onnxruntime", precision=job.precision, device=job.target.device, artifact=rel,
                        files=[rel], runtime_versions=versions(), options=opts.model_dump(), metrics=metrics,
                        hardware={"arch": job.target.arch},
                        kept_in_float=list(settings.get("fallback_nodes_fp32", [])), fallback=settings.get("fallback"))
    if job.precision == "int8":
        _note_speed(job, entry, notes, settings)
    if settings.get("int8_ops") and settings.get("recipe", "").endswith("-only"):
        # a recipe that leaves most ops float on purpose says so where the user reads (the CLI's summary)
        from edgefm.quantize.onnxruntime import describe_int8

        entry.notes.append(f"{settings['recipe']}: {describe_int8(settings['int8_ops'])}")
    stage = StageRecord(name="quantize" if job.precision != "fp32" else "compile", target=job.target.name,
                        settings=settings, input_sha256=sha256_file(job.onnx_path),
                        output_sha256=sha256_file(artifact), seconds=round(time.perf_counter() - t0, 3),
                        metrics=metrics, notes=notes)
    return CompileResult(entry=entry, stages=[stage])


def _note_speed(job: CompileJob, entry: TargetEntry, notes: list[str], settings: dict[str, Any]) -> None:
    """Never ship an int8 model slower than the fp32 one without saying so: the recorded batch-1 figures of the
    chosen recipe and of the fp32 ONNX, compared as recorded (stage notes, the entry's notes, which the compress
    summary prints, and the progress log)."""
    slower = int8_slower_than_fp32(settings.get("latency_ms_batch1"), settings.get("fp32_latency_ms_batch1"),
                                   "ONNX Runtime CPU, median of 20 calls each at compile time")
    if slower:
        notes.append(slower["note"])
        entry.notes.append(slower["note"])
        entry.metrics["_speed_vs_fp32"] = slower
        if job.progress:
            job.progress(f"{job.target.name}: {slower['note']}")


def load(bundle: Path, target_name: str, entry: TargetEntry, spec: ModelSpec, opts: LoadOptions) -> OrtPredictor:
    """A Predictor over the target's ONNX file."""
    options = parse_options(entry.options, f"bundle {bundle} target {target_name}")
    return OrtPredictor(Path(bundle) / entry.artifact, spec, target_name, options, opts.threads)
