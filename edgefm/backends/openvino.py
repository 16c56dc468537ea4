"""OpenVINO backend: Intel CPUs, GPUs and NPUs. The verified fp32 ONNX becomes an OpenVINO IR
(``model.xml`` + ``model.bin``), int8 through NNCF (``edgefm.quantize.nncf``), each step checked against
the fp32 reference; ``load`` compiles the IR on the asked device with a pool of infer requests.

Decisions (measured, see ``benchmarks/openvino_figures.py`` and the notes each stage records):
- IR from the verified ONNX (``ov.convert_model(model.onnx)``), not from torch (``CONVERT_CHOICE``).
- IR weights are written at a deliberate precision (``ov.save_model`` halves them to fp16 unless told not
  to): fp32 except for the fp16 precision.
- The execution precision is read back from the compiled model and recorded: on CPUs with bf16 (AMX,
  AVX512-BF16) OpenVINO runs "fp32" as bf16 unless INFERENCE_PRECISION_HINT is f32, and an asked-for f16
  becomes bf16 on CPUs without fp16 arithmetic."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefm.backends.base import (CompileJob, CompileResult, Feed, LoadOptions, Samples, contract_for, fallback_allowed,
                                  int8_slower_than_fp32, int8_way_out, judge_job)
from edgefm.backends.openvino_run import (OpenVINOPredictor, compile_model, core, execution_info, pick_device,
                                          runtime_config)
from edgefm.bundle import StageRecord, TargetEntry, sha256_file, sha256_path
from edgefm.contract import Verdict, enforce
from edgefm.errors import AccuracyError, BundleError, ConfigError, UnsupportedOpError
from edgefm.models.spec import ModelSpec
from edgefm.targets import TargetSpec, backend_options

EXTRA = "openvino"
CAPABILITIES = frozenset({"availability"})  # optional verbs (edgefm.backends.base.CAPABILITIES)
log = logging.getLogger(__name__)

#: Why the IR is built from the ONNX (benchmarks/results/openvino_convert.md, both paths in one run).
CONVERT_CHOICE = (
    "IR from the verified ONNX, not from torch: measured on MiniLM (batch 1, seq 128) and the digits CNN, both "
    "paths give the same f32 fidelity (max abs 3e-7 / 3e-6 vs torch) and the same speed within noise (MiniLM "
    "int8 32.2 vs 31.2 ms, f32 68.9 vs 68.4 ms; CNN int8 0.46 vs 0.45 ms), the torch path converts 4x slower "
    "(29 vs 7 s), needs the torch module, and would skip the artifact every other target was verified on")

#: edgefm precision -> INFERENCE_PRECISION_HINT when the target does not name one (int8: device default
#: for the parts left in float, recorded as it is read back).
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None}


class OpenVINOOptions(BaseModel):
    """``options:`` of an OpenVINO target (targets/openvino-*.yaml)."""

    model_config = ConfigDict(extra="forbid")
    performance_hint: Literal["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"] = Field(
        "LATENCY", description="OpenVINO PERFORMANCE_HINT: one request fast, or many requests in parallel")
    inference_precision: Optional[Literal["f32", "bf16", "f16"]] = Field(
        None, description="INFERENCE_PRECISION_HINT for float parts; None: f32 for fp32, bf16 for bf16, f16 for "
                          "fp16, the device default for int8 (bf16 on AMX/AVX512-BF16 CPUs)")
    num_streams: Optional[Union[int, Literal["AUTO"]]] = Field(None, description="NUM_STREAMS; None: from the hint")
    ir_weights: Optional[Literal["fp32", "fp16"]] = Field(
        None, description="Precision of float weights in the .bin (ov.save_model compress_to_fp16); None: fp16 for "
                          "the fp16 precision, fp32 otherwise")
    convert_from: Literal["onnx", "torch"] = Field(
        "onnx", description="Build the IR from the verified ONNX (default) or from the torch module")
    int8_mode: Literal["static", "weights"] = Field(
        "static", description="static: NNCF PTQ of weights and activations; weights: weight-only int8 "
                              "(nncf.compress_weights), activations float — for Transformers")
    preset: Optional[Literal["performance", "mixed"]] = Field(None, description="NNCF preset; None: NNCF default")
    nncf_device: Optional[Literal["ANY", "CPU", "GPU", "NPU", "CPU_SPR"]] = Field(
        None, description="NNCF target device; None: from the target's device")
    overflow_fix: Literal["enable", "first_layer_only", "disable"] = Field(
        "first_layer_only", description="NNCF overflow fix; 'enable' for CPUs without VNNI (AVX2 only)")
    subset_size: int = Field(300, ge=1, description="Calibration samples NNCF uses at most")
    fast_bias_correction: Optional[bool] = Field(
        None, description="None: NNCF's full bias correction for CNNs (digits CNN, 8 initialisations: top-1 drop max "
                          "0.00 vs 0.37 points with the fast one), the fast one otherwise (the full one broke MiniLM: "
                          "cosine 0.74 vs 0.997)")
    quantize_rnn: bool = Field(False, description="Quantize LSTM/GRU cells too (wrong on OpenVINO CPU, see "
                                                  "edgefm.quantize.nncf.RNN_TYPES)")
    dynamic_shapes: bool = Field(True, description="Compile once with dynamic batch; False compiles per input "
                                                   "shape (NPU)")
    compare_precisions: bool = Field(True, description="For int8, also measure the fp32 IR at f32 and bf16")
    max_fallback_fraction: float = Field(
        0.5, gt=0, le=1, description="With --max-accuracy-drop: share of the activation quantizers whose layers the "
                                     "accuracy fallback may keep in float")


OPTIONS = OpenVINOOptions  # a target's ``options:``, validated when compress plans (before any model is loaded)


def options_for(target: TargetSpec) -> OpenVINOOptions:
    """The target's validated options (``TargetError`` naming the target and the field)."""
    return backend_options(OpenVINOOptions, target)


def is_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def availability(target) -> str:
    """For ``edgefm targets``: the runtime, and whether OpenVINO sees the target's device here."""
    if not is_available():
        return "no"
    import openvino as ov

    devices = [d.split(".")[0] for d in ov.Core().available_devices]
    want = target.device.upper()
    return "yes" if want in devices else f"builds; no {want} here ({', '.join(devices) or 'none'})"


def versions() -> dict[str, str]:
    import openvino as ov

    out = {"openvino": ov.__version__.split("-")[0]}
    if importlib.util.find_spec("nncf") is not None:
        import nncf
        out["nncf"] = nncf.__version__
    return out


def _infer(compiled: Any, samples: Samples, names: list[str], batch: int = 64) -> Feed:
    req = compiled.create_infer_request()
    wanted = {n for p in compiled.inputs for n in p.get_names()}

    def run(feed: Feed) -> Feed:
        req.infer({k: v for k, v in feed.items() if k in wanted})
        return {n: req.get_output_tensor(i).data.copy() for i, n in enumerate(names)}

    return samples.run(run, batch)


def _latency_ms(compiled: Any, feed: Feed, runs: int = 20, budget_s: float = 2.0) -> float:
    """Median latency of one request (indicative only: compile machines are often shared)."""
    req = compiled.create_infer_request()
    for _ in range(3):
        req.infer(feed)
    times: list[float] = []
    end = time.perf_counter() + budget_s
    while len(times) < runs and (len(times) < 5 or time.perf_counter() < end):
        t = time.perf_counter()
        req.infer(feed)
        times.append(time.perf_counter() - t)
    return round(1000 * float(np.median(times)), 3)


# --- conversion ------------------------------------------------------------------------------------------

def convert(job: CompileJob, opts: OpenVINOOptions) -> Any:
    """The fp32 ``openvino.Model``: from the verified ONNX, or from ``job.model`` with ``convert_from: torch``."""
    import openvino as ov

    if opts.convert_from == "torch":
        return _convert_torch(job)
    try:
        model = ov.convert_model(str(job.onnx_path))
    except Exception as e:  # OpConversionFailure and friends name the op
        raise UnsupportedOpError(f"OpenVINO cannot convert {job.onnx_path}: {str(e).strip().splitlines()[0]}") from None
    _check_io(model, job.spec, str(job.onnx_path))
    return model


def _convert_torch(job: CompileJob) -> Any:
    import openvino as ov
    import torch

    if job.model is None:
        raise ConfigError(f"target '{job.target.name}': convert_from: torch needs the torch model, but the source "
                          f"was an ONNX file; use convert_from: onnx")
    types = {"float32": ov.Type.f32, "float16": ov.Type.f16, "int64": ov.Type.i64, "int32": ov.Type.i32,
             "int8": ov.Type.i8, "uint8": ov.Type.u8, "bool": ov.Type.boolean}
    inputs = [(s.name, ov.PartialShape([d if isinstance(d, int) else -1 for d in s.shape]), types[s.dtype])
              for s in job.spec.inputs]
    example = tuple(torch.from_numpy(np.array(v)) for v in job.calib.take(slice(0, 2)).inputs.values())
    with torch.no_grad():
        model = ov.convert_model(job.model.eval(), example_input=example, input=inputs)
    for out, name in zip(model.outputs, job.spec.output_names):
        out.get_tensor().set_names({name})
    _check_io(model, job.spec, "torch module")
    return model


def _check_io(model: Any, spec: ModelSpec, where: str) -> None:
    names = {n for i in model.inputs for n in i.get_names()}
    missing = [i.name for i in spec.inputs if i.name not in names and not i.baked]
    if missing or len(model.outputs) != len(spec.outputs or model.outputs):
        raise UnsupportedOpError(f"OpenVINO model from {where} has inputs {sorted(names)} and "
                                 f"{len(model.outputs)} outputs, but the spec expects inputs {spec.input_names} "
                                 f"and outputs {spec.output_names}")


# --- compile ---------------------------------------------------------------------------------------------

def _evaluate(job: CompileJob, compiled: Any, precision: Optional[str] = None) -> Verdict:
    names = job.spec.output_names or list(job.reference)
    got = _infer(compiled, job.eval, names)
    return judge_job(job, got, precision)


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    """A few figures for comparisons: mean cosine over outputs, and top-1 when labels exist."""
    outs = [m for k, m in metrics.items() if not k.startswith("_") and "cosine" in m]
    h = {"cosine": round(float(np.mean([m["cosine"] for m in outs])), 6)} if outs else {}
    if "_accuracy" in metrics:
        h["top1"] = metrics["_accuracy"]["top1"]
    return h


def compile(job: CompileJob) -> CompileResult:  # noqa: A001 - the backend contract's name
    """Build the target's IR into ``job.out_dir`` and verify it (see the module docstring)."""
    import openvino as ov

    opts = options_for(job.target)
    precision = job.precision
    if precision not in _HINTS:
        raise ConfigError(f"target '{job.target.name}': precision '{precision}' is not one of {sorted(_HINTS)}")
    say = job.progress or (lambda _m: None)
    records: list[StageRecord] = []
    onnx_sha = sha256_file(job.onnx_path)

    t0 = time.perf_counter()
    say(f"{job.target.name}: converting to OpenVINO IR from {opts.convert_from}")
    model = convert(job, opts)
    f32 = compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    conv_verdict = _evaluate(job, f32, "fp32")
    conv_metrics = conv_verdict.metrics
    records.append(StageRecord(
        name="convert", target=job.target.name, settings={"convert_from": opts.convert_from},
        input_sha256=onnx_sha, seconds=round(time.perf_counter() - t0, 3), metrics=conv_metrics,
        notes=[f"IR built from the {'verified fp32 ONNX' if opts.convert_from == 'onnx' else 'torch module'} "
               f"(ov.convert_model); checked at INFERENCE_PRECISION_HINT=f32 on CPU against the fp32 reference",
               CONVERT_CHOICE if opts.convert_from == "onnx" else "convert_from: torch asked by the target"]))
    enforce(f"openvino convert ({job.target.name})", conv_verdict,
            hint="the fp32 IR already differs from the fp32 ONNX; this is a conversion problem")

    if precision == "int8":
        from edgefm.quantize import nncf as nq

        model, qrecord = _quantize(job, opts, model, f32, conv_metrics, nq)
        records.append(qrecord)

    record, contract = _save_and_verify(job, opts, model, precision, f32, ov)
    records.append(record)
    entry = _entry(job, opts, precision, records[-1])
    quant = next((r for r in records if r.name == "quantize"), None)
    if quant is not None and quant.settings.get("recipe") == "matmul-only":  # most ops float on purpose: say so
        by_type = quant.metrics.get("_int8_layers", {}).get("by_type", {})
        what = ", ".join(f"{k} x{v}" for k, v in by_type.items()) or "nothing"
        entry.notes.append(f"int8: {what}; every other op float (RNN recipe: MatMul-only, min/max ranges)")
    slower = _int8_slower_than_f32(quant.metrics.get("_compare", {})) if quant is not None else None
    if slower:
        # never ship an int8 IR slower than the target's own f32 IR without saying so: in the stage notes, the
        # entry's notes (printed by the compress summary) and the progress log
        quant.notes.append(slower["note"])
        entry.notes.append(slower["note"])
        entry.metrics["_speed_vs_fp32"] = slower
        say(f"{job.target.name}: {slower['note']}")
    entry.contract = contract
    fb = next((r.settings.get("fallback") for r in records if r.name == "quantize"), None)
    if fb is not None:
        entry.fallback, entry.kept_in_float = fb, list(fb["kept_in_float"]) if fb["ok"] else []
    return CompileResult(entry=entry, stages=records)


def _int8_slower_than_f32(cmp: dict[str, Any]) -> Optional[dict[str, Any]]:
    """When the int8 IR measured slower than the f32 IR in the same run (``_compare_precisions``), the figures
    and one sentence for the user; None when it was faster or not measured. Without int8 dot products
    (AVX-512 VNNI / AVX-VNNI) OpenVINO's int8 kernels can lose to f32 (Zen 3: MiniLM 48.7 vs 47.7 ms)."""
    return int8_slower_than_fp32(cmp.get("int8", {}).get("latency_ms"), cmp.get("f32", {}).get("latency_ms"),
                                 "OpenVINO, the int8 and f32 IRs timed in one run")


def _settings(job: CompileJob, opts: OpenVINOOptions, nq: Any, model: Any) -> Any:
    keep = list(getattr(job.config, "keep_fp32", []) or [])
    names, types = nq.resolve_ignored(model, keep)
    if job.spec.family == "rnn" and not opts.quantize_rnn:
        present = {op.get_type_name() for op in model.get_ordered_ops()}
        types = sorted(set(types) | (set(nq.RNN_TYPES) & present))
    device = opts.nncf_device or {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}.get(job.target.device.lower(), "ANY")
    return nq.PTQSettings(
        model_type="transformer" if job.spec.family == "transformer" else None, preset=opts.preset,
        target_device=device, overflow_fix=opts.overflow_fix, subset_size=opts.subset_size,
        fast_bias_correction=(job.spec.family != "cnn") if opts.fast_bias_correction is None
        else opts.fast_bias_correction,
        ignored_names=names, ignored_types=types, verbose=bool(getattr(job.config, "verbose", False)))


def _quantize(job: CompileJob, opts: OpenVINOOptions, model: Any, f32: Any, f32_metrics: dict, nq: Any
              ) -> tuple[Any, StageRecord]:
    """int8 through NNCF; with ``max_accuracy_drop`` and a missed bound, the shared accuracy fallback."""
    t0 = time.perf_counter()
    s = _settings(job, opts, nq, model)
    step = f"openvino int8 ({job.target.name})"
    max_drop = getattr(job.config, "max_accuracy_drop", None)
    say = job.progress or (lambda _m: None)
    notes = []
    if s.ignored_types or s.ignored_names:
        notes.append(f"kept in float by recipe/--keep-fp32: types {s.ignored_types}, nodes {s.ignored_names}")
    if job.spec.family == "rnn" and not opts.quantize_rnn:
        notes.append("LSTM/GRU cells stay float: OpenVINO CPU's u8 RNN kernel shares one scale between input and "
                     "hidden state, which NNCF calibrates from the input alone (digits LSTM top-1 94.1 -> 51.4 %)")
    if opts.int8_mode == "weights":
        say(f"{job.target.name}: NNCF weight-only int8")
        qmodel = nq.compress_weights(model, s)
        settings: dict[str, Any] = {"mode": "weights", "weights": "int8_asym per-channel", "activations": "float"}
    else:
        say(f"{job.target.name}: NNCF post-training int8 ({min(len(job.calib), s.subset_size)} calibration samples)")
        try:
            qmodel = nq.quantize(model, job.calib, s)
        except IndexError as e:
            if s.target_device != "CPU_SPR":
                raise
            # NNCF 2.x's CPU_SPR pass indexes a missing producer on some Transformer graphs (all-MiniLM-L6-v2:
            # IndexError in _apply_spr_pass); its generic CPU recipe works and runs on the same hardware.
            notes.append(f"NNCF's CPU_SPR recipe failed on this model (IndexError: {e}); used its CPU recipe")
            log.warning("%s: %s", job.target.name, notes[-1])
            s = s.model_copy(update={"target_device": "CPU"})
            qmodel = nq.quantize(model, job.calib, s)
        settings = {"mode": "static", **s.model_dump(exclude={"ignored_names", "ignored_types", "verbose"}),
                    "calib_samples": min(len(job.calib), s.subset_size)}
    cfg = runtime_config({"inference_precision": opts.inference_precision}, "CPU")
    compiled = compile_model(qmodel, "CPU", cfg)
    verdict = _evaluate(job, compiled, "int8")
    if (opts.int8_mode == "static" and not verdict.ok and opts.preset is None and s.preset is None
            and s.model_type != "transformer"):  # NNCF's default for Transformers is 'mixed' already
        qmodel, compiled, verdict, s = _try_mixed(job, model, s, cfg, nq, (qmodel, compiled, verdict), notes, say)
        settings.update(preset=s.preset)
    allowed = fallback_allowed(job.config)
    tried = allowed and opts.int8_mode == "static" and not verdict.ok
    fallback = None
    if tried and job.spec.family == "rnn" and not opts.quantize_rnn:  # quantize_rnn: the user wants the cells int8
        qmodel, compiled, verdict = _matmul_only(job, model, qmodel, compiled, verdict, s, cfg, settings, notes, nq)
        tried = not verdict.ok
    if tried:
        qmodel, compiled, verdict, fallback = _fallback(job, opts, model, qmodel, s, cfg, settings, notes, nq)
    elif max_drop is not None and verdict.ok:
        notes.append(f"plain int8 meets --max-accuracy-drop {max_drop}: the accuracy fallback is not needed")
    metrics = verdict.metrics
    layers = nq.int8_layers(qmodel)
    metrics["_int8_layers"] = {"count": len(layers), "by_type": _count(layers.values())}
    if not layers:  # NNCF found nothing to quantize (e.g. everything behind an If): not an int8 artifact
        raise AccuracyError(step, "-", "int8_layers", 0, 1, hint=(
            "NNCF left no layer reading int8 data, so an 'int8' IR would be the f32 model under another name; use "
            "--quantize fp32 for this target"))
    notes.append("what runs in int8: " + (", ".join(f"{k} x{v}" for k, v in _count(layers.values()).items())
                                          or "nothing"))
    metrics["_execution"] = execution_info(compiled)
    if opts.compare_precisions:
        metrics["_compare"] = _compare_precisions(job, model, f32, f32_metrics, compiled, metrics)
    enforce(step, verdict, hint=_int8_hint(job.config, fallback))
    return qmodel, StageRecord(name="quantize", target=job.target.name, settings=settings,
                               seconds=round(time.perf_counter() - t0, 3), metrics=metrics, notes=notes)


def _try_mixed(job: CompileJob, model: Any, s: Any, cfg: dict, nq: Any, plain: tuple, notes: list[str], say: Any
               ) -> tuple[Any, Any, Verdict, Any]:
    """NNCF's default preset for CNNs quantizes activations symmetrically: a SiLU output ([-0.28, inf)) or an image
    in [0, 1] then uses half the int8 grid. When that misses the contract (and neither the target nor the recipe
    chose a preset), NNCF's 'mixed' preset (asymmetric activations, as ONNX Runtime's u8) is tried once, and the
    int8 model closer to the limits goes on (to the accuracy fallback if it still misses). Measured: nudenet 320n
    (YOLOv8n) performance precision 0.76 / recall 0.86 of fp32's detections, mixed 0.98 / 0.91."""
    qmodel, compiled, verdict = plain
    say(f"{job.target.name}: int8 misses the contract; trying NNCF's 'mixed' preset (asymmetric activations)")
    mixed = s.model_copy(update={"preset": "mixed"})
    q2 = nq.quantize(model, job.calib, mixed)
    c2 = compile_model(q2, "CPU", cfg)
    v2 = _evaluate(job, c2, "int8")
    better = v2.ok or v2.margin > verdict.margin
    missed, outcome = "; ".join(verdict.failures[:2]), "ok" if v2.ok else "; ".join(v2.failures[:2])
    notes.append(f"NNCF default preset (symmetric activations) missed the contract ({missed}); 'mixed' preset "
                 f"(asymmetric activations): {outcome}" + (" - kept" if better else " - not better, dropped"))
    return (q2, c2, v2, mixed) if better else (qmodel, compiled, verdict, s)


def _matmul_only(job: CompileJob, model: Any, plain: Any, compiled: Any, verdict: Verdict, s: Any, cfg: dict,
                 settings: dict, notes: list[str], nq: Any) -> tuple[Any, Any, Verdict]:
    """An RNN whose NNCF int8 misses the contract: the peers' RNN recipe, int8 on the MatMuls only with min/max
    activation ranges (``nncf.matmul_only``). Returns (model, compiled, verdict): the MatMul-only build when it
    holds the contract (``settings`` then describe it), else the plain one for the accuracy fallback."""
    from edgefm.quantize.fallback import figures

    if job.progress:
        job.progress(f"{job.target.name}: int8 misses the contract; NNCF int8 on the MatMuls only (RNN recipe)")
    mm = nq.matmul_only(s, model)
    qmm = nq.quantize(model, job.calib, mm)
    if not nq.int8_layers(qmm):  # no MatMul outside the RNN cells (an ONNX LSTM op): nothing would be int8
        notes.append("RNN recipe (int8 on MatMul inputs only) skipped: the model has no MatMul outside its RNN cells")
        return plain, compiled, verdict
    cmm = compile_model(qmm, "CPU", cfg)
    vmm = _evaluate(job, cmm, "int8")
    if not vmm.ok:
        notes.append(f"RNN recipe (int8 on MatMul inputs only, min/max ranges) also misses the contract: "
                     f"{figures(vmm)}")
        return plain, compiled, verdict
    notes.append(f"NNCF int8 of every quantizable op missed the contract ({figures(verdict)}); chose the RNN recipe: "
                 f"int8 on MatMul inputs and weights only, min/max activation ranges, every other op float")
    settings.update(recipe="matmul-only", activation_range="minmax", ignored_types=mm.ignored_types)
    return qmm, cmm, vmm


class OvFallback:
    """Fallback hooks (edgefm.quantize.fallback) for NNCF int8: units are the activation FakeQuantize ops ranked
    by per-channel SQNR (``nncf.sensitive_fake_quantizes``); keeping one puts the layers reading it into NNCF's
    ignored scope, so NNCF quantizes the model again without that quantizer (weights of those layers too)."""

    precision_kept = "float"

    def __init__(self, job: CompileJob, model: Any, s: Any, cfg: dict, nq: Any):
        self.job, self.model, self.s, self.cfg, self.nq = job, model, s, cfg, nq
        # NNCF's ignored scope takes names of the float model (it refuses others): readers NNCF created are dropped
        self.names = {op.get_friendly_name() for op in model.get_ordered_ops()}

    def sensitivity(self, candidate):
        from edgefm.quantize.fallback import Unit

        return [Unit(name, sqnr, [r for r in readers if r in self.names])
                for name, sqnr, readers in self.nq.sensitive_fake_quantizes(candidate.handle, self.job.calib)]

    def build(self, keep):
        from edgefm.quantize.fallback import Candidate

        nodes = list(dict.fromkeys(n for u in keep for n in u.nodes))
        s = self.s.model_copy(update={"ignored_names": sorted(set(self.s.ignored_names) | set(nodes))})
        return Candidate(None, self.nq.quantize(self.model, self.job.calib, s), kept=nodes)

    def run(self, candidate):
        candidate.compiled = compile_model(candidate.handle, "CPU", self.cfg)
        return _infer(candidate.compiled, self.job.eval, self.job.spec.output_names or list(self.job.reference))


def _fallback(job: CompileJob, opts: OpenVINOOptions, model: Any, plain: Any, s: Any, cfg: dict,
              settings: dict, notes: list[str], nq: Any) -> tuple[Any, Any, Verdict, Any]:
    """Plain int8 missed the contract and the user stated a bound: the shared accuracy fallback keeps the
    layers reading the most damaged quantizers in float (NNCF ignored scope) until it holds. Returns
    (model, compiled, verdict, fallback result); on failure the plain model, for the caller's error."""
    from edgefm.quantize.fallback import Candidate, run_fallback

    if job.progress:
        job.progress(f"{job.target.name}: plain int8 misses the bound; accuracy fallback (NNCF ignored scope)")
    hooks = OvFallback(job, model, s, cfg, nq)
    res = run_fallback(hooks, lambda got: judge_job(job, got, "int8"), Candidate(None, plain),
                       max_share=opts.max_fallback_fraction, progress=job.progress)
    notes += res.notes()
    settings["fallback"] = res.record()
    if not res.ok:
        compiled = compile_model(plain, "CPU", cfg)
        return plain, compiled, _evaluate(job, compiled, "int8"), res
    verdict = res.verdict
    verdict.metrics["_fallback"] = {"layers_kept_in_float": list(res.kept), "rounds": len(res.rounds)}
    return res.candidate.handle, res.candidate.compiled, verdict, res


def _int8_hint(config: Any, fallback: Any) -> str:
    way_out = int8_way_out(config, "layers (NODE/OPTYPE)", "fp32/bf16")
    if fallback is None:
        return way_out
    from edgefm.quantize.fallback import figures

    return (f"even after the accuracy fallback kept {len(fallback.kept)} layer(s) in float ({fallback.stopped}; "
            f"last try: {figures(fallback.verdict)}); {way_out}")


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _compare_precisions(job: CompileJob, model: Any, f32: Any, f32_metrics: dict, int8: Any, int8_metrics: dict
                        ) -> dict[str, Any]:
    """int8 next to the fp32 IR run at f32 and at bf16 (fidelity and batch-1 latency, same machine, same run)."""
    feed = job.eval.first()
    out = {"f32": {**_headline(f32_metrics), "latency_ms": _latency_ms(f32, feed)}}
    from edgefm.hostcaps import onednn_bf16_allowed

    caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps and onednn_bf16_allowed():
        bf16 = compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"})
        out["bf16"] = {**_headline(_evaluate(job, bf16, "bf16").metrics), "latency_ms": _latency_ms(bf16, feed)}
    else:
        out["bf16"] = {"note": "this CPU has no bf16 arithmetic"}
    out["int8"] = {**_headline(int8_metrics), "latency_ms": _latency_ms(int8, feed),
                   "float_parts": execution_info(int8)["inference_precision"]}
    out["machine"] = core().get_property("CPU", "FULL_DEVICE_NAME")
    return out


def _save_and_verify(job: CompileJob, opts: OpenVINOOptions, model: Any, precision: str, f32: Any,
                     ov: Any) -> tuple[StageRecord, Any]:
    """Write the IR and check the written files, compiled as ``load`` will compile them. Returns the record
    and the contract the artifact was held to (an fp32 IR that the CPU runs in bf16 is held to bf16's)."""
    t0 = time.perf_counter()
    ir_weights = opts.ir_weights or ("fp16" if precision == "fp16" else "fp32")
    job.out_dir.mkdir(parents=True, exist_ok=True)
    xml = job.out_dir / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=(ir_weights == "fp16"))
    hint = opts.inference_precision or _HINTS[precision]
    device = job.target.device.upper()
    present = any(d.split(".")[0] == device for d in core().available_devices)
    run_on = device if present else "CPU"
    options = _entry_options(job, opts, hint)
    compiled = compile_model(core().read_model(str(xml)), run_on, runtime_config(options, run_on))
    info = execution_info(compiled)
    judged_as = precision
    if precision == "fp32" and info["inference_precision"] not in (None, "f32"):
        judged_as = "bf16"
    contract = contract_for(job, judged_as)
    verdict = _evaluate(job, compiled, judged_as)
    metrics = verdict.metrics
    metrics["_execution"] = info
    notes = [f"IR float weights written as {ir_weights} (ov.save_model compress_to_fp16={ir_weights == 'fp16'})",
             f"verified on {run_on} ({core().get_property(run_on, 'FULL_DEVICE_NAME')}); asked inference precision "
             f"{hint or 'device default'}, the compiled model runs {info['inference_precision']} "
             f"(layers: {info['layer_precisions']})"]
    if not present:
        notes.append(f"target device {device} is not present on the build machine: verified on CPU instead")
    if hint and info["inference_precision"] and hint != info["inference_precision"]:
        notes.append(f"asked {hint}, but {run_on} runs {info['inference_precision']} (no {hint} arithmetic here)")
    if judged_as != precision:
        notes.append(f"the fp32 IR runs in {info['inference_precision']} on {run_on}: held to the bf16 contract")
    enforce(f"openvino compile ({job.target.name})", verdict)
    return StageRecord(name="compile", target=job.target.name,
                       settings={"device": device, "ir_weights": ir_weights, "inference_precision": hint,
                                 "performance_hint": opts.performance_hint},
                       input_sha256=None, output_sha256=sha256_path(job.out_dir),
                       seconds=round(time.perf_counter() - t0, 3), metrics=metrics, notes=notes), contract


def _entry_options(job: CompileJob, opts: OpenVINOOptions, hint: Optional[str]) -> dict[str, Any]:
    return {"performance_hint": opts.performance_hint, "inference_precision": hint,
            "num_streams": opts.num_streams, "threads": job.target.threads, "dynamic_shapes": opts.dynamic_shapes}


def _entry(job: CompileJob, opts: OpenVINOOptions, precision: str, record: StageRecord) -> TargetEntry:
    rel = job.out_dir.resolve().relative_to(job.bundle_dir.resolve())
    files = [str(rel / "model.xml"), str(rel / "model.bin")]
    hint = record.settings["inference_precision"]
    return TargetEntry(
        backend="openvino", precision=precision, device=job.target.device, artifact=files[0], files=files,
        runtime_versions=versions(), options=_entry_options(job, opts, hint),
        metrics={k: v for k, v in record.metrics.items()},
        hardware={"built_on": core().get_property("CPU", "FULL_DEVICE_NAME"),
                  "cpu_capabilities": list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
                  "execution": record.metrics.get("_execution", {})})


# --- load ------------------------------------------------------------------------------------------------

def load(bundle: Path, target_name: str, entry: TargetEntry, spec: ModelSpec, opts: LoadOptions) -> "OpenVINOPredictor":
    """Compile the bundle's IR on ``opts.device`` (or the target's device), falling back to CPU with a warning
    when that device is missing (``BackendUnavailableError`` with ``opts.strict``)."""
    xml = Path(bundle) / entry.artifact
    if not xml.is_file():
        raise BundleError(f"bundle {bundle}: OpenVINO IR '{entry.artifact}' is missing")
    device = pick_device(opts.device or entry.device, opts.strict)
    model = core().read_model(str(xml))
    cfg = runtime_config(entry.options, device, opts.threads)
    return OpenVINOPredictor(spec, target_name, model, device, cfg, entry.options.get("dynamic_shapes", True))


