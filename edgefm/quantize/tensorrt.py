"""TensorRT explicit quantization: the Q/DQ ONNX that TensorRT builds int8 engines from.

TensorRT's rules (developer guide, "explicit quantization"): int8 is symmetric (signed int8, zero-point 0),
weights per output channel, activations per tensor; Q/DQ go on the *inputs* of the layers that have int8
kernels (Conv, ConvTranspose, Gemm, MatMul) and on the residual input of an Add that TensorRT fuses into
the preceding convolution; everything without Q/DQ runs in fp16 (or fp32). We follow NVIDIA ModelOpt's ONNX
PTQ conventions (``modelopt.onnx.quantization.int8``): no output quantization, bias left in float, weights
kept in float behind a Q->DQ pair (TensorRT 8.x cannot import int8 initializers), LayerNorm / Softmax /
GELU / attention batched MatMuls / RNN cells left in float, GEMV-shaped MatMuls (N = 1) skipped.

The calibration itself is ONNX Runtime's ``quantize_static`` (QDQ format), called once here.
ModelOpt's own ONNX PTQ is not used: its ``[onnx]`` extra pins onnx 1.21 and pulls onnxruntime-gpu, which
would replace this environment's onnx/onnxruntime."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefm.errors import CalibrationError

log = logging.getLogger(__name__)

#: Layers with int8 kernels in TensorRT, per model family. RNN cells (LSTM/GRU) take no Q/DQ in TensorRT:
#: only the Conv/Gemm/MatMul around them are quantized (a conv front end, as in silero-vad, included), the cells
#: run in fp16.
FAMILY_OPS = {
    "cnn": ("Conv", "ConvTranspose", "Gemm", "MatMul"),
    "rnn": ("Conv", "ConvTranspose", "Gemm", "MatMul"),
    "rnn-matmul": ("Gemm", "MatMul"),  # the second RNN recipe: a conv front end stays fp16 too
    "transformer": ("Gemm", "MatMul"),
    "other": ("Conv", "ConvTranspose", "Gemm", "MatMul"),
}
#: Ops that only move or reshape data: TensorRT has no precision decision to make for them.
DATA_OPS = {"QuantizeLinear", "DequantizeLinear", "Shape", "Reshape", "Transpose", "Constant", "Gather",
            "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity", "Flatten", "Expand",
            "ConstantOfShape", "Range", "Split", "Dropout"}
#: Ops TensorRT fuses into the int8 layer before them (epilogues) or runs on its int8 output (pooling).
FUSED_EPILOGUES = {"Relu", "Clip", "LeakyRelu", "BatchNormalization", "MaxPool", "AveragePool",
                   "GlobalAveragePool", "GlobalMaxPool"}
#: ONNX Runtime's name suffix for a quantized initializer (onnxruntime.quantization.quant_utils)
QUANT_SUFFIX = "_quantized"
#: Per-channel axis of the weight, as TensorRT wants it (output channels).
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}
_CONV_LIKE = {"Conv", "BatchNormalization", "Relu"}


class TrtQuantConfig(BaseModel):
    """How the Q/DQ model is calibrated and where Q/DQ go (the target's ``options`` fill it)."""

    model_config = ConfigDict(extra="forbid")
    calibration: Literal["auto", "minmax", "percentile"] = Field(
        "auto", description="Activation range estimator; auto: percentile for transformers, else minmax "
                            "(ONNX Runtime's entropy calibration is not offered: quantize_static cannot set "
                            "its bin counts, and with the defaults it returns the minmax ranges)")
    percentile: float = Field(99.999, gt=90, le=100, description="Percentile for calibration='percentile'")
    quantize_attention: bool = Field(
        False, description="Also put Q/DQ on activation x activation MatMuls (attention scores/context)")
    keep_float: list[str] = Field(default_factory=list, description="Node names or op types left without Q/DQ")
    calib_batch: int = Field(16, ge=1, description="Samples per calibration run")
    int8_weights: Optional[bool] = Field(
        None, description="Store weights as int8 initializers behind DequantizeLinear (4x smaller file; "
                          "TensorRT >= 10) instead of float behind Q->DQ (TensorRT 8.x); None: by TensorRT version")


@dataclass
class QdqPlan:
    """Which nodes get Q/DQ on their inputs, and why the others of a quantizable type do not."""

    nodes: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=list)
    residual_adds: dict[str, int] = field(default_factory=dict)  # Add name -> index of the fused (conv) input
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class QdqResult:
    plan: QdqPlan
    qdq_pairs: int
    notes: list[str]


def _constants(model) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def _shapes(model) -> dict[str, list]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _producers(model) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def _from_conv(tensor: str, producers: dict, depth: int = 3) -> bool:
    """True when ``tensor`` comes from a Conv, possibly through BatchNormalization/Relu (TensorRT fuses those)."""
    node = producers.get(tensor)
    while node is not None and depth > 0:
        if node.op_type == "Conv":
            return True
        if node.op_type not in _CONV_LIKE:
            return False
        node, depth = producers.get(node.input[0]), depth - 1
    return False


def plan_qdq(model, family: str, cfg: TrtQuantConfig) -> QdqPlan:
    """Choose the nodes whose inputs get Q/DQ, following TensorRT's placement guidance."""
    ops = FAMILY_OPS.get(family, FAMILY_OPS["other"])
    consts, shapes, producers = _constants(model), _shapes(model), _producers(model)
    keep = set(cfg.keep_float)
    plan = QdqPlan()
    for node in model.graph.node:
        if node.op_type in ops or (family == "cnn" and node.op_type == "Add"):
            if node.name in keep or node.op_type in keep:
                plan.skipped.append({"node": node.name, "op": node.op_type, "reason": "kept in float by config"})
                continue
        if node.op_type in ("MatMul", "Gemm") and node.op_type in ops:
            weight = node.input[1]
            if weight not in consts:
                if not cfg.quantize_attention:
                    plan.skipped.append({"node": node.name, "op": node.op_type,
                                         "reason": "activation x activation MatMul (attention): left to fp16"})
                    continue
            else:
                wshape = shapes.get(weight) or []
                transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
                n_out = (wshape[0] if transposed else wshape[-1]) if wshape else None
                if n_out == 1:
                    plan.skipped.append({"node": node.name, "op": node.op_type,
                                         "reason": "GEMV (one output column): no tensor-core gain from int8"})
                    continue
            plan.nodes.append(node.name)
        elif node.op_type in ops:
            plan.nodes.append(node.name)
        elif family == "cnn" and node.op_type == "Add" and len(node.input) == 2 \
                and not any(i in consts for i in node.input):
            fused = [i for i, t in enumerate(node.input) if _from_conv(t, producers)]
            if fused:
                # TensorRT fuses this Add into the convolution that produces input `fused[0]`; the other
                # (residual) input is read in int8, so it alone gets Q/DQ.
                plan.nodes.append(node.name)
                plan.residual_adds[node.name] = fused[0]
    plan.op_types = sorted({n.op_type for n in model.graph.node if n.name in set(plan.nodes)})
    return plan


class _Reader:
    """ONNX Runtime CalibrationDataReader over dicts of arrays, ``batch`` samples at a time. With
    ``equal_batches`` a last, smaller batch is dropped: ONNX Runtime's histogram calibrators (percentile)
    stack the per-batch outputs with ``np.asarray`` and fail on batches of different sizes."""

    def __init__(self, feeds, batch: int, input_names: list[str], equal_batches: bool):
        # ``feeds``: a dict of arrays (samples on axis 0) or ``Samples`` (each input split on its own batch axis;
        # constants whole)
        n = len(feeds) if not isinstance(feeds, dict) else len(next(iter(feeds.values())))
        if equal_batches and n > batch:
            n -= n % batch
        self.samples = n
        if isinstance(feeds, dict):
            parts = [{k: feeds[k][s:s + batch] for k in input_names} for s in range(0, n, batch)]
        else:
            parts = [{k: v for k, v in feeds.take(slice(s, min(n, s + batch))).inputs.items() if k in input_names}
                     for s in range(0, n, batch)]
        self._batches = parts
        self._it: Iterator = iter(self._batches)

    def get_next(self) -> Optional[dict]:
        return next(self._it, None)

    # quantize_static's "CalibStridedMinMax" reads the data in ranges of batches, one collect_data call each.
    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._batches[start_index:end_index])


def _ort_options(cfg: TrtQuantConfig, op_types: list[str]) -> dict[str, Any]:
    int8_weights = bool(cfg.int8_weights)
    opts = {
        "ActivationSymmetric": True,     # zero-point 0: TensorRT's only int8 form
        "WeightSymmetric": True,
        "QuantizeBias": False,           # TensorRT has no int32 DequantizeLinear: bias stays float
        # float weight -> Q -> DQ is what TensorRT 8.x imports (it refuses int8 initializers); 10.x takes both
        "AddQDQPairToWeight": not int8_weights,
        "DedicatedQDQPair": False,
        "OpTypesToExcludeOutputQuantization": op_types,  # Q/DQ on inputs only (ModelOpt convention)
        "QDQOpTypePerChannelSupportToAxis": dict(WEIGHT_AXIS),
        "ForceQuantizeNoInputCheck": False,
    }
    opts["CalibPercentile"] = cfg.percentile
    return opts


def _float_inputs(model, node_inputs: dict[str, Optional[int]], originals: Optional[dict] = None) -> None:
    """Read float tensors instead of Q/DQ outputs: for each node name, the input at the given index, or all
    inputs (weights too) when the index is None. An int8 weight is replaced by its fp32 original from
    ``originals`` (initializers of the fp32 model), else by its dequantized copy. Unused Q/DQ are removed."""
    producers = _producers(model)
    inits = {i.name: i for i in model.graph.initializer}
    originals = originals or {}
    for node in model.graph.node:
        if node.name not in node_inputs:
            continue
        idx = node_inputs[node.name]
        for i in range(len(node.input)) if idx is None else [idx]:
            dq = producers.get(node.input[i])
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
            elif dq.input[0] in inits:  # an int8 weight
                orig = originals.get(dq.input[0].removesuffix(QUANT_SUFFIX))
                if orig is not None and orig.name not in inits:
                    inits[orig.name] = orig
                    model.graph.initializer.append(orig)
                node.input[i] = orig.name if orig is not None else _dequantized(model, dq, inits)
    _drop_dead_qdq(model)


def _dequantized(model, dq, inits) -> str:
    from onnx import numpy_helper

    name = dq.input[0] + "_float"
    if name not in inits:
        w = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        if scale.size > 1:  # per channel: broadcast along the DequantizeLinear axis
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % w.ndim
            scale = scale.reshape([-1 if d == axis else 1 for d in range(w.ndim)])
        inits[name] = numpy_helper.from_array(w * scale, name)  # zero-point is 0 (symmetric)
        model.graph.initializer.append(inits[name])
    return name


def _drop_dead_qdq(model) -> None:
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)]
        if not dead:
            # scales and zero-points of the removed pairs
            inputs = {i.name for i in model.graph.input}
            unused = [i for i in model.graph.initializer if i.name not in used and i.name not in inputs]
            for i in unused:
                model.graph.initializer.remove(i)
            return
        for n in dead:
            model.graph.node.remove(n)


def _layer_precisions(model) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    producers = _producers(model)
    int8: list[dict[str, str]] = []
    floats: list[dict[str, str]] = []
    names: set[str] = set()
    for n in model.graph.node:  # ONNX graphs are topologically sorted
        if n.op_type in DATA_OPS:
            continue
        srcs = [producers.get(i) for i in n.input]
        if any(p is not None and p.op_type == "DequantizeLinear" for p in srcs) or (
                n.op_type in FUSED_EPILOGUES and srcs and srcs[0] is not None and srcs[0].name in names):
            names.add(n.name)
            int8.append({"name": n.name, "op": n.op_type})
        else:
            floats.append({"name": n.name, "op": n.op_type})
    return int8, floats


def float_layers(model) -> list[dict[str, str]]:
    """Compute nodes of a Q/DQ model that TensorRT runs in fp16 (with the FP16 flag): those that read no
    dequantized input and are not an epilogue (activation, pooling) fused into an int8 layer."""
    return _layer_precisions(model)[1]


def int8_layers(model) -> list[dict[str, str]]:
    """Compute nodes reading int8 (dequantized) inputs, with the epilogues TensorRT fuses into them."""
    return _layer_precisions(model)[0]


def count_qdq(model) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")


def calibration_method(cfg: TrtQuantConfig, family: str) -> str:
    """'MinMax' or 'Percentile' (ONNX Runtime's CalibrationMethod names) for this family."""
    if cfg.calibration == "auto":
        return "Percentile" if family == "transformer" else "MinMax"
    return {"minmax": "MinMax", "percentile": "Percentile"}[cfg.calibration]


def quantize_qdq(fp32_onnx: Path, out_path: Path, calib: dict[str, np.ndarray], family: str,
                 cfg: TrtQuantConfig, input_names: list[str]) -> QdqResult:
    """Write the TensorRT-ready Q/DQ ONNX of ``fp32_onnx`` to ``out_path``, calibrated on ``calib``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if calib is None or len(calib) == 0 or (isinstance(calib, dict) and len(next(iter(calib.values()))) == 0):
        raise CalibrationError(f"TensorRT int8 calibration of {fp32_onnx}: no calibration samples were given")
    model = onnx.load(str(fp32_onnx))
    if any(not n.name for n in model.graph.node):  # placement and fallback address nodes by name
        for i, n in enumerate(model.graph.node):
            n.name = n.name or f"{n.op_type}_{i}"
    plan = plan_qdq(model, family, cfg)
    notes = [f"{len(plan.nodes)} nodes get int8 Q/DQ inputs ({', '.join(plan.op_types) or 'none'})"]
    notes += [f"{s['node']} ({s['op']}) left in float: {s['reason']}" for s in plan.skipped]
    if not plan.nodes:
        log.warning("%s: no node of a type TensorRT runs in int8 was found; the model stays float", fp32_onnx)
        onnx.save(model, str(out_path))
        return QdqResult(plan, 0, notes + ["nothing to quantize: engine runs in fp16"])
    method = calibration_method(cfg, family)
    with tempfile.TemporaryDirectory(prefix="edgefm-trtq-") as tmp:
        raw, named = Path(tmp) / "qdq.onnx", Path(tmp) / "named.onnx"
        onnx.save(model, str(named))
        reader = _Reader(calib, cfg.calib_batch, input_names, equal_batches=method != "MinMax")
        notes.append(f"calibrated on {reader.samples} samples ({method})")
        # One batch per collect_data call ("CalibStridedMinMax" = batches per call; ORT applies it to every
        # calibrator): the histogram calibrators otherwise keep every intermediate tensor of every batch until
        # the end (MiniLM, 224 samples: several GB) before building histograms; per call, the histograms are
        # extended batch by batch instead. Its progress print()s go nowhere.
        opts = {**_ort_options(cfg, sorted({n.op_type for n in model.graph.node})), "CalibStridedMinMax": 1}
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(named), str(raw), reader,
                                quant_format=QuantFormat.QDQ, op_types_to_quantize=plan.op_types,
                                nodes_to_quantize=plan.nodes, per_channel=True, activation_type=QuantType.QInt8,
                                weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method),
                                extra_options=opts)
        except (ValueError, KeyError) as e:  # ORT reports bad feeds this way
            raise CalibrationError(f"TensorRT int8 calibration of {fp32_onnx} failed: {e}") from None
        qmodel = onnx.load(str(raw))
    # ONNX Runtime shares one Q/DQ per tensor among all its readers, so a residual Add or a LayerNorm that
    # reads the same tensor as a quantized MatMul would read it quantized too: give those the float tensor.
    planned = set(plan.nodes)
    others = {n.name: None for n in qmodel.graph.node
              if n.name not in planned and n.op_type not in ("QuantizeLinear", "DequantizeLinear")}
    _float_inputs(qmodel, others | dict(plan.residual_adds))
    onnx.save(qmodel, str(out_path))
    return QdqResult(plan, count_qdq(qmodel), notes)


def leave_float(qdq_model, tensors: list[str], fp32_model=None):
    """A copy of ``qdq_model`` where the layers reading the Q/DQ of ``tensors`` run in float (weights too,
    from ``fp32_model`` when the Q/DQ model holds them in int8)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq_model)
    producers, wanted = _producers(model), set(tensors)
    nodes: dict[str, Optional[int]] = {}
    for node in model.graph.node:
        for i in node.input:
            dq = producers.get(i)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in wanted:
                nodes[node.name] = None
    originals = {i.name: i for i in fp32_model.graph.initializer} if fp32_model is not None else None
    _float_inputs(model, nodes, originals)
    return model, sorted(nodes)
