"""int8 for ONNX Runtime: a few recipes per model family, tried on the real eval data; the fastest that
stays within the limits wins, and every candidate's figures are recorded.

Why these recipes (TOOLCHAIN.md): static QDQ (U8 activations, S8 per-channel weights) is what makes CNNs
faster; dynamic quantization of convolutions (ConvInteger) is ~13x slower, so CNNs never get it. Static
QDQ leaves ``LSTM`` in float and breaks MiniLM (cosine 0.38), so RNNs and Transformers get dynamic
quantization (``DynamicQuantizeLSTM``, ``MatMulInteger``) first."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgefm.samples import Samples
from edgefm.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """One way of quantizing with onnxruntime.quantization."""

    name: str
    mode: str  # "static" (QDQ, calibrated) or "dynamic"
    per_channel: bool = True
    calibrate_method: str = "MinMax"
    op_types: Optional[tuple[str, ...]] = None  # None: ORT's defaults for the mode
    extra_options: dict[str, Any] = field(default_factory=dict)


_STATIC = Recipe("static-qdq-u8s8-per-channel-minmax", "static")
_STATIC_PCT = Recipe("static-qdq-u8s8-per-channel-percentile", "static", calibrate_method="Percentile")
#: Compute-only recipes, the peers' way for recurrent models (TensorRT/ModelOpt int8; ORT's own
#: ``op_types_to_quantize``): Q/DQ on the inputs and weights of the compute-heavy ops only, their outputs and every
#: other op (an LSTM cell's gate and state arithmetic, Sqrt, Pad, Sigmoid...) left float, so a state carried from
#: call to call is never rounded onto an 8-bit grid. Measured on silero VAD (an LSTM cell as Gemm + gates, state
#: (2, batch, 128) carried between calls; 97 streamed calls): ORT's default static QDQ drifts the carried state by
#: 0.36 (limit 0.1); Conv+Gemm inputs only still 0.20 (the spectral front end's convolutions do the damage);
#: Gemm/MatMul inputs only 0.018, decisions = fp32 (the recipe TensorRT uses for RNNs, ``quantize.tensorrt``).
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
MATMUL_OPS = ("MatMul", "Gemm")
_STATIC_COMPUTE = Recipe("static-qdq-u8s8-per-channel-compute-only", "static", op_types=COMPUTE_OPS,
                         extra_options={"OpTypesToExcludeOutputQuantization": list(COMPUTE_OPS)})
_STATIC_MATMUL = Recipe("static-qdq-u8s8-per-channel-matmul-only", "static", op_types=MATMUL_OPS,
                        extra_options={"OpTypesToExcludeOutputQuantization": list(MATMUL_OPS)})
_DYNAMIC = Recipe("dynamic-s8-per-channel", "dynamic")
_DYNAMIC_PT = Recipe("dynamic-s8-per-tensor", "dynamic", per_channel=False)

RECIPES: dict[str, tuple[Recipe, ...]] = {
    "cnn": (_STATIC, _STATIC_PCT),
    "rnn": (_DYNAMIC, _STATIC, _STATIC_COMPUTE, _STATIC_MATMUL),
    "transformer": (_DYNAMIC, _DYNAMIC_PT),
    "other": (_STATIC, _DYNAMIC),
}


class _Reader:
    """CalibrationDataReader over Samples, one sample per call (ORT collects ranges sample by sample)."""

    def __init__(self, samples: Samples, input_names: Sequence[str]):
        self.samples, self.names, self.i = samples, list(input_names), 0

    def get_next(self):
        if self.i >= len(self.samples):
            return None
        one = self.samples.take(slice(self.i, self.i + 1)).inputs
        feed = {n: one[n] for n in self.names if n in one}
        self.i += 1
        return feed

    def rewind(self):
        self.i = 0

    def __iter__(self):  # ORT's QDQ debugger iterates instead of calling get_next
        self.rewind()
        return self

    def __next__(self):
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


def split_keep_fp32(onnx_path: Path, keep: Sequence[str]) -> tuple[set[str], list[str]]:
    """Split ``--keep-fp32`` entries into op types and node names present in the graph; unknown → ConfigError."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    nodes = {n.name for n in graph.node}
    op_types, node_names, unknown = set(), [], []
    for k in keep:
        if k in ops:
            op_types.add(k)
        elif k in nodes:
            node_names.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise ConfigError(f"--keep-fp32 {unknown}: neither an op type nor a node name of the model "
                          f"(op types here: {', '.join(sorted(ops))})")
    return op_types, node_names


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _preprocess(src: Path, dst: Path) -> str:
    """ORT's recommended pre-processing (shape inference + graph optimisation) before static quantization.
    Symbolic shape inference fails on some exports (TOOLCHAIN.md: dynamo MiniLM); then it is skipped."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    before = set(Path.cwd().glob("*.data"))
    for kwargs, label in (({}, "full"), ({"skip_symbolic_shape": True}, "without symbolic shape inference")):
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
            return label
        except Exception:  # noqa: BLE001 - fall through to the next, weaker pre-processing
            log.debug("quant_pre_process (%s) failed", label, exc_info=True)
        finally:
            _remove_stray_shape_files(before)
    shutil.copyfile(src, dst)
    return "skipped (failed)"


def _remove_stray_shape_files(before: set) -> None:
    """ORT's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` into the current folder when it cannot
    infer every shape, with its weights as external data under a UUID name (``<uuid>.data``, 12 MB for silero),
    and leaves both there: never leave them in the user's folder."""
    uuid_data = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.data$")
    stray = list(Path.cwd().glob("sym_shape_infer_temp.onnx*"))
    stray += [f for f in Path.cwd().glob("*.data") if f not in before and uuid_data.match(f.name)]
    for f in stray:
        try:
            f.unlink()
        except OSError:
            pass


def reduce_range(host=None) -> bool:
    """7-bit weights where this x86 CPU lacks int8 dot products (no AVX-512 VNNI / AVX-VNNI). ONNX Runtime's
    u8*s8 kernels then use VPMADDUBSW, which adds pairs of u8*s8 products into a saturating int16: with full
    8-bit weights the sums can clip (ONNX Runtime's quantization docs: use reduce_range or U8U8 on such CPUs).
    With VNNI (VPDPBUSD sums into int32) and on ARM there is no such saturation, so the full range is kept.
    The choice follows the machine that compiles and measures the bundle, which the manifest records."""
    from edgefm import hostcaps

    host = host or hostcaps.detect()
    return host.arch in ("x86_64", "amd64") and not host.has("vnni")


def quantize(onnx_path: Path, out: Path, recipe: Recipe, calib: Samples, input_names: Sequence[str],
             keep_fp32: Sequence[str] = (), fallback_nodes: Sequence[str] = ()) -> dict[str, Any]:
    """Quantize ``onnx_path`` into ``out`` with ``recipe``; returns the settings used. ``fallback_nodes`` are
    node names (of the pre-processed graph, see ``sensitive_nodes``) left in float by the accuracy fallback."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    excluded_ops, excluded_nodes = split_keep_fp32(onnx_path, keep_fp32)
    excluded_nodes = excluded_nodes + [n for n in fallback_nodes if n not in excluded_nodes]
    default_ops = QDQRegistry if recipe.mode == "static" else IntegerOpsRegistry
    op_types = [o for o in (recipe.op_types or tuple(default_ops)) if o not in excluded_ops]
    reduce = reduce_range()
    settings: dict[str, Any] = {"recipe": recipe.name, "mode": recipe.mode, "per_channel": recipe.per_channel,
                                "op_types": op_types, "nodes_excluded": excluded_nodes, "reduce_range": reduce}
    # ORT's calibrators print progress to stdout and warn through the root logger: keep them quiet.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        if recipe.mode == "static":
            pre = Path(tmp) / "pre.onnx"
            settings["preprocess"] = _preprocess(onnx_path, pre)
            settings.update(activation_type="QUInt8", weight_type="QInt8",
                            calibrate_method=recipe.calibrate_method, calib_samples=len(calib))
            quantize_static(str(pre), str(out), _Reader(calib, input_names), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=recipe.per_channel, reduce_range=reduce,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded_nodes,
                            calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
                            extra_options=dict(recipe.extra_options))
        else:
            settings["weight_type"] = "QInt8"
            quantize_dynamic(str(onnx_path), str(out), op_types_to_quantize=op_types,
                             per_channel=recipe.per_channel, reduce_range=reduce, weight_type=QuantType.QInt8,
                             nodes_to_exclude=excluded_nodes, extra_options=dict(recipe.extra_options))
    return settings


def to_fp16(onnx_path: Path, out: Path) -> dict[str, Any]:
    """fp16 weights and compute with float32 inputs/outputs kept (ORT's own float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    onnx.save(model, str(out))
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}


def quick_latency_ms(path: Path, feed: dict[str, np.ndarray], runs: int = 20, threads: int = 0) -> float:
    """Median latency of one call, after one warm-up: enough to rank recipes, not a benchmark."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)



def channel_sqnr(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], shape: Sequence[int] = ()) -> float:
    """The worst channel's SQNR in dB (channels: axis 1 of 4-D tensors, the last axis otherwise; dead
    channels ignored). ORT's default whole-tensor SQNR is blind to the classic int8 failures: a few outlier
    channels set the scale and carry most of the energy, so the tensor scores well while the other channels
    are crushed to a handful of levels — or, with percentile calibration, the outlier channels themselves
    are clipped. Either way one channel scores badly here."""
    r = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in ref])
    g = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in got])
    per_sample = int(np.prod(shape[1:])) if len(shape) >= 2 else 0
    if per_sample and r.size % per_sample == 0:  # ORT's debugger hands over flattened arrays
        r, g = (a.reshape(-1, *shape[1:]) for a in (r, g))
    if r.ndim >= 2:
        axis = 1 if r.ndim == 4 else -1
        r, g = (np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1) for a in (r, g))
    else:
        r, g = r.reshape(1, -1), g.reshape(1, -1)
    signal = (r ** 2).sum(1)
    noise = ((r - g) ** 2).sum(1)
    live = signal > 1e-6 * signal.max() if signal.size and signal.max() > 0 else np.zeros_like(signal, bool)
    if not live.any():
        return 100.0
    db = np.clip(10 * np.log10(signal[live] / (noise[live] + 1e-12)), -20.0, 100.0)
    # Ties on the worst channel (several tensors with a channel crushed to zero) go to the worse mean.
    return float(db.min() + 1e-3 * db.mean())


def sensitive_tensors(onnx_path: Path, qdq_path: Path, calib: Samples, input_names: Sequence[str],
                      samples: int = 16) -> list[tuple[str, float, list[str]]]:
    """Quantized activations ordered from most to least damaged, by ORT's own QDQ debugger: the per-channel
    signal-to-quantization-noise ratio (dB, ``channel_sqnr``) of each tensor before vs after its Q/DQ pair, on
    ``samples`` calibration samples. Each entry: (tensor, SQNR, nodes that produce or consume it). A tensor stays float only when
    all of those nodes are excluded (in QDQ form a producer quantizes its output, a consumer its input); the
    node names are those of the pre-processed graph that static quantization starts from."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, create_activation_matching,
                                                         modify_model_output_intermediate_tensors)

    few = calib.take(slice(0, samples))
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        pre, aug_f, aug_q = (Path(tmp) / n for n in ("pre.onnx", "f.onnx", "q.onnx"))
        _preprocess(onnx_path, pre)
        modify_model_output_intermediate_tensors(str(pre), str(aug_f))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
        float_acts = collect_activations(str(aug_f), _Reader(few, input_names))
        qdq_acts = collect_activations(str(aug_q), _Reader(few, input_names))
        matches = create_activation_matching(qdq_acts, float_acts)
        graph = onnx.load(str(pre)).graph
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    errors = {t: {"qdq_err": channel_sqnr(m["pre_qdq"], m["post_qdq"], shapes.get(t, ()))}
              for t, m in matches.items() if m.get("pre_qdq") and m.get("post_qdq")}
    touching: dict[str, list[str]] = {}
    for node in graph.node:
        for t in list(node.input) + list(node.output):
            if t in errors and node.name:
                touching.setdefault(t, []).append(node.name)
    ranked = [(t, float(e["qdq_err"]), touching.get(t, [])) for t, e in errors.items() if "qdq_err" in e]
    return sorted(ranked, key=lambda r: r[1])


def int8_ops(path: Path) -> dict[str, dict[str, int]]:
    """What a QDQ (or dynamically quantized) ONNX really runs in int8: {"int8": {op type: count}, "float": {...}}.
    An op counts as int8 when one of its inputs comes from a DequantizeLinear (QDQ) or it is an integer op
    (``MatMulInteger``, ``DynamicQuantizeLSTM``...); data-movement and Q/DQ ops themselves are not counted."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    from_dq = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    skip = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Constant", "Shape", "Reshape", "Squeeze",
            "Unsqueeze", "Gather", "Concat", "Slice", "Transpose", "Identity", "Cast", "Flatten"}
    out: dict[str, dict[str, int]] = {"int8": {}, "float": {}}
    for n in graph.node:
        if n.op_type in skip:
            continue
        integer = "Integer" in n.op_type or n.op_type.startswith(("QLinear", "DynamicQuantize"))
        kind = "int8" if integer or any(i in from_dq for i in n.input) else "float"
        out[kind][n.op_type] = out[kind].get(n.op_type, 0) + 1
    return {k: dict(sorted(v.items())) for k, v in out.items()}


def describe_int8(ops: dict[str, dict[str, int]]) -> str:
    """One line for the manifest, e.g. ``int8: Gemm x2; float: Conv x6, LSTM x1, ...``."""
    def part(d: dict[str, int]) -> str:
        return ", ".join(f"{k} x{v}" for k, v in d.items()) or "none"
    return f"int8: {part(ops['int8'])}; float: {part(ops['float'])}"
