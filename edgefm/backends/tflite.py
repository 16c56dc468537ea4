"""TFLite / LiteRT backend: ARM boards (Raspberry Pi, i.MX 8, Jetson CPUs, phones) and x86 through XNNPACK.

Build: the torch model -> litert-torch -> fp32 ``.tflite`` -> AI Edge Quantizer (fp16, dynamic-range int8,
weight-only int8 or full-integer int8 with float or int8 I/O); see ``tflite_convert`` and
``edgefm.quantize.litert``. Every artifact is run in LiteRT on the eval data and checked against the fp32
ONNX reference. Run: the ai-edge-litert interpreter through its signature runner, so inputs and outputs
carry the ModelSpec's names and layouts (NCHW stays NCHW)."""

from __future__ import annotations

import json
import logging
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefm.backends import tflite_convert, tflite_lstm
from edgefm.backends.base import CompileJob, CompileResult, LoadOptions, fallback_allowed, int8_way_out, judge_job
from edgefm.bundle import StageRecord, TargetEntry, sha256_file
from edgefm.contract import enforce
from edgefm.errors import (AccuracyError, BackendUnavailableError, CalibrationError, ConfigError, ExportError,
                           UnsupportedOpError)
from edgefm.models.spec import ModelSpec
from edgefm.predictor import BasePredictor
from edgefm.targets import backend_options

EXTRA = "tflite"
CAPABILITIES = frozenset({"verify_emulated"})  # optional verbs (edgefm.backends.base.CAPABILITIES)
ARTIFACT = "model.tflite"
log = logging.getLogger(__name__)


class TFLiteOptions(BaseModel):
    """``options:`` of a tflite target."""

    model_config = ConfigDict(extra="forbid")
    int8: Literal["auto", "full", "dynamic", "weight_only", "matmul"] = Field(
        "auto", description="int8 scheme: full-integer, dynamic-range, weight-only, or matmul (static int8 on "
                            "FULLY_CONNECTED/BATCH_MATMUL only as dynamic-range kernels, every other op float); auto = dynamic for "
                            "transformers (full-integer attention loses too much), full otherwise, and for RNNs "
                            "matmul when full-integer misses the contract (unless --no-fallback)")
    io: Literal["float", "int8"] = Field(
        "float", description="Full-integer models: the model's own input/output type (the Predictor always "
                             "takes and returns floats)")
    weight_granularity: Literal["auto", "channel", "tensor"] = Field(
        "auto", description="int8 weight scales; auto = per-tensor for RNNs converted by litert-torch (it unrolls "
                            "them, and per-channel scales repeated on every step cost more than the weights), else "
                            "per-channel (onnx2tf keeps an RNN as one loop)")
    lstm: Literal["fused", "unrolled"] = Field(
        "fused", description="nn.LSTM as LiteRT's fused UNIDIRECTIONAL_SEQUENCE_LSTM op (one per layer; smallest "
                             "file; full int8 runs TFLite's integer LSTM kernel) or unrolled into builtin ops over "
                             "the time steps (as litert-torch converts it; XNNPACK runs them)")
    max_calib_samples: int = Field(128, ge=1, description="Calibration samples used for full-integer int8")
    converter_python: Optional[str] = Field(
        None, description="Python with litert-torch installed; default: the environment edgefm manages")
    pool: int = Field(4, ge=1, description="Interpreters a Predictor keeps for concurrent calls")


OPTIONS = TFLiteOptions  # a target's ``options:``, validated when compress plans (before any model is loaded)


def options(target) -> TFLiteOptions:
    """The target's validated options (``TargetError`` naming the target and the field)."""
    return backend_options(TFLiteOptions, target)


def is_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


def versions() -> dict[str, str]:
    from edgefm.backends.tflite_run import litert_version

    return {"ai-edge-litert": litert_version()}


def quant_mode(precision: str, opts: TFLiteOptions, family: str) -> Optional[str]:
    """The AI Edge Quantizer mode for a precision (None = keep fp32)."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return "fp16"
    if precision == "int8":
        if opts.int8 != "auto":
            return opts.int8
        return "dynamic" if family == "transformer" else "full"
    raise ConfigError(f"tflite targets support precision fp32, fp16 or int8, not '{precision}'")


# --- compile ---------------------------------------------------------------------------------------

def compile(job: CompileJob) -> CompileResult:  # noqa: A001 - the backend contract's name
    """Convert ``job.model`` to LiteRT, quantize as the precision asks, verify, write ``out_dir/model.tflite``.

    int8 of an RNN (``int8: auto``) tries recipes before the accuracy fallback, as the ONNX Runtime backend does:
    full-integer int8; when it misses the contract, int8 on the matrix products only (``int8: matmul``, the
    other backends' RNN recipe); when that misses too, full-integer int8 again with the accuracy fallback.
    ``--no-fallback`` keeps the first alone (it refuses rather than leave ops in float)."""
    opts = options(job.target)
    if not (job.precision == "int8" and opts.int8 == "auto" and job.spec.family == "rnn"
            and fallback_allowed(job.config)):
        return _compile(job)
    try:
        return _compile(job, allow_fallback=False)
    except AccuracyError as e:
        first = str(e).split(". ")[0]
    import dataclasses

    say = job.progress or (lambda msg: log.info(msg))
    say(f"{job.target.name}: full-integer int8 misses the contract; int8 on FULLY_CONNECTED/BATCH_MATMUL only")
    target = job.target.model_copy(update={"options": {**job.target.options, "int8": "matmul"}})
    try:
        res = _compile(dataclasses.replace(job, target=target), allow_fallback=False)
    except AccuracyError as e2:
        second = str(e2).split(". ")[0]
        say(f"{job.target.name}: int8 on the matrix products misses it too; full-integer int8 with the accuracy "
            f"fallback")
        try:
            res = _compile(job)
        except AccuracyError as e3:
            raise AccuracyError(e3.step, e3.output, e3.metric, e3.value, e3.limit, direction=e3.direction,
                                hint=f"{str(e3).split('. ', 1)[-1]} Also tried: int8 on FULLY_CONNECTED/BATCH_MATMUL "
                                     f"only (int8: matmul): {second}") from None
        note = (f"full-integer int8 ({first}) and int8 on the matrix products only ({second}) missed the contract; "
                f"full-integer int8 with the accuracy fallback holds it")
        res.stages[-1].notes.append(note)
        return res
    note = (f"full-integer int8 missed the contract ({first}); int8 on FULLY_CONNECTED/BATCH_MATMUL only "
            f"(dynamic-range: int8 per-channel weights, activations quantized per call, float outputs), every other "
            f"op float (int8: matmul)")
    res.stages[-1].notes.append(note)
    res.entry.notes.append(note)
    return res


def _compile(job: CompileJob, allow_fallback: bool = True) -> CompileResult:
    opts = options(job.target)
    mode = quant_mode(job.precision, opts, job.spec.family)
    gran = opts.weight_granularity
    if gran == "auto":
        # per-tensor for RNNs that litert-torch unrolls (per-channel scales would repeat on every step); onnx2tf
        # (ONNX sources) keeps an RNN as one WHILE loop whose weights appear once, so per-channel costs nothing
        # there, and per-tensor lost silero-vad's decisions (agreement 0.24 against 0.995 per-channel). The matmul
        # mode is per-channel too: per-tensor FC weights (4 gates on one scale) cost resemblyzer's 3-layer LSTM its
        # cosine (0.838 vs 0.986 per-channel; limit 0.98)
        gran = "tensor" if job.spec.family == "rnn" and job.model is not None and mode != "matmul" else "channel"
    say = job.progress or (lambda msg: log.info(msg))
    python = tflite_convert.converter_python(opts.converter_python, say) if (mode or job.model is not None) else None
    with tempfile.TemporaryDirectory(prefix="edgefm-tflite-") as tmp:
        work = Path(tmp)
        first = job.calib.first()
        example = {s.name: np.asarray(first[s.name]).astype(s.dtype) for s in job.spec.inputs if s.name in first}
        np.savez(work / "example.npz", **example)
        request: dict[str, Any] = {"program": str(work / "model.pt2"), "example": str(work / "example.npz"),
                                   "fp32_out": str(work / "fp32.tflite"), "out": str(work / "quant.tflite")}
        keep = list(getattr(job.config, "keep_fp32", None) or [])
        if mode:
            request["quantize"] = {"mode": mode, "granularity": gran, "io": opts.io}
            if keep and mode != "fp16":
                from edgefm.quantize.litert import keep_spec

                request["quantize"]["keep"] = keep_spec(job.onnx_path, keep)
        if mode == "full":
            save_calib(work / "calib.npz", job.calib, opts.max_calib_samples)
            request["calib"] = str(work / "calib.npz")
        tool = "litert-torch" if job.model is not None else "onnx2tf (from the ONNX export)"
        say(f"{job.target.name}: converting with {tool}" + (f", then {mode} quantization" if mode else ""))
        t0 = time.time()
        if job.model is not None:
            result, fallback = _convert(job, python, request, mode, work, example)
        else:
            result = _convert_onnx(job, python, request, mode, work, example, opts)
            fallback, mode = result.pop("fallback", None), result.get("mode", mode)
        export_s = max(0.0, time.time() - t0 - sum(result["seconds"].values()))
        fp32, final = work / "fp32.tflite", work / ("quant.tflite" if mode else "fp32.tflite")
        _check_builtin(final, job.target.name)
        stages = [_verify_stage(job, "convert", fp32, work / "model.pt2" if job.model is not None else job.onnx_path,
                                result,
                                export_s + result["seconds"].get("convert", 0.0), "fp32")]
        if result.get("fused_lstm"):
            stages[0].settings["fused_lstm_layers"] = result["fused_lstm"]
            stages[0].notes.append(f"{result['fused_lstm']} nn.LSTM module(s) as fused UNIDIRECTIONAL_SEQUENCE_LSTM ops")
        if result.get("lstm_state_reset"):
            stages[0].notes.append(f"{result['lstm_state_reset']} zeroing LSTM op(s) reset the LSTM state at the end of "
                                   "every call: each call starts from zero in any LiteRT interpreter")
        if fallback:
            stages[0].notes.append(fallback)
        accuracy_fallback = None
        if mode:
            precision = "fp16" if mode == "fp16" else "int8"
            flag = fallback_allowed(job.config) and allow_fallback
            hint = "" if mode == "fp16" else int8_way_out(job.config)
            if flag and mode != "fp16":
                hint = "" if _may_fall_back(job, mode, result) else (
                    "no accuracy fallback here: fused LSTM ops are quantized by TFLite's own calibrator, which "
                    "keeps no op in float; set the target option lstm: unrolled, or use --quantize fp16/fp32")
            try:
                stage = _verify_stage(job, "quantize", final, fp32, result, result["seconds"].get("quantize", 0.0),
                                      precision, hint)
            except AccuracyError:
                if not (flag and _may_fall_back(job, mode, result)):
                    raise
                accuracy_fallback = _fallback(job, python, request, work, final)
                stage = _verify_stage(job, "quantize", final, fp32, result, result["seconds"].get("quantize", 0.0),
                                      precision)
                stage.settings["fallback"] = accuracy_fallback.record()
                stage.notes += accuracy_fallback.notes()
            # Sizes live in settings: metrics hold only per-output figures and _accuracy (the CLI reads them so).
            stage.settings["fp32_bytes"] = fp32.stat().st_size
            stage.settings["size_ratio"] = round(final.stat().st_size / fp32.stat().st_size, 4)
            if keep and mode != "fp16":
                if result["quantize"].get("quantizer") == "litert-calibrator":
                    # TFLite's quantizer (fused LSTMs) takes no deny-list; say so rather than pretend.
                    stage.notes.append(f"keep_fp32 {keep} is not applied with fused LSTM ops: every op is int8")
                    log.warning("%s: %s", job.target.name, stage.notes[-1])
                else:
                    stage.notes.append(f"kept in float (keep_fp32 {keep}): {result['quantize'].get('kept_float')}")
            if precision == "int8":
                n8 = _int8_tensors(final)
                stage.settings["int8_tensors"] = n8
                if n8 == 0:  # nothing quantized (e.g. matmul mode on a model with no FULLY_CONNECTED)
                    raise AccuracyError(f"quantize ({job.target.name}, tflite)", "-", "int8_ops", 0, 1, hint=(
                        "the quantized .tflite holds no int8 tensor, so an 'int8' artifact would be the fp32 model "
                        "under another name; use --quantize fp32 for this target"))
            stages.append(stage)
        job.out_dir.mkdir(parents=True, exist_ok=True)  # only now: a failed compile leaves nothing behind
        shutil.copyfile(final, job.out_dir / ARTIFACT)
        if final.with_suffix(".io.json").is_file():
            shutil.copyfile(final.with_suffix(".io.json"), (job.out_dir / ARTIFACT).with_suffix(".io.json"))
    entry = _entry(job, mode, gran, opts, result, stages[-1].metrics)
    if accuracy_fallback is not None:
        entry.kept_in_float, entry.fallback = list(accuracy_fallback.kept), accuracy_fallback.record()
    return CompileResult(entry=entry, stages=stages)


def _int8_tensors(path: Path) -> int:
    """Tensors of a .tflite stored or computed in int8/uint8 (weights and activations)."""
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_tensor_details()
    return sum(1 for t in details if t["dtype"] in (np.int8, np.uint8))


def _may_fall_back(job: CompileJob, mode: str, result: dict) -> bool:
    """The accuracy fallback runs (unless --no-fallback) on AI Edge Quantizer's int8 modes (its per-op recipe
    keeps ops float; TFLite's quantizer for fused LSTMs takes no deny-list)."""
    return (fallback_allowed(job.config) and mode != "fp16"
            and result["quantize"].get("quantizer") == "ai-edge-quantizer")


class LiteRTFallback:
    """Fallback hooks (edgefm.quantize.fallback) for AI Edge Quantizer: units are the quantized tensors ranked by
    per-channel SQNR of the fp32 model's values against their int8 grid (``litert.sensitive_tensors``);
    keeping one puts the ops around it (named by their output tensor) under a NO_QUANTIZE recipe entry, and
    the converter worker quantizes the same fp32 ``.tflite`` again (no new conversion)."""

    precision_kept = "float"

    def __init__(self, job: CompileJob, python: Path, request: dict, work: Path):
        self.job, self.python, self.request, self.work = job, python, request, work
        self.fp32 = Path(request["fp32_out"])
        runner = _runner(self.fp32, 1)
        # one feed per call in each input's own layout (a state batched on axis 1, constants folded or whole)
        self.feeds = [{k: np.asarray(f[k]).astype(runner.inputs[k]["dtype"]).reshape(runner.inputs[k]["shape"])
                       for k in runner.inputs} for f in job.calib.take(slice(0, 16)).feeds()]
        self.made = 0

    def sensitivity(self, candidate):
        from edgefm.quantize.fallback import Unit
        from edgefm.quantize.litert import sensitive_tensors

        return [Unit(t, db, ops) for t, db, ops in sensitive_tensors(self.fp32, candidate.path, self.feeds)]

    def build(self, keep):
        from edgefm.quantize.fallback import Candidate
        from edgefm.quantize.litert import scope_regex

        nodes = list(dict.fromkeys(n for u in keep for n in u.nodes))
        q = dict(self.request["quantize"])
        base = q.get("keep") or {}
        q["keep"] = {**base, "scopes": [scope_regex(n) for n in nodes]}
        self.made += 1
        out = self.work / f"fallback{self.made}.tflite"
        sub = self.work / f"fallback{self.made}"
        sub.mkdir()
        tflite_convert.convert(self.python, {**self.request, "quantize": q, "out": str(out), "quantize_only": True},
                               sub)
        io = self.fp32.with_suffix(".io.json")  # outputs laid out as the fp32 model's (onnx2tf: a state as NWC)
        if io.is_file():
            shutil.copyfile(io, out.with_suffix(".io.json"))
        return Candidate(out, kept=nodes)

    def run(self, candidate):
        return run_samples(_runner(candidate.path, 1), self.job.eval)


def _fallback(job: CompileJob, python: Path, request: dict, work: Path, final: Path):
    """The shared accuracy fallback on the quantized ``final``; on success ``final`` is replaced by the passing
    candidate, else the plain int8 verdict is enforced with the fallback's figures in the hint."""
    from edgefm.quantize.fallback import Candidate, figures, run_fallback

    hooks = LiteRTFallback(job, python, request, work)
    res = run_fallback(hooks, lambda got: judge_job(job, got, "int8"), Candidate(final), progress=job.progress)
    if not res.ok:
        plain = judge_job(job, hooks.run(Candidate(final)), "int8")
        enforce(f"quantize ({job.target.name}, tflite)", plain,
                hint=f"the accuracy fallback kept {len(res.kept)} op(s) in float and gave up ({res.stopped}; last "
                     f"try: {figures(res.verdict)}); allow a bounded drop with --max-accuracy-drop, or use "
                     f"--quantize fp16/fp32")
    shutil.copyfile(res.candidate.path, final)
    return res


def save_calib(path: Path, calib, limit: int) -> None:
    """Calibration as one feed per call (batch 1, each input in its own layout; constants whole), stacked on a
    new leading axis: the converter side reads ``data[k][i]`` as call ``i`` (``tflite_convert._calib_feeds``)."""
    feeds = []
    for f in calib.feeds():
        feeds.append(f)
        if len(feeds) >= limit:
            break
    names = list(feeds[0]) if feeds else []
    np.savez(path, __per_call__=np.array(1), **{k: np.stack([np.asarray(f[k]) for f in feeds]) for k in names})


def _convert_onnx(job: CompileJob, python: Optional[Path], request: dict, mode: Optional[str], work: Path,
                  example: dict, opts: Optional[TFLiteOptions] = None) -> dict:
    """ONNX source: onnx2tf (its own isolated environment) converts the fp32 ONNX with the constant inputs
    folded in; AI Edge Quantizer (the litert environment) quantizes as for torch sources."""
    from edgefm.backends import onnx2tf_env, onnx2tf_prep

    say = job.progress or (lambda msg: log.info(msg))
    src = work / "source.onnx"
    folded = freeze_constants(job.onnx_path, src, job.spec)
    noop_axes = onnx2tf_prep.drop_noop_slices_file(src)  # see onnx2tf_prep: onnx2tf mislays them in NWC
    o2t = onnx2tf_env.ensure_env(say)
    shapes = {k: [int(d) for d in np.shape(v)] for k, v in example.items() if k not in folded}
    conv = onnx2tf_env.convert(o2t, src, work / "fp32.tflite", shapes, keep_layout=list(shapes))
    result: dict = {"versions": dict(conv["versions"]), "seconds": dict(conv["seconds"]), "converter": "onnx2tf",
                    "folded_constants": folded, "noop_slice_axes": noop_axes}
    feed = {k: v for k, v in example.items() if k not in folded}
    perm = output_layout(work / "fp32.tflite", src, feed)
    fix = onnx2tf_prep.transpose_back(src, perm)  # src is now the graph onnx2tf converted (it simplifies in place)
    if fix:
        # a state output laid out as NWC cannot be fed back as the state input in LiteRT's own API: convert again
        # with onnx2tf's own parameter replacement transposing those outputs back to the ONNX layout
        try:
            again = onnx2tf_env.convert(o2t, src, work / "fp32.tflite", shapes, keep_layout=list(shapes), replace=fix)
        except ExportError as e:
            log.warning("%s: converting with the outputs transposed back failed (%s)", job.target.name, e)
            conv = onnx2tf_env.convert(o2t, src, work / "fp32.tflite", shapes, keep_layout=list(shapes))
        else:
            result["seconds"]["convert"] = result["seconds"].get("convert", 0.0) + again["seconds"].get("convert", 0.0)
            left = output_layout(work / "fp32.tflite", src, feed)
            result["transposed_back"] = sorted(set(perm) - set(left))
            perm = left
    if perm:
        result["output_perm"] = perm
        for name in ("fp32", "quant"):  # the Runner reads <model>.io.json beside each model
            (work / f"{name}.io.json").write_text(json.dumps({"output_perm": perm}))
    if mode:
        req = {k: v for k, v in request.items() if k != "program"}
        try:
            q = tflite_convert.convert(python, req, work)
        except ExportError as e:
            # AI Edge Quantizer cannot calibrate some onnx2tf graphs (an RNN becomes a WHILE loop: "Tensor data is
            # null"); with int8: auto, dynamic-range int8 (no calibration) is the int8 that converts
            if mode != "full" or (opts is not None and opts.int8 != "auto"):
                raise
            req["quantize"] = {**req["quantize"], "mode": "dynamic"}
            req.pop("calib", None)
            q = tflite_convert.convert(python, req, work)
            # the accuracy fallback quantizes again from ``request``: with the mode that converts, not the failed one
            request["quantize"] = req["quantize"]
            request.pop("calib", None)
            result["mode"] = "dynamic"
            result["fallback"] = (f"full-integer int8 failed on the onnx2tf graph ({str(e).split(': ', 1)[-1][:160]}); "
                                  f"dynamic-range int8 instead (int8: auto)")
        result["versions"].update(q.get("versions", {}))
        result["seconds"].update(q.get("seconds", {}))
        result["quantize"] = q["quantize"]
    return result


def output_layout(tflite_path: Path, onnx_path: Path, feed: dict) -> dict[str, list[int]]:
    """Outputs the converter laid out differently from the ONNX model (onnx2tf writes a 3-D state as NWC):
    {name: axes} such that ``transpose(tflite_out, axes)`` equals the ONNX output on ``feed``. Found by running
    both; an output with no such axes is left for the check to refuse."""
    import itertools

    from edgefm.backends.tflite_run import Runner
    from edgefm.stages.export import onnx_outputs

    want = onnx_outputs(onnx_path, feed)
    got = Runner(str(tflite_path), 1).run_one(feed)
    perms: dict[str, list[int]] = {}
    for name, ref in want.items():
        out = got.get(name)
        if out is None or out.ndim != ref.ndim or out.ndim > 5:
            continue
        tol = 1e-3 * max(1.0, float(np.abs(ref).max()))
        if out.shape == ref.shape and float(np.abs(out - ref).max()) <= tol:
            continue  # laid out as the ONNX output (a square NCHW/NHWC pair is told apart by its values)
        best, err = None, np.inf
        for p in itertools.permutations(range(out.ndim)):
            cand = np.transpose(out, p)
            if cand.shape == ref.shape:
                e = float(np.abs(cand - ref).max())
                if e < err:
                    best, err = list(p), e
        if best is not None and best != list(range(out.ndim)) and err <= tol:
            perms[name] = best
    return perms


def freeze_constants(src: Path, dst: Path, spec: ModelSpec) -> list[str]:
    """Write ``src`` to ``dst`` with every constant input (``--input sr:scalar:int64=16000``) turned into a
    weight, so the converter can fold what depends on it (e.g. an ``If`` on the sample rate). Returns their names."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    names = {i.name for i in model.graph.input}
    folded = [i for i in spec.inputs if i.constant and i.name in names]
    for inp in folded:
        vi = next(v for v in model.graph.input if v.name == inp.name)
        model.graph.input.remove(vi)
        model.graph.initializer.append(numpy_helper.from_array(inp.constant_array(), inp.name))
    big = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit
    onnx.save_model(model, str(dst), save_as_external_data=big, location=dst.name + ".data")
    return [i.name for i in folded]


# Conversions already made in this process, so that two targets with the same conversion settings (say
# tflite-arm64 and rpi5, which differ only in threads and the CPU they describe) convert once per compress.
_DONE: "dict[tuple, tuple[Any, Path, dict, Optional[str]]]" = {}
_DONE_DIR: Optional[Path] = None


def _convert_key(job: CompileJob, python: Path, request: dict) -> tuple:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(job.calib.inputs):
        h.update(np.ascontiguousarray(job.calib.inputs[name]).tobytes())
    return (str(python), json.dumps(request.get("quantize"), sort_keys=True), bool(request.get("calib")),
            request.get("lstm_state", "reset"), h.hexdigest(),
            tuple(job.spec.input_names), tuple(job.spec.output_names), options(job.target).lstm)


def _convert(job: CompileJob, python: Path, request: dict, mode: Optional[str], work: Path,
             example: dict[str, np.ndarray]):
    """(converter result, fallback note): fp32.tflite, quant.tflite and model.pt2 end up in ``work``."""
    import atexit
    import weakref

    global _DONE_DIR
    key = _convert_key(job, python, request)
    hit = _DONE.get(key)
    if hit is not None and hit[0]() is job.model:
        for f in hit[1].iterdir():
            shutil.copyfile(f, work / f.name)
        (job.progress or log.info)(f"{job.target.name}: same conversion as an earlier target, reused")
        return dict(hit[2]), hit[3]
    result, fallback = None, None
    # LSTMs as LiteRT's fused op (see tflite_lstm) where the quantization mode can keep it: fp32 and
    # full-integer (TFLite's quantizer handles the op; AI Edge Quantizer's fp16/dynamic modes do not).
    want = options(job.target).lstm == "fused" and mode in (None, "full")
    fused_model, fused = tflite_lstm.fuse(job.model) if want else (job.model, 0)
    if fused:
        try:
            tflite_convert.export_program(fused_model, job.spec.input_names, job.spec.output_names, example,
                                          work / "model.pt2")
            result = tflite_convert.convert(python, {**request, "fused_lstm": True}, work)
        except (ExportError, UnsupportedOpError) as e:
            fallback = f"fused LSTM conversion failed ({str(e).splitlines()[0][:200]}); LSTMs unrolled instead"
            log.warning("%s: %s", job.target.name, fallback)
    if result is None:
        tflite_convert.export_program(job.model, job.spec.input_names, job.spec.output_names, example,
                                      work / "model.pt2")
        result = tflite_convert.convert(python, request, work)
    try:
        if _DONE_DIR is None:
            _DONE_DIR = Path(tempfile.mkdtemp(prefix="edgefm-tflite-done-"))
            atexit.register(shutil.rmtree, _DONE_DIR, True)
        keep = Path(tempfile.mkdtemp(dir=_DONE_DIR))
        for name in ("model.pt2", "fp32.tflite", "quant.tflite"):
            if (work / name).exists():
                shutil.copyfile(work / name, keep / name)
        for old in _DONE.values():  # keep only the latest: the targets of one compress come one after another
            shutil.rmtree(old[1], ignore_errors=True)
        _DONE.clear()
        _DONE[key] = (weakref.ref(job.model), keep, dict(result), fallback)
    except TypeError:  # a model that cannot be weakly referenced: no reuse
        pass
    return result, fallback


def run_samples(runner, samples) -> dict:
    """``samples`` through a LiteRT ``Runner``: plain samples batched on axis 0 by the runner; streams, and
    inputs batched on another axis, one sample per call (the artifact's fixed batch is 1) via ``Samples.run``."""
    if samples.streamed or any(a not in (0,) for a in samples.axes.values()):
        return samples.run(runner.run_one, 1)
    return runner.run(dict(samples.inputs))


def _verify_stage(job: CompileJob, name: str, model: Path, source: Path, result: dict, seconds: float,
                  precision: str, hint: str = "") -> StageRecord:
    runner = _runner(model, 1)  # one thread: the check is about values, and build machines are shared
    got = run_samples(runner, job.eval)
    for k, ref in job.reference.items():
        if k in got and np.shape(got[k]) != np.shape(ref):
            how = "onnx2tf" if result.get("converter") == "onnx2tf" else "litert-torch"
            raise UnsupportedOpError(
                f"{job.target.name}: the {how} conversion is wrong: output '{k}' comes out as {list(np.shape(got[k]))} "
                f"where the fp32 ONNX gives {list(np.shape(ref))} on the same eval data"
                + ("; start from the torch checkpoint so litert-torch converts it" if how == "onnx2tf" else ""))
    verdict = judge_job(job, got, precision)
    metrics = verdict.metrics
    enforce(f"{name} ({job.target.name}, tflite)", verdict, hint=hint)
    v = result["versions"]
    if name == "convert" and result.get("converter") == "onnx2tf":
        settings = {"converter": "onnx2tf", "converter_version": v.get("onnx2tf"), "tensorflow": v.get("tensorflow"),
                    "input_shapes": runner.input_shapes()}
        notes = ["converted from the ONNX file with onnx2tf (its own environment), inputs in the ONNX layout",
                 f"fixed batch {runner.batch}: the Predictor runs larger batches in chunks"]
        if result.get("folded_constants"):
            notes.append(f"constant inputs {result['folded_constants']} folded into the model (not fed)")
        if result.get("transposed_back"):
            notes.append(f"outputs {result['transposed_back']} transposed back to the ONNX layout inside the model "
                         f"(onnx2tf parameter replacement): a state output feeds back as the state input as it is")
        if result.get("noop_slice_axes"):
            notes.append(f"{result['noop_slice_axes']} full-range Slice axes removed before onnx2tf (no-ops; onnx2tf "
                         f"fuses them with a channel Slice and mislays its bounds when it moves the layout to NWC)")
    elif name == "convert":
        settings = {"converter": tflite_convert.CONVERTER, "converter_version": v.get("litert-torch"),
                    "torch": v.get("torch"), "input_shapes": runner.input_shapes()}
        notes = ["converted from the torch model with litert-torch (not from the ONNX file)",
                 f"fixed batch {runner.batch}: the Predictor runs larger batches in chunks"]
    else:
        tool = "ai-edge-litert" if result["quantize"].get("quantizer") == "litert-calibrator" else "ai-edge-quantizer"
        settings = {**result["quantize"], "quantizer_version": v.get(tool)}
        notes = []
    settings["output_bytes"] = model.stat().st_size
    return StageRecord(name=name, target=job.target.name, settings=settings, input_sha256=sha256_file(source),
                       output_sha256=sha256_file(model), seconds=round(seconds, 3), metrics=metrics, notes=notes)


def _check_builtin(model: Path, target: str) -> None:
    """LiteRT without TensorFlow cannot run Flex (TF Select) or custom ops: refuse them by name."""
    from edgefm.backends.tflite_run import model_ops

    try:
        ops = model_ops(str(model))
    except (RuntimeError, ValueError) as e:
        raise UnsupportedOpError(f"{target}: the converted model does not load in LiteRT: {str(e).splitlines()[0]}") from None
    bad = [o for o in ops if o["op"].startswith("Flex") or o["op"] == "CUSTOM"]
    if bad:
        raise UnsupportedOpError(f"{target}: op {bad[0]['op']} (node '{bad[0]['node']}') is not a LiteRT builtin "
                                 f"and cannot run without TensorFlow")


def _entry(job: CompileJob, mode, gran, opts: TFLiteOptions, result: dict, metrics: dict) -> TargetEntry:
    artifact = (job.out_dir / ARTIFACT).resolve().relative_to(Path(job.bundle_dir).resolve()).as_posix()
    runner = _runner(job.out_dir / ARTIFACT, 1)
    v = result["versions"]
    return TargetEntry(
        backend="tflite", precision=job.precision, device="cpu", artifact=artifact,
        files=[artifact] + ([str(Path(artifact).with_suffix(".io.json"))] if result.get("output_perm") else []),
        runtime_versions={"ai-edge-litert": versions()["ai-edge-litert"],
                          **({"onnx2tf": v.get("onnx2tf", "?")} if result.get("converter") == "onnx2tf"
                             else {"litert-torch": v.get("litert-torch", "?")}),
                          **({"ai-edge-quantizer": v.get("ai-edge-quantizer", "?")}
                             if mode and result["quantize"].get("quantizer") == "ai-edge-quantizer" else {})},
        options={"threads": job.target.threads,
                 "converter": (f"onnx2tf {v.get('onnx2tf', '?')}" if result.get("converter") == "onnx2tf"
                               else f"litert-torch {v.get('litert-torch', '?')}"),
                 "quantization": mode or "none",
                 "quantizer": result["quantize"].get("quantizer") if mode else None,
                 "fused_lstm_layers": result.get("fused_lstm", 0),
                 **({"lstm_state": "reset after every call (in the graph)"} if result.get("lstm_state_reset") else {}),
                 "weight_granularity": (result["quantize"].get("weight_granularity") or gran) if mode else None,
                 "io": opts.io if mode == "full" else "float", "input_shapes": runner.input_shapes(),
                 **({"int8_ops": list(result["quantize"].get("int8_ops"))}
                    if mode and result["quantize"].get("int8_ops") else {}),
                 **({"output_perm": result["output_perm"]} if result.get("output_perm") else {}),
                 "batch": runner.batch, "pool": opts.pool},
        metrics=metrics,
        hardware={"arch": job.target.arch, "cpu_core": job.target.cpu_core, **job.target.hardware})


def release() -> None:
    """The compress is done with LiteRT targets: stop the converter process (it holds torch, litert-torch and
    the last converted model: ~1 GB for MiniLM) and drop the reuse cache."""
    tflite_convert.close_workers()
    for old in _DONE.values():
        shutil.rmtree(old[1], ignore_errors=True)
    _DONE.clear()


# --- load / run --------------------------------------------------------------------------------------

def _runner(model: Path, threads: Optional[int]):
    from edgefm.backends.tflite_run import Runner

    return Runner(str(model), threads)


class TFLitePredictor(BasePredictor):
    """LiteRT Predictor. Interpreters are not thread-safe, so each call borrows one from a small pool
    (up to ``pool`` run at once; further callers wait)."""

    def __init__(self, model: Path, spec: ModelSpec, target: str, threads: Optional[int], pool: int = 4):
        super().__init__(spec, target, "tflite")
        self.model, self.threads, self._max = Path(model), threads, pool
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._made = 0
        self._lock = threading.Lock()
        first = _runner(self.model, threads)  # fail at load time, not on the first call
        self.input_shapes = first.input_shapes()
        self._idle.put(first)
        self._made = 1

    def _borrow(self):
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self._made < self._max
                self._made += grow
            return _runner(self.model, self.threads) if grow else self._idle.get()

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: v for k, v in feed.items() if k in self.input_shapes}  # constants folded in at conversion
        if any(i.batch_axis not in (0,) and i.name in feed for i in self.spec.inputs):
            # a batch on another axis (a state (layers, batch, hidden)): one sample per call via Samples
            from edgefm.backends.base import Samples

            runner = self._borrow()
            try:
                out = Samples.for_spec(self.spec, feed, streams=False).run(runner.run_one, 1)
            finally:
                self._idle.put(runner)
            return {name: out[name] for name in self.spec.output_names}
        for name, arr in feed.items():
            want = self.input_shapes[name][1:]
            if list(arr.shape[1:]) != want:
                raise CalibrationError(
                    f"{self.target} predictor: input '{name}' has shape {list(arr.shape)}, but this LiteRT model "
                    f"was compiled for [batch, {', '.join(map(str, want))}] (LiteRT shapes are static: pad or "
                    f"truncate to that size)")
        runner = self._borrow()
        try:
            out = runner.run(feed)
        finally:
            self._idle.put(runner)
        return {name: out[name] for name in self.spec.output_names}


def load(bundle: Path, target_name: str, entry: TargetEntry, spec: ModelSpec, opts: LoadOptions) -> TFLitePredictor:
    """A Predictor for the target's ``.tflite`` (XNNPACK on CPU)."""
    if opts.device not in (None, "cpu", entry.device):
        msg = f"tflite target '{target_name}': device '{opts.device}' is not available here; LiteRT runs on the CPU"
        if opts.strict:
            raise BackendUnavailableError(msg)
        log.warning("%s (using the CPU)", msg)
    threads = opts.threads or entry.options.get("threads")
    return TFLitePredictor(Path(bundle) / entry.artifact, spec, target_name, threads,
                           int(entry.options.get("pool", 4)))


def verify_emulated(bundle: Path, target: str, arch: str = "arm64", cpu: Optional[str] = None) -> tuple[bool, str]:
    """``edgefm verify --emulate``: (ok, one-line summary) of the target's ``.tflite`` run by the arm64 build of
    LiteRT under qemu against this machine's run (see ``edgefm.emulate``). Problems with the emulator itself
    (qemu missing, no mount namespace) come back as a failed check, so the other checks still show."""
    from edgefm.emulate import verify_emulated as run
    from edgefm.errors import EdgefmError

    try:
        report = run(bundle, target, arch=arch, cpu=cpu)
    except EdgefmError as e:
        return False, str(e)
    return report.ok, report.summary()
