"""The NNCF adapter: int8 for OpenVINO models (``openvino.Model``) through NNCF, Intel's own compression
library. Everything edgefm asks of NNCF goes through here:

- ``quantize``: post-training static int8 (weights and activations), with the model type, preset, target
  device and ignored scope that ``PTQSettings`` names;
- ``sensitive_fake_quantizes``: the activation quantizers of an int8 model ranked by the damage they do
  (the OpenVINO hook of the shared accuracy fallback, ``edgefm.quantize.fallback``, which then keeps the
  layers reading the worst in NNCF's ignored scope);
- ``compress_weights``: weight-only int8 (activations stay float), an option for Transformers;
- ``int8_layers``: which operations of a model compute from int8 inputs, so the manifest can list what was
  quantized and what the fallback kept in float.

Imports nncf and openvino inside the functions only (``import edgefm`` stays light)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefm.errors import CalibrationError, ConfigError
from edgefm.samples import Samples

log = logging.getLogger(__name__)

#: ONNX op types (what a user of ``--keep-fp32`` knows) and the OpenVINO op types they become.
ONNX_TO_OV_TYPES = {
    "Conv": ["Convolution", "GroupConvolution"], "ConvTranspose": ["ConvolutionBackpropData"],
    "Gemm": ["MatMul"], "MatMul": ["MatMul"], "LSTM": ["LSTMSequence", "LSTMCell"],
    "GRU": ["GRUSequence", "GRUCell"], "RNN": ["RNNSequence", "RNNCell"], "Mul": ["Multiply"],
    "Add": ["Add"], "Sub": ["Subtract"], "Div": ["Divide"], "Gather": ["Gather"],
}
#: Recurrent cells: OpenVINO's CPU plugin runs a quantized LSTMSequence as one u8 oneDNN RNN whose input
#: and hidden state share one scale, but NNCF calibrates that scale from the layer input alone (e.g. [0, 1]),
#: so negative hidden states clip: digits LSTM top-1 94.1 % -> 51.4 %. They stay float by default.
RNN_TYPES = ["LSTMSequence", "GRUSequence", "RNNSequence", "LSTMCell", "GRUCell", "RNNCell"]
#: Ops that do not change whether the data flowing through them is int8 (walked back over when asking
#: "does this op compute from int8?").
_PASS_THROUGH = {"Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool", "Subtract", "Multiply"}
_LOW_PRECISION = {"i8", "u8", "i4", "u4"}


class PTQSettings(BaseModel):
    """How NNCF quantizes one model (filled by the backend from the target options, spec and config)."""

    model_config = ConfigDict(extra="forbid")
    model_type: Optional[Literal["transformer"]] = Field(
        None, description="'transformer' adds NNCF's attention patterns (and SmoothQuant); None for CNN/RNN")
    preset: Optional[Literal["performance", "mixed"]] = Field(
        None, description="performance: symmetric activations; mixed: asymmetric. None: NNCF default "
                          "(mixed for transformers, performance otherwise)")
    target_device: Literal["ANY", "CPU", "GPU", "NPU", "CPU_SPR"] = Field(
        "ANY", description="NNCF hardware config; CPU_SPR drops one quantizer before residual Adds (AMX)")
    overflow_fix: Literal["enable", "first_layer_only", "disable"] = Field(
        "first_layer_only", description="7-bit weights against int8 saturation on CPUs without VNNI")
    subset_size: int = Field(300, ge=1, description="Calibration samples used for statistics")
    fast_bias_correction: bool = True
    activation_range: Optional[Literal["minmax"]] = Field(
        None, description="None: NNCF's default (per-tensor activation ranges from the MEAN of per-sample minima and "
                          "maxima, which clips the samples beyond it); minmax: the extreme minimum and maximum over "
                          "all samples, as ONNX Runtime and TensorRT calibrate (a carried RNN state needs them)")
    ignored_names: list[str] = Field(default_factory=list, description="Node names left in float")
    ignored_types: list[str] = Field(default_factory=list, description="OpenVINO op types left in float")
    verbose: bool = Field(False, description="Let NNCF log at INFO (its reports also go into the manifest)")


def dataset(samples: Samples) -> Any:
    """An ``nncf.Dataset`` of single-sample feeds (NNCF collects statistics per item; batch 1 keeps
    per-sample statistics exact for every layer kind)."""
    import nncf

    if len(samples) == 0:
        raise CalibrationError("calibration data is empty: NNCF needs at least one sample")
    return nncf.Dataset([samples.take(slice(i, i + 1)).inputs for i in range(len(samples))])


def resolve_ignored(model: Any, keep_fp32: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``--keep-fp32`` entries into OpenVINO node names and op types.

    An entry is an ONNX op type (``Conv``, ``LSTM``), an OpenVINO op type (``Convolution``), or a node
    name: an ONNX node name (``/features/features.0/Conv``) matches the OpenVINO nodes made from it
    (``.../Conv/WithoutBiases``). An entry that matches nothing is a ``ConfigError``."""
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() not in ("Constant", "Parameter", "Result")]
    ov_types = {op.get_type_name() for op in ops}
    names: list[str] = []
    types: list[str] = []
    for entry in keep_fp32:
        if entry in ov_types:
            types.append(entry)
            continue
        if entry in ONNX_TO_OV_TYPES:
            found = [t for t in ONNX_TO_OV_TYPES[entry] if t in ov_types]
            if found:
                types.extend(found)
                continue
        hits = [op.get_friendly_name() for op in ops
                if op.get_friendly_name() == entry or op.get_friendly_name().startswith(entry + "/")]
        if not hits:
            examples = ", ".join(sorted(ov_types)[:8])
            raise ConfigError(f"--keep-fp32 '{entry}' matches no node name or op type of the model "
                              f"(op types here: {examples} …; node names as in the ONNX graph)")
        names.extend(hits)
    return sorted(set(names)), sorted(set(types))


def _ignored_scope(s: PTQSettings, model: Any) -> Any:
    import nncf

    present = {op.get_type_name() for op in model.get_ordered_ops()}
    types = [t for t in s.ignored_types if t in present]  # NNCF rejects types the model lacks
    if not (s.ignored_names or types):
        return None
    return nncf.IgnoredScope(names=list(s.ignored_names), types=types)


def _common_kwargs(s: PTQSettings, model: Any, n_calib: int) -> dict[str, Any]:
    import nncf

    return dict(
        preset=None if s.preset is None else nncf.QuantizationPreset(s.preset),
        target_device=nncf.TargetDevice[s.target_device],
        subset_size=min(s.subset_size, n_calib),
        fast_bias_correction=s.fast_bias_correction,
        model_type=nncf.ModelType.TRANSFORMER if s.model_type == "transformer" else None,
        ignored_scope=_ignored_scope(s, model))


@contextlib.contextmanager
def _nncf_log(verbose: bool):
    """NNCF logs every step at INFO to stdout; edgefm records what matters in the manifest instead."""
    logger = logging.getLogger("nncf")
    old = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def _advanced(s: PTQSettings) -> Any:
    import nncf

    adv = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(s.overflow_fix))
    if s.activation_range == "minmax":
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        adv.activations_range_estimator_params = RangeEstimatorParametersSet.MINMAX
    return adv


#: The matrix products: what the MatMul-only RNN recipe quantizes (``matmul_only``).
MATMUL_TYPES = ("MatMul",)


def matmul_only(s: PTQSettings, model: Any) -> PTQSettings:
    """``s`` with every op type but MatMul in the ignored scope and min/max activation ranges: int8 inputs and
    weights for the matrix products only, as TensorRT and ONNX Runtime's ``op_types_to_quantize`` do for RNNs
    (an LSTM cell's gate and state arithmetic and a convolutional front end stay float). Measured on silero VAD
    (LSTM cell as MatMuls + gates, state carried over 97 calls): NNCF's default int8 drifts the state 0.69 (limit
    0.1), MatMul-only with NNCF's mean min/max ranges 0.20, MatMul-only with min/max ranges: decisions = fp32."""
    present = {op.get_type_name() for op in model.get_ordered_ops()}
    others = present - set(MATMUL_TYPES) - {"Constant", "Parameter", "Result"}
    return s.model_copy(update={"ignored_types": sorted(set(s.ignored_types) | others), "activation_range": "minmax"})


def quantize(model: Any, calib: Samples, s: PTQSettings) -> Any:
    """Post-training static int8 of an ``openvino.Model`` (returns a new model)."""
    import nncf
    import nncf.errors

    nncf_errors = tuple(c for c in vars(nncf.errors).values() if isinstance(c, type) and issubclass(c, Exception))
    try:
        with _nncf_log(s.verbose):
            return nncf.quantize(model, dataset(calib), advanced_parameters=_advanced(s),
                                 **_common_kwargs(s, model, len(calib)))
    except nncf_errors as e:  # NNCF's own refusals, as one line (never a traceback from inside NNCF)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        ifs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "If"]
        if "dataset must not be empty" in first and ifs:
            raise CalibrationError(
                f"NNCF int8: the model keeps If node(s) {ifs[:3]} whose condition the declared inputs do not decide, "
                f"and NNCF calibrates each branch only on the samples that take it: a branch no calibration sample "
                f"takes cannot be quantized ({first}). Declare the inputs that decide it (fixed sizes, --input "
                f"NAME:scalar:TYPE=VALUE), calibrate with data that takes every branch, or use --quantize fp32") from None
        raise CalibrationError(f"NNCF int8 refused the model: {type(e).__name__}: {first}") from None


def compress_weights(model: Any, s: PTQSettings, symmetric: bool = False) -> Any:
    """Weight-only int8 (per output channel): weights stored as int8, activations stay float."""
    import nncf

    mode = nncf.CompressWeightsMode.INT8_SYM if symmetric else nncf.CompressWeightsMode.INT8_ASYM
    with _nncf_log(s.verbose):
        return nncf.compress_weights(model, mode=mode, ignored_scope=_ignored_scope(s, model))


#: Ops a quantizer is propagated through (NNCF puts one FakeQuantize before a MaxPool or a Reshape that serves
#: the convolution after it): walked over to find the layers a FakeQuantize really feeds.
_FQ_PASS = {"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "VariadicSplit",
            "StridedSlice", "Gather", "Convert", "Interpolate", "ShapeOf"}


def _is_weight(node: Any) -> bool:
    kind = node.get_type_name()
    if kind == "Constant":
        return True
    return kind in ("Convert", "Reshape", "Transpose") and _is_weight(node.input_value(0).get_node())


def _readers(node: Any, depth: int = 0) -> list[str]:
    """Names of the compute ops reading ``node``'s output, through data-movement ops."""
    out: list[str] = []
    for port in node.output(0).get_target_inputs():
        op = port.get_node()
        if op.get_type_name() in _FQ_PASS and depth < 6:
            out += _readers(op, depth + 1)
        elif op.get_type_name() != "Result":
            out.append(op.get_friendly_name())
    return list(dict.fromkeys(out))


def sensitive_fake_quantizes(qmodel: Any, calib: Samples, samples: int = 16) -> list[tuple[str, float, list[str]]]:
    """The activation FakeQuantize ops of an NNCF int8 model, most damaged first: per-channel SQNR (dB,
    ``edgefm.quantize.onnxruntime.channel_sqnr``) of each one's input vs its output on ``samples`` calibration
    samples, run at f32. Each entry: (FakeQuantize name, SQNR, the layers reading it: keeping those in NNCF's
    ignored scope removes this quantizer)."""
    import openvino as ov

    from edgefm.quantize.onnxruntime import channel_sqnr

    model = qmodel.clone()
    fqs = [op for op in model.get_ordered_ops()
           if op.get_type_name() == "FakeQuantize" and not _is_weight(op.input_value(0).get_node())]
    if not fqs:
        return []
    # add_outputs gives one Result per tensor: a tensor that already is an output, or that two FakeQuantizes
    # read (NNCF quantizes a tensor once per group of readers, e.g. when one reader is in the ignored scope), adds
    # none, so positions come from the Results it returns, not from counting (nudenet 320n in a fallback round:
    # "vector::_M_range_check: __n (which is 132) >= this->size() (which is 132)")
    results = model.add_outputs([o for fq in fqs for o in (fq.input_value(0), fq.output(0))])
    position = {o.get_node().get_friendly_name(): i for i, o in enumerate(model.outputs)}
    where = [position[r.get_node().get_friendly_name()] for r in results]
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    wanted = {n for p in compiled.inputs for n in p.get_names()}
    few = calib.take(slice(0, samples))
    acts: list[list[np.ndarray]] = [[] for _ in range(2 * len(fqs))]
    for i in range(len(few)):
        feed = few.take(slice(i, i + 1)).inputs  # each input split on its own batch axis
        req.infer({k: v for k, v in feed.items() if k in wanted})
        for j, at in enumerate(where):
            acts[j].append(req.get_output_tensor(at).data.copy())
    ranked = []
    for k, fq in enumerate(fqs):
        pre, post = acts[2 * k], acts[2 * k + 1]
        ranked.append((fq.get_friendly_name(), channel_sqnr(pre, post, pre[0].shape), _readers(fq)))
    return sorted(ranked, key=lambda r: r[1])


def _is_int8_source(node: Any, depth: int = 0) -> bool:
    """Whether ``node``'s output is int8 data (a FakeQuantize, a low-precision constant, or either behind
    converts/reshapes/dequantization arithmetic)."""
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_element_type().get_type_name() in _LOW_PRECISION
    if depth >= 6 or kind not in _PASS_THROUGH:
        return False
    srcs = [i.get_source_output().get_node() for i in node.inputs()]
    if kind in ("Multiply", "Subtract"):
        # dequantization arithmetic (int8 data times a constant scale), not a product of two activations
        consts = [n for n in srcs if n.get_type_name() == "Constant"
                  or (n.get_type_name() == "Convert" and n.input_value(0).get_node().get_type_name() == "Constant")]
        if not consts:
            return False
    return any(_is_int8_source(n, depth + 1) for n in srcs)


def int8_layers(model: Any) -> dict[str, str]:
    """{node name: op type} of the compute ops that read int8 data (quantized activations or weights)."""
    found = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in _PASS_THROUGH or kind in ("FakeQuantize", "Constant", "Parameter", "Result", "ShapeOf"):
            continue
        if any(_is_int8_source(i.get_source_output().get_node()) for i in op.inputs()):
            found[op.get_friendly_name()] = kind
    return found
