"""LiteRT model quantization through Google's AI Edge Quantizer (``ai-edge-quantizer``), which works on a
float ``.tflite`` file: fp16 weights, dynamic-range int8, weight-only int8 and full-integer int8.

It runs inside the converter environment (``edgefm.backends.tflite_convert``), where litert-torch
installs it; nothing here is imported by ``import edgefm``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

Mode = Literal["fp16", "dynamic", "weight_only", "full", "matmul"]
MODES = ("fp16", "dynamic", "weight_only", "full", "matmul")
#: ``matmul``: int8 on the matrix products only, every other op float (an LSTM's gate and state arithmetic, a
#: spectral front end's convolutions and magnitude), as TensorRT and ONNX Runtime's ``op_types_to_quantize`` do for
#: recurrent models (edgefm.quantize.onnxruntime._STATIC_MATMUL). Dynamic-range (hybrid) kernels: int8 weights,
#: activations quantized per call, float outputs. A static int8 FULLY_CONNECTED must also write an int8 output,
#: which puts an LSTM's gate pre-activations on one 8-bit grid: on a streaming LSTM cell with one long-memory unit
#: (tests/models/streaming.py StreamCell) that drifted the carried state 0.139 (limit 0.1), the hybrid form 0.001.
MATMUL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")


#: ONNX op types (what ``--keep-fp32`` names for every backend) -> the LiteRT ops they become.
ONNX_TO_TFL = {
    "Conv": ["CONV_2D", "DEPTHWISE_CONV_2D"], "ConvTranspose": ["CONV_2D_TRANSPOSE"],
    "Gemm": ["FULLY_CONNECTED"], "MatMul": ["FULLY_CONNECTED", "BATCH_MATMUL"], "Softmax": ["SOFTMAX"],
    "Add": ["ADD"], "Sub": ["SUB"], "Mul": ["MUL"], "Div": ["DIV"], "AveragePool": ["AVERAGE_POOL_2D"],
    "GlobalAveragePool": ["MEAN", "AVERAGE_POOL_2D"], "ReduceMean": ["MEAN"], "MaxPool": ["MAX_POOL_2D"],
    "Concat": ["CONCATENATION"], "Gather": ["GATHER", "EMBEDDING_LOOKUP"], "Tanh": ["TANH"],
    "Sigmoid": ["LOGISTIC"], "HardSwish": ["HARD_SWISH"], "Relu": ["RELU"], "Pad": ["PAD", "PADV2"],
    "Resize": ["RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"], "Transpose": ["TRANSPOSE"], "Reshape": ["RESHAPE"],
}


def recipe(mode: Mode, granularity: str = "channel", io: str = "float", keep: Mapping[str, list] | None = None):
    """The AI Edge Quantizer recipe for one of ``MODES``.

    ``granularity`` (channel|tensor) applies to int8 weights; ``io`` (float|int8) to full-integer
    models: with ``float`` the model keeps float inputs/outputs and quantizes/dequantizes inside.
    ``keep``: ``{"ops": [LiteRT op names], "regex": [tensor-name patterns], "scopes": [op-scope patterns]}`` left
    in float (``--keep-fp32``; scopes come from the accuracy fallback);
    the quantizer puts QUANTIZE/DEQUANTIZE around them."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    ops = qtyping.TFLOperationName
    gran = qtyping.QuantGranularity.TENSORWISE if granularity == "tensor" else qtyping.QuantGranularity.CHANNELWISE
    rm = recipe_manager.RecipeManager()
    if mode == "fp16":
        rm.add_weight_only_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
    elif mode == "dynamic":
        rm.add_dynamic_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=8, granularity=gran)
    elif mode == "weight_only":
        rm.add_weight_only_config(regex=".*", operation_name=ops.ALL_SUPPORTED, num_bits=8, granularity=gran)
    elif mode == "matmul":
        for op in MATMUL_OPS:  # hybrid kernels: int8 weights, activations quantized per call, float outputs
            rm.add_dynamic_config(regex=".*", operation_name=ops(op), num_bits=8, granularity=gran)
    elif mode == "full":
        rm.add_static_config(regex=".*", operation_name=ops.ALL_SUPPORTED, activation_num_bits=8,
                             weight_num_bits=8, weight_granularity=gran)
        if io == "float":
            # The virtual INPUT/OUTPUT ops left unquantized make the quantizer add QUANTIZE/DEQUANTIZE
            # at the graph's edges, so the model takes and returns float32.
            for op in (ops.INPUT, ops.OUTPUT):
                rm.add_quantization_config(regex=".*", operation_name=op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    else:
        raise ValueError(f"unknown LiteRT quantization mode '{mode}'; valid: {', '.join(MODES)}")
    keep = keep or {}
    for op in keep.get("ops", []):  # later entries override earlier ones in the recipe
        rm.add_quantization_config(regex=".*", operation_name=ops(op), algorithm_key=AlgorithmName.NO_QUANTIZE)
    # "scopes": op-scope patterns from the accuracy fallback (``scope_regex``), matched the quantizer's way
    for pattern in list(keep.get("regex", [])) + list(keep.get("scopes", [])):
        rm.add_quantization_config(regex=pattern, operation_name=ops.ALL_SUPPORTED,
                                   algorithm_key=AlgorithmName.NO_QUANTIZE)
    return rm.get_quantization_recipe()


def quantize(src: Path, dst: Path, mode: Mode, calib: Iterable[Mapping[str, np.ndarray]] = (),
             granularity: str = "channel", io: str = "float", signature: str = "serving_default",
             keep: Mapping[str, list] | None = None) -> dict:
    """Quantize the float model ``src`` into ``dst``. ``calib`` yields feeds {input name: array with the
    model's batch} and is used only by ``full``. Returns the settings to record in the manifest."""
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # the quantizer draws progress bars on stderr
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(str(src), recipe(mode, granularity, io, keep))
    result = None
    n = 0
    if q.need_calibration:
        samples = [dict(s) for s in calib]
        n = len(samples)
        if not samples:
            raise ValueError("full-integer quantization needs calibration samples")
        result = q.calibrate({signature: samples}, num_threads=1)
    q.quantize(result, enable_progress_report=False).export_model(str(dst), overwrite=True)
    out = {"quantizer": "ai-edge-quantizer", "mode": mode, "weight_granularity": granularity,
           "io": io if mode == "full" else "float", "calibration_samples": n}
    if mode == "matmul":
        out["int8_ops"] = list(MATMUL_OPS)
    if keep:
        out["kept_float"] = {k: list(v) for k, v in keep.items() if v}
    return out


def keep_spec(onnx_path: Path, keep: Sequence[str]) -> dict[str, list[str]]:
    """``--keep-fp32`` entries (ONNX op types or node names, validated against the fp32 ONNX like every backend
    does) -> what the recipe leaves in float: LiteRT op names, and tensor-name patterns for nodes. litert-torch
    names tensors by module path (``Conv2d_features.3``), the ONNX exporter nodes by scope
    (``/features/features.3/Conv``): a node is found by its innermost module path."""
    import re

    from edgefm.errors import ConfigError
    from edgefm.quantize.onnxruntime import split_keep_fp32

    op_types, nodes = split_keep_fp32(Path(onnx_path), keep)
    out: dict[str, list[str]] = {"ops": [], "regex": []}
    for t in sorted(op_types):
        if t not in ONNX_TO_TFL:
            raise ConfigError(f"--keep-fp32 {t}: the tflite target cannot keep this op type in float "
                              f"(supported: {', '.join(sorted(ONNX_TO_TFL))})")
        out["ops"] += ONNX_TO_TFL[t]
    for n in nodes:
        path = module_path(n)
        if not path:
            raise ConfigError(f"--keep-fp32 {n}: this node has no module path to find it by in the LiteRT graph")
        # litert-torch writes each step as Class_attr: features.3 -> ".../Sequential_features/Conv2d_3;"
        steps = r"/[^/;]*_".join(re.escape(a) for a in path.split("."))
        out["regex"].append(rf"(.*/)?[^/;]*_{steps}(;|/|$).*")
    return out


def module_path(node: str) -> str:
    """The module path of an ONNX node named by the TorchScript exporter: "/features/features.3/Conv" ->
    "features.3", "/layer1/layer1.0/conv1/Conv" -> "layer1.0.conv1"."""
    path = ""
    for scope in [x for x in node.split("/") if x][:-1]:
        path = scope if not path or scope.startswith(path + ".") else f"{path}.{scope}"
    return path


def unmatched(model: Path, keep: Mapping[str, list] | None) -> list[str]:
    """The ``keep`` tensor-name patterns that match no tensor of the LiteRT model."""
    import re

    from ai_edge_litert.interpreter import Interpreter

    names = [t["name"] for t in Interpreter(model_path=str(model)).get_tensor_details()]
    return [p for p in (keep or {}).get("regex", []) if not any(re.fullmatch(p, n) for n in names)]


def scope_regex(node: str) -> str:
    """AI Edge Quantizer matches a recipe's ``regex`` (``re.search``) against an op's scope, its output tensor
    names each followed by ``;``: this pattern matches exactly the op whose output ``node`` is."""
    import re

    return rf"(^|;){re.escape(node)};"


def _fake_quant(x: np.ndarray, params: Mapping[str, Any], dtype: Any) -> np.ndarray:
    """``x`` quantized and dequantized with a LiteRT tensor's scales / zero points (per-channel along
    ``quantized_dimension`` when there are several)."""
    scales = np.asarray(params["scales"], np.float64)
    zeros = np.asarray(params["zero_points"], np.float64)
    if scales.size > 1:
        shape = [1] * x.ndim
        shape[int(params.get("quantized_dimension", 0))] = scales.size
        scales, zeros = scales.reshape(shape), zeros.reshape(shape)
    info = np.iinfo(dtype)
    q = np.clip(np.round(x / scales) + zeros, info.min, info.max)
    return (q - zeros) * scales


def sensitive_tensors(fp32: Path, quant: Path, feeds: Sequence[Mapping[str, np.ndarray]]
                      ) -> list[tuple[str, float, list[str]]]:
    """Quantized tensors of the LiteRT model ``quant`` ordered from most to least damaged, measured the way
    ONNX Runtime's QDQ debugger does on its graph: each tensor's fp32 values (the fp32 model run with
    ``experimental_preserve_all_tensors`` on ``feeds``) against the same values quantized with ``quant``'s
    scale and zero point, as per-channel SQNR in dB (channels = last axis: NHWC activations, the input
    channels of a weight). Each entry: (tensor, SQNR, ops around it by output tensor name: the producer and
    the consumers of an activation, the op reading a weight; keeping them unquantized keeps the tensor float)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgefm.quantize.onnxruntime import channel_sqnr

    import warnings

    with warnings.catch_warnings():  # "intended for debugging": it is, and the model is small enough to keep
        warnings.simplefilter("ignore", UserWarning)
        f = Interpreter(model_path=str(fp32), experimental_preserve_all_tensors=True)
    runner = f.get_signature_runner()
    details = {t["index"]: t for t in f.get_tensor_details()}
    by_name = {t["name"]: t for t in details.values() if t["name"] and np.dtype(t["dtype"]) == np.float32}
    qdet = {t["name"]: t for t in Interpreter(model_path=str(quant)).get_tensor_details()}
    wanted = {}
    for name, qt in qdet.items():
        params, ft = qt.get("quantization_parameters") or {}, by_name.get(name)
        if (ft is not None and np.dtype(qt["dtype"]).kind in "iu" and len(params.get("scales", [])) > 0
                and list(ft["shape"]) == list(qt["shape"]) and len(ft["shape"]) >= 1):
            wanted[ft["index"]] = (name, params, np.dtype(qt["dtype"]))
    values: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
    for feed in feeds:
        runner(**feed)
        for i in values:
            values[i].append(np.array(f.get_tensor(i), np.float64))
    ops = f._get_ops_details()  # the only listing of ops LiteRT exposes in Python
    names = {i: t["name"] for i, t in details.items()}
    scope = [names.get(int(d["outputs"][0]), "") if len(d["outputs"]) else "" for d in ops]
    ranked = []
    for i, (name, params, dtype) in wanted.items():
        ref = np.stack(values[i]) if values[i] else np.empty(0)
        if ref.size == 0:
            continue
        got = _fake_quant(ref, params, dtype) if len(params["scales"]) == 1 else \
            np.stack([_fake_quant(v, params, dtype) for v in values[i]])
        c = ref.shape[-1]
        db = channel_sqnr([ref.reshape(-1, c)], [got.reshape(-1, c)], (1, c))
        around = [scope[k] for k, d in enumerate(ops) if i in set(int(x) for x in d["outputs"])
                  or i in set(int(x) for x in d["inputs"])]
        ranked.append((name, db, [s for s in dict.fromkeys(around) if s]))
    return sorted(ranked, key=lambda r: r[1])
