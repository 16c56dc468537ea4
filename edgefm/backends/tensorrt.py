"""TensorRT target (Jetson and x86 NVIDIA GPUs).

An engine is tied to the GPU, the TensorRT version and the JetPack release that built it, so it cannot be
built on the workstation. ``compile`` (workstation, part of ``edgefm compress``) writes what the device
needs: the TensorRT-ready Q/DQ ONNX (int8) or the fp32 ONNX (fp16/fp32), verified in ONNX Runtime against
the fp32 reference and against TensorRT's rules, plus ``build.json`` (precision flags, optimisation
profiles, fp16/fp32 layer lists, sparsity, DLA, workspace). ``compile_engine`` (device, ``edgefm compile``)
builds the engine from them. ``load`` runs the engine where TensorRT is importable and the engine matches
this GPU and TensorRT version; before an engine exists (or with ``device='cpu'``) it runs the Q/DQ ONNX in
ONNX Runtime, so ``edgefm.load`` works everywhere, and the entry says which one executes."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefm.backends.base import CompileJob, CompileResult, LoadOptions, fallback_allowed, int8_way_out, judge_job
from edgefm.bundle import StageRecord, TargetEntry, sha256_file
from edgefm.contract import enforce
from edgefm.errors import (AccuracyError, BackendUnavailableError, ConfigError, TargetError,
                           UnsupportedOpError)
from edgefm.models.spec import ModelSpec
from edgefm.quantize.tensorrt import TrtQuantConfig
from edgefm.targets import TargetSpec, backend_options

EXTRA = "tensorrt"
# optional verbs (edgefm.backends.base.CAPABILITIES)
CAPABILITIES = frozenset({"availability", "check_rules", "check_rules_for", "compile_on_device"})
BUILD_FILE = "build.json"
BUILD_FORMAT = 1
log = logging.getLogger(__name__)


class TensorRTOptions(BaseModel):
    """The ``options`` of a TensorRT target file: engine build settings, profiles and the int8 recipe."""

    model_config = ConfigDict(extra="forbid")
    workspace_mib: int = Field(1024, ge=16, description="Builder workspace limit (MiB)")
    fp16: bool = Field(True, description="Let layers without Q/DQ run in fp16 (FP16 builder flag)")
    strongly_typed: bool = Field(False, description="Strongly typed network: precisions come from the ONNX "
                                                    "types alone (no INT8/FP16 flags; float layers stay fp32)")
    sparsity: bool = Field(False, description="Prune weights to 2:4 and build with SPARSE_WEIGHTS (sm_80+)")
    sparsity_min_channels: int = Field(64, ge=4, description="Smaller layers are left dense (no gain)")
    dla_core: Optional[int] = Field(None, ge=0, description="Run on this DLA core (Jetson Xavier/Orin NX/AGX)")
    gpu_fallback: bool = Field(True, description="With a DLA core: layers DLA cannot run go to the GPU")
    builder_optimization_level: Optional[int] = Field(None, ge=0, le=5, description="TensorRT >= 8.6; None = 3")
    timing_cache: bool = Field(True, description="Keep a timing cache beside the engine (faster rebuilds)")
    min_batch: int = Field(1, ge=1, description="Optimisation profile: smallest batch")
    opt_batch: int = Field(1, ge=1, description="Optimisation profile: batch TensorRT tunes for")
    max_batch: int = Field(16, ge=1, description="Optimisation profile: largest batch (bigger calls are split)")
    dims: dict[str, list[int]] = Field(default_factory=dict,
                                       description="Other dynamic axes by name: [min, opt, max]")
    quantization: TrtQuantConfig = Field(default_factory=TrtQuantConfig)
    max_fallback_fraction: float = Field(0.25, gt=0, le=1, description="With --max-accuracy-drop: share of the "
                                         "quantized activations the accuracy fallback may leave in fp16")


    @field_validator("dims")
    @classmethod
    def _profile_triples(cls, dims: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, trio in dims.items():
            if len(trio) != 3 or not 1 <= trio[0] <= trio[1] <= trio[2]:
                raise ValueError(f"{name}: {trio} must be [min, opt, max] with 1 <= min <= opt <= max")
        return dims


OPTIONS = TensorRTOptions  # a target's ``options:``, validated when compress plans (before any model is loaded)


def is_available() -> bool:
    """True where a bundle's TensorRT target can be loaded: with TensorRT, or with ONNX Runtime (Q/DQ ONNX)."""
    return engine_available() or importlib.util.find_spec("onnxruntime") is not None


def availability(target=None) -> str:
    """For ``edgefm targets``: an engine needs TensorRT (on the device); without it the bundle's Q/DQ ONNX
    still builds and runs in ONNX Runtime, which is not the target's speed."""
    if engine_available():
        return "yes"
    return "Q/DQ ONNX only (no TensorRT)" if is_available() else "no"


def engine_available() -> bool:
    """True where TensorRT's Python bindings and cuda-python are importable (an engine can be built/run)."""
    return importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cuda") is not None


def versions() -> dict[str, str]:
    out = {}
    for mod in ("tensorrt", "onnxruntime"):
        if importlib.util.find_spec(mod) is not None:
            out[mod] = getattr(importlib.import_module(mod), "__version__", "?")
    return out


def options_of(target: TargetSpec) -> TensorRTOptions:
    """The target's validated options; a bad key or value is a ``TargetError`` naming the target."""
    return backend_options(TensorRTOptions, target)


def tensorrt_version(target: TargetSpec) -> str:
    """The TensorRT version the target's device runs (``hardware.tensorrt``)."""
    v = target.hardware.get("tensorrt")
    if not v:
        raise TargetError(f"target '{target.name}': hardware.tensorrt (the device's TensorRT version, e.g. 10.3) "
                          f"is missing; the Q/DQ rules depend on it")
    return str(v)


def check_target(target: TargetSpec, opts: TensorRTOptions) -> None:
    """Refuse settings the target's hardware cannot honour (DLA cores, sparse tensor cores)."""
    hw = target.hardware
    if opts.dla_core is not None and opts.dla_core >= int(hw.get("dla_cores", 0) or 0):
        raise ConfigError(f"target '{target.name}': options.dla_core={opts.dla_core}, but the device has "
                          f"{hw.get('dla_cores', 0)} DLA core(s)")
    cc = hw.get("compute_capability")
    if opts.sparsity and cc and float(cc) < 8.0:
        raise ConfigError(f"target '{target.name}': options.sparsity needs sparse tensor cores (compute "
                          f"capability 8.0+), the device is {cc}")


def profiles_from_spec(spec: ModelSpec, opts: TensorRTOptions) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes per input: batch from the options, text lengths from the preprocessing, other
    dynamic axes from ``options.dims``."""
    if not opts.min_batch <= opts.opt_batch <= opts.max_batch:
        raise ConfigError(f"TensorRT options: need min_batch <= opt_batch <= max_batch, got "
                          f"{opts.min_batch}/{opts.opt_batch}/{opts.max_batch}")
    text_len = spec.preprocessing.max_length if spec.preprocessing.kind == "text" else None
    out = {}
    for inp in spec.inputs:
        if inp.baked:  # folded into the graph at export: not an engine input
            continue
        lo, opt, hi = [], [], []
        for ax, d in enumerate(inp.shape):
            if isinstance(d, int):
                trio = (d, d, d)
            elif ax == inp.batch_axis:
                trio = (opts.min_batch, opts.opt_batch, opts.max_batch)
            elif d in opts.dims:
                trio = tuple(opts.dims[d])
            elif text_len:
                trio = (1, text_len, text_len)
            else:
                raise ConfigError(f"input '{inp.name}' axis {ax} is dynamic ('{d}'): set options.dims.{d}: "
                                  f"[min, opt, max] in the target file")
            for lst, v in zip((lo, opt, hi), trio):
                lst.append(int(v))
        out[inp.name] = {"min": lo, "opt": opt, "max": hi}
    return out


# --- workstation side -------------------------------------------------------------------------------------

def _ort_outputs(path: Path, job: CompileJob) -> dict[str, np.ndarray]:
    """The ONNX at ``path`` in ONNX Runtime on ``job.eval`` (the onnxruntime backend's session and batching)."""
    from edgefm.backends import onnxruntime as ort_backend

    return ort_backend.eval_outputs(path, job, ort_backend.Options())


class TrtFallback:
    """Fallback hooks (edgefm.quantize.fallback) on the TensorRT Q/DQ graph: units are the quantized activations
    ranked by ONNX Runtime's QDQ debugger (per-channel SQNR); keeping one drops the Q/DQ in front of the layers
    reading it, which TensorRT then runs in fp16 (calibration is kept: layers only lose their Q/DQ)."""

    precision_kept = "fp16"

    def __init__(self, job: CompileJob, src: Path, artifact: Path):
        import onnx

        self.job, self.src, self.artifact = job, src, artifact
        self.qmodel, self.fp32 = onnx.load(str(artifact)), onnx.load(str(src))
        self.made: list[Path] = []

    def sensitivity(self, candidate):
        import onnx

        from edgefm.quantize import tensorrt as q
        from edgefm.quantize.fallback import Unit
        from edgefm.quantize.onnxruntime import sensitive_tensors

        model = onnx.load(str(candidate.path))
        units = []
        for t, sqnr, _ in sensitive_tensors(self.src, candidate.path, self.job.calib, self.job.spec.input_names):
            _, layers = q.leave_float(model, [t])  # the layers that read this tensor through a Q/DQ pair
            units.append(Unit(t, sqnr, layers))
        return units

    def build(self, keep):
        import onnx

        from edgefm.quantize import tensorrt as q
        from edgefm.quantize.fallback import Candidate

        trial, layers = q.leave_float(self.qmodel, [u.name for u in keep], self.fp32)
        path = self.artifact.with_name(f".fallback{len(self.made)}.onnx")
        self.made.append(path)
        onnx.save(trial, str(path))
        return Candidate(path, kept=layers)

    def run(self, candidate):
        return _ort_outputs(candidate.path, self.job)


def _int8_with_fallback(job: CompileJob, src: Path, artifact: Path, opts: TensorRTOptions, step: str,
                        notes: list[str]) -> tuple[dict, Any]:
    """Quantize and measure against fp32. Past the limit, and only when the user stated a bound
    (--max-accuracy-drop, as for every backend), the accuracy fallback (edgefm.quantize.fallback) leaves the
    layers reading the most damaged activations in fp16 until the contract holds or ``max_fallback_fraction``
    of the activations is used. Returns (metrics, fallback result or None)."""
    from edgefm.quantize import tensorrt as q
    from edgefm.quantize.fallback import Candidate, figures, run_fallback

    result = q.quantize_qdq(src, artifact, job.calib, job.spec.family, opts.quantization,
                            job.spec.input_names)
    notes += result.notes
    if result.qdq_pairs == 0:  # nothing to quantize (e.g. every op in an If subgraph): not an int8 artifact
        raise AccuracyError(step, "-", "int8_ops", 0, 1, hint=(
            "the Q/DQ pass found no Conv/MatMul/Gemm input it could quantize in the main graph (ops inside If/Loop "
            "subgraphs are not quantized), so an 'int8' engine would be the fp32 model; use --quantize fp16 for "
            "this target"))
    verdict = judge_job(job, _ort_outputs(artifact, job), "int8")
    if not verdict.ok and job.spec.family == "rnn":
        result, verdict = _rnn_matmul_only(job, src, artifact, opts, result, verdict, notes)
    allowed_fallback = fallback_allowed(job.config)
    if verdict.ok or not allowed_fallback or result.qdq_pairs == 0:
        enforce(step, verdict, hint=_hint(opts, job.config))
        return verdict.metrics, None
    hooks = TrtFallback(job, src, artifact)
    res = run_fallback(hooks, lambda got: judge_job(job, got, "int8"), Candidate(artifact),
                       max_share=opts.max_fallback_fraction, progress=job.progress)
    notes += res.notes()
    for p in hooks.made:
        if res.candidate is not None and p == res.candidate.path:
            p.replace(artifact)
        else:
            p.unlink(missing_ok=True)
    if res.ok:
        metrics = res.verdict.metrics
        metrics["_fallback"] = {"activations": sum(len(r.added) for r in res.rounds), "layers": len(res.kept),
                                "rounds": len(res.rounds), "first_try": verdict.metrics}
        return metrics, res
    enforce(step, verdict, hint=f"the fp16 fallback ({res.stopped}) did not reach it either "
                                f"({figures(res.verdict)}); {_hint(opts, job.config)}")
    return verdict.metrics, res  # pragma: no cover - enforce raised


def _rnn_matmul_only(job: CompileJob, src: Path, artifact: Path, opts: TensorRTOptions, result: Any, verdict: Any,
                     notes: list[str]) -> tuple[Any, Any]:
    """An RNN whose Conv+Gemm+MatMul Q/DQ misses the contract: the second recipe quantizes the Gemm/MatMul
    inputs only (a conv front end on audio, as in silero-vad's torch form, stays fp16). The build nearer the
    limits goes on (to the fp16 fallback if it still misses)."""
    from edgefm.quantize import tensorrt as q
    from edgefm.quantize.fallback import figures

    alt = artifact.with_name(".matmul-only.qdq.onnx")
    r2 = q.quantize_qdq(src, alt, job.calib, "rnn-matmul", opts.quantization, job.spec.input_names)
    if r2.qdq_pairs == 0:
        alt.unlink(missing_ok=True)
        return result, verdict
    v2 = judge_job(job, _ort_outputs(alt, job), "int8")
    better = v2.ok or v2.margin > verdict.margin
    notes.append(f"Conv+Gemm+MatMul int8 missed the contract ({figures(verdict)}); Gemm/MatMul inputs only: "
                 f"{'ok' if v2.ok else figures(v2)}" + (" - kept" if better else " - not better, dropped"))
    if not better:
        alt.unlink(missing_ok=True)
        return result, verdict
    alt.replace(artifact)
    return r2, v2


def _hint(opts: TensorRTOptions, config: Any) -> str:
    return int8_way_out(config, "layers (NODE)", "fp16") + (
        "; 2:4 sparsity without fine-tuning costs accuracy" if opts.sparsity else "")


def compile(job: CompileJob) -> CompileResult:  # noqa: A001 - the backend contract's name
    """Write the TensorRT-ready ONNX and build settings into ``job.out_dir`` (no engine: see ``compile_engine``)."""
    import onnx

    from edgefm.backends import tensorrt_rules as rules
    from edgefm.quantize import sparsity
    from edgefm.quantize import tensorrt as q

    t0 = time.time()
    target, spec, precision = job.target, job.spec, job.precision
    if precision not in ("int8", "fp16", "fp32"):
        raise ConfigError(f"target '{target.name}': precision '{precision}' is not built by edgefm for TensorRT "
                          f"(int8, fp16 or fp32)")
    opts = options_of(target)
    check_target(target, opts)
    trt_version = tensorrt_version(target)
    profiles = profiles_from_spec(spec, opts)
    if opts.quantization.keep_float == [] and job.config is not None and job.config.keep_fp32:
        opts.quantization.keep_float = list(job.config.keep_fp32)
    if opts.quantization.int8_weights is None:
        from edgefm.backends.tensorrt_ops import table_for

        opts.quantization.int8_weights = table_for(trt_version) != "8.5"
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    sparse_report = None
    fallback = None
    step = f"quantize ({target.name}, TensorRT Q/DQ int8)" if precision == "int8" else f"compile ({target.name})"
    with tempfile.TemporaryDirectory(prefix="edgefm-trt-") as tmp:
        src = Path(job.onnx_path)
        if opts.sparsity:
            model = onnx.load(str(src))
            sparse_report = sparsity.apply_2_4(model, opts.sparsity_min_channels)
            notes += [f"2:4 sparsity left {s['node']} dense: {s['reason']}" for s in sparse_report["skipped"]]
            src = Path(tmp) / "sparse.onnx"
            onnx.save(model, str(src))
        if precision == "int8":
            artifact = out / "model.qdq.onnx"
            metrics, fallback = _int8_with_fallback(job, src, artifact, opts, step, notes)
        else:
            # float targets build from the bundle's verified fp32 ONNX itself, unless sparsity changed it
            artifact = out / "model.onnx" if opts.sparsity else Path(job.onnx_path)
            if opts.sparsity:
                shutil.copyfile(src, artifact)
            verdict = judge_job(job, _ort_outputs(artifact, job))
            metrics = verdict.metrics
            if opts.sparsity:
                enforce(step, verdict, hint=_hint(opts, job.config))
            notes.append(f"{precision} numerics are TensorRT's own: they are measured on the device by "
                         f"`edgefm compile` against the fp32 reference")
        final = onnx.load(str(artifact))
        shapes = {k: tuple(np.shape(v)) for k, v in job.eval.head(len(job.eval)).items()}
        found = rules.check_model(final, trt_version, profiles, shapes)
        errors = [v for v in found if v.severity == "error"]
        if errors:
            shown = "; ".join(map(str, errors[:5])) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
            raise UnsupportedOpError(f"target '{target.name}' (TensorRT {trt_version}): {len(errors)} rule "
                                     f"violation(s) in {artifact.name}: {shown}")
        notes += [str(v) for v in found]
    build = _build_settings(job, opts, precision, profiles, final, sparse_report)
    (out / BUILD_FILE).write_text(json.dumps(build, indent=2))
    rel = lambda p: str(Path(p).resolve().relative_to(Path(job.bundle_dir).resolve()))  # noqa: E731
    entry = TargetEntry(
        backend="tensorrt", precision=precision, device="dla" if opts.dla_core is not None else "gpu",
        artifact=rel(artifact), files=[rel(artifact), rel(out / BUILD_FILE)],
        runtime_versions={k: v for k, v in versions().items() if k == "onnxruntime"},
        options={"onnx": rel(artifact), "build": rel(out / BUILD_FILE), "engine": None,
                 "executes": "onnxruntime: the Q/DQ ONNX on the CPU until `edgefm compile` builds the engine"},
        metrics=metrics, hardware={"target": dict(target.hardware)},
        kept_in_float=list(fallback.kept) if fallback is not None else [],
        fallback=fallback.record() if fallback is not None else None)
    stage = StageRecord(name="quantize" if precision == "int8" else "compile", target=target.name,
                        settings={"precision": precision, **{k: build[k] for k in ("quantization", "sparsity")}},
                        input_sha256=sha256_file(Path(job.onnx_path)), output_sha256=sha256_file(artifact),
                        seconds=round(time.time() - t0, 3), metrics=metrics, notes=notes)
    return CompileResult(entry=entry, stages=[stage])


def _build_settings(job: CompileJob, opts: TensorRTOptions, precision: str, profiles, model, sparse_report
                    ) -> dict[str, Any]:
    from edgefm.quantize import tensorrt as q

    keep32 = list(job.config.keep_fp32) if job.config is not None else []
    floats = q.float_layers(model)
    # a strongly typed network takes its precisions from the ONNX types alone: no INT8/FP16 flags
    flags = {"int8": precision == "int8" and not opts.strongly_typed,
             "fp16": (opts.fp16 or precision == "fp16") and not opts.strongly_typed,
             "sparse_weights": opts.sparsity, "strongly_typed": opts.strongly_typed}
    return {
        "format": BUILD_FORMAT,
        "precision": precision,
        "flags": flags,
        "workspace_mib": opts.workspace_mib,
        "dla": {"core": opts.dla_core, "gpu_fallback": opts.gpu_fallback},
        "builder_optimization_level": opts.builder_optimization_level,
        "timing_cache": opts.timing_cache,
        "profiles": profiles,
        "fp16_layers": [f for f in floats if f["name"] not in keep32 and f["op"] not in keep32]
        if flags["fp16"] else [],
        "fp32_layers": [f for f in floats if f["name"] in keep32 or f["op"] in keep32],
        "quantization": None if precision != "int8" else {
            "scheme": "int8 symmetric, zero-point 0; weights per output channel, activations per tensor",
            "weights": "int8 initializers" if opts.quantization.int8_weights else "float behind Q->DQ",
            "calibration": q.calibration_method(opts.quantization, job.spec.family),
            "qdq_pairs": q.count_qdq(model), "int8_layers": len(q.int8_layers(model))},
        "sparsity": sparse_report,
        "expects": {k: job.target.hardware.get(k) for k in ("gpu", "compute_capability", "tensorrt", "jetpack")},
    }


# --- loading ----------------------------------------------------------------------------------------------

def load(bundle: Path, target_name: str, entry: TargetEntry, spec: ModelSpec, opts: LoadOptions):
    """The engine where TensorRT runs and it matches this GPU/TensorRT (else ``DeviceMismatchError``); the
    target's ONNX in ONNX Runtime before an engine is built, where TensorRT is missing (a warning; an error
    with ``strict``) or with ``device='cpu'``."""
    bundle = Path(bundle)
    engine = entry.options.get("engine")
    if engine and opts.device != "cpu":
        if engine_available():
            from edgefm.backends import tensorrt_engine as te

            te.check_compatible(entry.hardware.get("engine", {}), te.device_info(), bundle / engine)
            build = json.loads((bundle / entry.options["build"]).read_text())
            return te.TrtPredictor(bundle / engine, spec, target_name, build)
        built = entry.hardware.get("engine", {})
        msg = (f"target '{target_name}' of {bundle} has a TensorRT engine (built for {built.get('gpu', '?')}, "
               f"TensorRT {built.get('tensorrt', '?')}), but TensorRT is not importable here")
        if opts.strict:
            raise BackendUnavailableError(msg + "; install it (JetPack: python3-libnvinfer) or load with "
                                                "device='cpu' to run the Q/DQ ONNX in ONNX Runtime")
        log.warning("%s: running the Q/DQ ONNX in ONNX Runtime on the CPU instead", msg)
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendUnavailableError(f"target '{target_name}': neither TensorRT nor onnxruntime is installed")
    from edgefm.backends import onnxruntime as ort_backend

    # the onnxruntime backend's Predictor over this target's ONNX (Q/DQ int8, or float for fp16/fp32)
    p = ort_backend.OrtPredictor(bundle / entry.options["onnx"], spec, target_name, ort_backend.Options(),
                                 opts.threads)
    p.backend, p.executes = "tensorrt", "onnxruntime"
    return p


def check_rules(bundle: Path, target_name: str, entry: TargetEntry, manifest) -> list[str]:
    """``edgefm verify`` hook: TensorRT rule violations of this target, one line each, by node (warnings are
    reported but do not fail). The rules are those of the TensorRT version the target was compiled for."""
    from edgefm.backends import tensorrt_rules as rules

    target = TargetSpec(name=target_name, backend="tensorrt", hardware=entry.hardware.get("target", {}))
    return [str(v) for v in rules.verify_bundle(bundle, target_name, target) if v.severity == "error"]


def check_rules_for(bundle: Path, built_for: str, other: TargetSpec) -> list[str]:
    """``edgefm verify --target OTHER`` hook: the bundle's TensorRT target ``built_for`` checked against the
    rules of another TensorRT target file (errors only, one line each)."""
    from edgefm.backends import tensorrt_rules as rules

    return [str(v) for v in rules.verify_bundle(bundle, other.name, other) if v.severity == "error"]


def compile_engine(bundle: Path, target: Optional[str] = None, **overrides):
    """Device side (``edgefm compile BUNDLE``): build the TensorRT engine(s); see ``tensorrt_engine``."""
    from edgefm.backends import tensorrt_engine as te

    return te.compile_engine(bundle, target, **overrides)
