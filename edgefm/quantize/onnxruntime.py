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
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from edgefm.backends.base import Samples
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
_DYNAMIC = Recipe("dynamic-s8-per-channel", "dynamic")
_DYNAMIC_PT = Recipe("dynamic-s8-per-tensor", "dynamic", per_channel=False)

RECIPES: dict[str, tuple[Recipe, ...]] = {
    "cnn": (_STATIC, _STATIC_PCT),
    "rnn": (_DYNAMIC, _STATIC),
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
        feed = {n: self.samples.inputs[n][self.i:self.i + 1] for n in self.names}
        self.i += 1
        return feed

    def rewind(self):
        self.i = 0


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

    for kwargs, label in (({}, "full"), ({"skip_symbolic_shape": True}, "without symbolic shape inference")):
        try:
            quant_pre_process(str(src), str(dst), **kwargs)
            return label
        except Exception:  # noqa: BLE001 - fall through to the next, weaker pre-processing
            log.debug("quant_pre_process (%s) failed", label, exc_info=True)
    shutil.copyfile(src, dst)
    return "skipped (failed)"


def quantize(onnx_path: Path, out: Path, recipe: Recipe, calib: Samples, input_names: Sequence[str],
             keep_fp32: Sequence[str] = ()) -> dict[str, Any]:
    """Quantize ``onnx_path`` into ``out`` with ``recipe``; returns the settings used."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry

    excluded_ops, excluded_nodes = split_keep_fp32(onnx_path, keep_fp32)
    default_ops = QDQRegistry if recipe.mode == "static" else IntegerOpsRegistry
    op_types = [o for o in (recipe.op_types or tuple(default_ops)) if o not in excluded_ops]
    settings: dict[str, Any] = {"recipe": recipe.name, "mode": recipe.mode, "per_channel": recipe.per_channel,
                                "op_types": op_types, "nodes_excluded": excluded_nodes}
    # ORT's calibrators print progress to stdout and warn through the root logger: keep them quiet.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
        if recipe.mode == "static":
            pre = Path(tmp) / "pre.onnx"
            settings["preprocess"] = _preprocess(onnx_path, pre)
            settings.update(activation_type="QUInt8", weight_type="QInt8",
                            calibrate_method=recipe.calibrate_method, calib_samples=len(calib))
            quantize_static(str(pre), str(out), _Reader(calib, input_names), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types, per_channel=recipe.per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded_nodes,
                            calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
                            extra_options=dict(recipe.extra_options))
        else:
            settings["weight_type"] = "QInt8"
            quantize_dynamic(str(onnx_path), str(out), op_types_to_quantize=op_types,
                             per_channel=recipe.per_channel, weight_type=QuantType.QInt8,
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

