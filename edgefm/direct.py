"""The direct check: run a bundle target's artifact the way its user will — through the runtime's own public
API, one call after another, with no edgefm code around it — and judge what comes out by the recorded contract.

Per runtime, only what a user would write:

- ONNX Runtime (``onnxruntime`` targets, and the Q/DQ ONNX of ``tensorrt`` targets): ``InferenceSession`` with
  the recorded providers and graph optimization level, ``session.run``;
- OpenVINO: ``Core().read_model`` / ``compile_model`` with the recorded compile properties (performance hint,
  inference precision, streams, threads), one ``InferRequest`` reused for every call;
- LiteRT: ``ai_edge_litert.interpreter.Interpreter`` and its ``serving_default`` signature runner; float data
  are quantized / dequantized with each int8 tensor's own scale and zero point, as a user would. No
  ``reset_all_variables``: a user does not call it.

Samples go one call at a time (batch 1, or the artifact's fixed batch), in order, then again in REVERSE order.
Each sample's outputs must be identical between the two passes: a difference means the artifact carries
something from one call to the next (e.g. an LSTM state in variable tensors, an OpenVINO ReadValue/Assign
pair). The in-order outputs are then judged by the contract against the fp32 reference. Numpy only at import
time; each runtime is imported where it is used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

#: At most this many eval samples are run (twice): bounded cost, enough for the contract's shares.
MAX_SAMPLES = 128
SIGNATURE = "serving_default"


@dataclass
class DirectResult:
    """What the direct check found. ``ok`` is None when it was skipped (``detail`` says why)."""

    ok: Optional[bool]
    runtime: str = ""
    calls: int = 0
    samples: int = 0
    order_identical: Optional[bool] = None
    max_order_diff: float = 0.0
    verdict: Any = None  # edgefm.contract.Verdict of the in-order outputs
    detail: str = ""
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What goes into the manifest entry (``entry.direct``)."""
        from edgefm.contract import summarize

        rec: dict[str, Any] = {"runtime": self.runtime, "calls": self.calls, "samples": self.samples,
                               "order_identical": self.order_identical, "max_order_diff": self.max_order_diff,
                               "ok": self.ok, "detail": self.detail}
        if self.verdict is not None:
            rec["verdict"] = {"ok": self.verdict.ok, "summary": summarize(self.verdict.metrics),
                              "failures": list(self.verdict.failures)}
        if self.notes:
            rec["notes"] = list(self.notes)
        return rec


# --- one caller per runtime: returns a function feed(one call's arrays) -> {output name: array} -------------

def _ort_caller(path: Path, options: Mapping[str, Any]) -> tuple[Callable, Optional[int], str]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    level = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
             "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
             "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
             "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}.get(str(options.get("graph_optimization", "all")))
    if level is not None:
        so.graph_optimization_level = level
    available = set(ort.get_available_providers())
    providers = [p for p in options.get("providers") or ["CPUExecutionProvider"] if p in available] \
        or ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), so, providers=providers)
    names = [o.name for o in sess.get_outputs()]
    dim0 = sess.get_inputs()[0].shape[0] if sess.get_inputs()[0].shape else None
    batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None

    takes = {i.name for i in sess.get_inputs()}

    def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # only the inputs the graph has
        return dict(zip(names, sess.run(names, {k: v for k, v in feed.items() if k in takes})))
    return call, batch, f"onnxruntime {ort.__version__} InferenceSession ({providers[0]})"


def _openvino_caller(path: Path, options: Mapping[str, Any], device: str,
                     output_names: list[str]) -> tuple[Callable, Optional[int], str]:
    import openvino as ov

    core = ov.Core()
    dev = device.upper()
    if not any(d == dev or d.split(".")[0] == dev for d in core.available_devices):
        dev = "CPU"  # the target device is not here: the CPU plugin, as verify does
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": options.get("performance_hint") or "LATENCY"}
    if options.get("inference_precision"):
        cfg["INFERENCE_PRECISION_HINT"] = options["inference_precision"]
    if options.get("num_streams") is not None:
        cfg["NUM_STREAMS"] = str(options["num_streams"])
    if options.get("threads") and dev.startswith("CPU"):
        cfg["INFERENCE_NUM_THREADS"] = int(options["threads"])
    model = core.read_model(str(path))
    p0 = model.inputs[0].get_partial_shape()
    batch = p0[0].get_length() if p0.rank.is_static and len(p0) and p0[0].is_static else None
    compiled = core.compile_model(model, dev, cfg)
    request = compiled.create_infer_request()  # one request, reused call after call (as a user would)
    outs = compiled.outputs
    names = [o.get_any_name() for o in outs]
    if len(output_names) == len(outs) and not set(output_names) <= set(names):
        names = list(output_names)

    takes = {n for i in compiled.inputs for n in i.get_names()}

    def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request.infer({k: v for k, v in feed.items() if k in takes})
        return {n: request.get_output_tensor(i).data.copy() for i, n in enumerate(names)}
    return call, batch, f"openvino {ov.__version__.split('-')[0]} Core.compile_model on {dev} ({cfg})"


def _litert_caller(path: Path, options: Mapping[str, Any]) -> tuple[Callable, Optional[int], str]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=options.get("threads"))
    runner = interp.get_signature_runner(SIGNATURE)
    ins, outs = runner.get_input_details(), runner.get_output_details()
    batch = int(next(iter(ins.values()))["shape"][0])

    def to_model(name: str, arr: np.ndarray) -> np.ndarray:
        d = ins[name]
        dtype = np.dtype(d["dtype"])
        scale, zero = d["quantization"]
        if dtype.kind in "iu" and scale:  # the tensor's own quantization parameters
            info = np.iinfo(dtype)
            return np.clip(np.round(np.asarray(arr, np.float32) / scale) + zero, info.min, info.max).astype(dtype)
        return np.asarray(arr).astype(dtype, copy=False)

    def from_model(name: str, arr: np.ndarray) -> np.ndarray:
        scale, zero = outs[name]["quantization"]
        if arr.dtype.kind in "iu" and scale:
            return ((arr.astype(np.float32) - zero) * scale).astype(np.float32)
        return np.array(arr)

    def call(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = runner(**{k: to_model(k, v) for k, v in feed.items() if k in ins})
        return {k: from_model(k, np.asarray(v)) for k, v in got.items()}
    try:
        from importlib.metadata import version
        v = version("ai-edge-litert")
    except Exception:  # noqa: BLE001 - metadata missing
        v = "?"
    return call, batch, f"ai-edge-litert {v} Interpreter signature runner"


def caller(backend: str, bundle: Path, entry: Any, output_names: list[str]) -> tuple[Callable, Optional[int], str]:
    """(call, fixed batch or None, runtime description) for a manifest target entry."""
    bundle = Path(bundle)
    if backend == "onnxruntime":
        return _ort_caller(bundle / entry.artifact, entry.options)
    if backend == "tensorrt":  # the Q/DQ ONNX a user hands to TensorRT; here ONNX Runtime runs it on the CPU
        return _ort_caller(bundle / (entry.options.get("onnx") or entry.artifact), {})
    if backend == "openvino":
        return _openvino_caller(bundle / entry.artifact, entry.options, entry.device, output_names)
    if backend == "tflite":
        return _litert_caller(bundle / entry.artifact, entry.options)
    raise ValueError(f"no direct runner for backend {backend!r}")


# --- the calls ---------------------------------------------------------------------------------------------

def run_calls(call: Callable, inputs: Mapping[str, np.ndarray], order: np.ndarray,
              batch: Optional[int]) -> tuple[dict[str, np.ndarray], int]:
    """Feed the samples in ``order``, ``batch`` per call (1 when the artifact takes any batch; the last call
    padded by repeating its last sample); return each output in the original sample order, and the calls made."""
    b = batch or 1
    per: dict[str, list] = {}
    calls = 0
    for s in range(0, len(order), b):
        idx = order[s:s + b]
        pad = np.concatenate([idx, np.repeat(idx[-1:], b - len(idx))]) if len(idx) < b else idx
        out = call({k: np.ascontiguousarray(v[pad]) for k, v in inputs.items()})
        calls += 1
        for k, v in out.items():
            arr = per.setdefault(k, [None] * len(order))
            for j, i in enumerate(idx):
                arr[int(i)] = np.asarray(v)[j]
    return {k: np.stack(v) for k, v in per.items()}, calls


def compare_orders(call: Callable, inputs: Mapping[str, np.ndarray],
                   batch: Optional[int]) -> tuple[dict[str, np.ndarray], int, bool, float]:
    """Run in order then reversed: (in-order outputs, calls, identical per sample, largest difference)."""
    n = len(next(iter(inputs.values())))
    fwd, c1 = run_calls(call, inputs, np.arange(n), batch)
    rev, c2 = run_calls(call, inputs, np.arange(n)[::-1], batch)
    diff, same = 0.0, True
    for k, a in fwd.items():
        r = rev[k]
        if a.shape != r.shape or not np.array_equal(a, r, equal_nan=a.dtype.kind == "f"):
            same = False
            if a.shape == r.shape:
                d = np.abs(a.astype(np.float64) - r.astype(np.float64))
                diff = max(diff, float(np.nanmax(d)) if d.size else 0.0)
            else:
                diff = float("inf")
    return fwd, c1 + c2, same, diff


def check_target(bundle: Path, manifest: Any, name: str, max_samples: int = MAX_SAMPLES) -> DirectResult:
    """The direct check of target ``name`` of a written bundle, judged by its recorded contract."""
    from edgefm.bundle import read_eval
    from edgefm.contract import recorded

    inputs, ref, labels = read_eval(Path(bundle), manifest)
    return check_entry(bundle, manifest.targets[name], manifest.spec, inputs, ref, labels,
                       recorded(manifest, name)[0], max_samples)


def check_entry(bundle: Path, entry: Any, spec: Any, inputs: Mapping[str, np.ndarray],
                ref: Mapping[str, np.ndarray], labels: Any, contract: Any,
                max_samples: int = MAX_SAMPLES) -> DirectResult:
    """The direct check of one target ``entry`` (an ``edgefm.bundle.TargetEntry``; paths relative to
    ``bundle``, which may be the staging folder) on the first ``max_samples`` eval samples."""
    from edgefm.contract import judge, summarize

    if getattr(spec, "state", None):  # streaming models: state fed back call to call (not done here yet)
        return DirectResult(None, detail="skipped: a streaming model (declared state pairs) is not run directly yet")
    # a constant input (e.g. a sample rate) is fed whole on every call, or not at all when the graph holds it
    axes = spec.input_axes if hasattr(spec, "input_axes") else {}
    fixed = {i.name: np.asarray(inputs[i.name]) for i in getattr(spec, "inputs", [])
             if i.name in inputs and axes.get(i.name, 0) is None and not i.baked}
    inputs = {k: v for k, v in inputs.items() if axes.get(k, 0) is not None}
    n = min(len(next(iter(inputs.values()))), max_samples)
    inputs = {k: np.asarray(v)[:n] for k, v in inputs.items()}
    ref = {k: np.asarray(v)[:n] for k, v in ref.items()}
    labels = None if labels is None else np.asarray(labels)[:n]
    try:
        call, batch, runtime = caller(entry.backend, Path(bundle), entry, [o.name for o in spec.outputs])
        if fixed:
            call = (lambda run: lambda feed: run({**feed, **fixed}))(call)
        got, calls, same, diff = compare_orders(call, inputs, batch)
    except ImportError as e:
        return DirectResult(None, detail=f"skipped: the {entry.backend} runtime is not installed here ({e.name})")
    except Exception as e:  # noqa: BLE001 - the runtime refused the artifact: that is the finding
        why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return DirectResult(False, detail=f"the {entry.backend} runtime's own API failed on the artifact: {why}")
    res = DirectResult(True, runtime=runtime, calls=calls, samples=n, order_identical=same, max_order_diff=diff)
    res.verdict = judge(contract, ref, got, labels, inputs)
    res.notes = list(res.verdict.notes)
    if not same:
        res.ok = False
        res.detail = (f"{runtime}, {calls} calls in order and reversed: outputs DIFFER (largest difference "
                      f"{diff:.3g}): the artifact carries state from one call to the next, so a user's results "
                      f"depend on what ran before")
    elif not res.verdict.ok:
        res.ok = False
        res.detail = f"{runtime}, {calls} calls: refused by the contract: {'; '.join(res.verdict.failures)}"
    else:
        res.detail = f"{runtime}, {calls} calls in order and reversed: identical; {summarize(res.verdict.metrics)}"
    return res
