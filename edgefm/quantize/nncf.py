"""The NNCF adapter: int8 for OpenVINO models (``openvino.Model``) through NNCF, Intel's own compression
library. Everything edgefm asks of NNCF goes through here:

- ``quantize``: post-training static int8 (weights and activations), with the model type, preset, target
  device and ignored scope that ``PTQSettings`` names;
- ``quantize_with_accuracy_control``: the same, but NNCF puts the most sensitive layers back into float
  until the drop of a validation metric is within a bound (``--max-accuracy-drop``);
- ``compress_weights``: weight-only int8 (activations stay float), an option for Transformers;
- ``int8_layers``: which operations of a model compute from int8 inputs, so the manifest can list what was
  quantized and what accuracy control put back.

Imports nncf and openvino inside the functions only (``import edgefm`` stays light)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefm.samples import Feed, Samples
from edgefm.errors import AccuracyError, CalibrationError, ConfigError
from edgefm.fidelity import cosine_per_sample
from edgefm.models.spec import ModelSpec

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
    ignored_names: list[str] = Field(default_factory=list, description="Node names left in float")
    ignored_types: list[str] = Field(default_factory=list, description="OpenVINO op types left in float")
    verbose: bool = Field(False, description="Let NNCF log at INFO (its reports also go into the manifest)")


@dataclass
class ValidationMetric:
    """The metric accuracy control keeps within ``max_drop`` of the fp32 model (higher is better)."""

    name: str            # "top1_points" (labels) or "cosine_points" (fidelity to the fp32 reference)
    items: list[Any]     # one (feed, reference, label) per eval sample
    fn: Callable[[Any, Any], tuple[float, list[float]]]


@dataclass
class AccuracyControlResult:
    model: Any                                 # openvino.Model
    metric: str
    fp32_value: float
    int8_value: float
    plain_int8_value: Optional[float] = None
    reverted: list[str] = field(default_factory=list)   # layers put back in float
    int8_layers: int = 0                                 # layers still int8 afterwards

    @property
    def drop(self) -> float:
        return self.fp32_value - self.int8_value


def dataset(samples: Samples) -> Any:
    """An ``nncf.Dataset`` of single-sample feeds (NNCF collects statistics per item; batch 1 keeps
    per-sample statistics exact for every layer kind)."""
    import nncf

    if len(samples) == 0:
        raise CalibrationError("calibration data is empty: NNCF needs at least one sample")
    return nncf.Dataset([{k: v[i:i + 1] for k, v in samples.inputs.items()} for i in range(len(samples))])


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

    return nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(s.overflow_fix))


def quantize(model: Any, calib: Samples, s: PTQSettings) -> Any:
    """Post-training static int8 of an ``openvino.Model`` (returns a new model)."""
    import nncf

    with _nncf_log(s.verbose):
        return nncf.quantize(model, dataset(calib), advanced_parameters=_advanced(s),
                             **_common_kwargs(s, model, len(calib)))


def compress_weights(model: Any, s: PTQSettings, symmetric: bool = False) -> Any:
    """Weight-only int8 (per output channel): weights stored as int8, activations stay float."""
    import nncf

    mode = nncf.CompressWeightsMode.INT8_SYM if symmetric else nncf.CompressWeightsMode.INT8_ASYM
    with _nncf_log(s.verbose):
        return nncf.compress_weights(model, mode=mode, ignored_scope=_ignored_scope(s, model))


def validation_metric(spec: ModelSpec, eval_: Samples, reference: Feed) -> ValidationMetric:
    """Top-1 accuracy in points when ``eval_`` has labels, else mean cosine to the fp32 reference in
    points (100 = identical direction). Either way a drop of 1.0 is one point."""
    names = [o.name for o in spec.outputs] or list(reference)
    logits = [o.name for o in spec.outputs if o.kind == "logits"] or names[:1]
    labels = eval_.labels
    items = [({k: v[i:i + 1] for k, v in eval_.inputs.items()},
              {k: reference[k][i:i + 1] for k in names},
              None if labels is None else int(labels[i])) for i in range(len(eval_))]

    def run(compiled: Any, batch: list[Any]) -> list[np.ndarray]:
        feed = {k: np.concatenate([it[0][k] for it in batch]) for k in batch[0][0]}
        res = compiled(feed)
        return [np.asarray(res[i]) for i in range(len(compiled.outputs))]

    if labels is not None:
        idx = names.index(logits[0])

        def top1(compiled: Any, data: Any) -> tuple[float, list[float]]:
            batch = list(data)
            got = run(compiled, batch)[idx].argmax(-1)
            per = [100.0 * float(g == it[2]) for g, it in zip(got, batch)]
            return float(np.mean(per)), per
        return ValidationMetric("top1_points", items, top1)

    def cosine(compiled: Any, data: Any) -> tuple[float, list[float]]:
        batch = list(data)
        outs = run(compiled, batch)
        per = np.mean([cosine_per_sample(np.concatenate([it[1][n] for it in batch]), o)
                       for n, o in zip(names, outs)], axis=0)
        per = [100.0 * float(c) for c in per]
        return float(np.mean(per)), per
    return ValidationMetric("cosine_points", items, cosine)


def evaluate_metric(model: Any, metric: ValidationMetric) -> float:
    """The validation metric of an ``openvino.Model`` compiled in f32 on CPU (as NNCF's accuracy control
    compiles it), so plain int8, accuracy-controlled int8 and fp32 are compared alike."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return metric.fn(compiled, metric.items)[0]


def quantize_with_accuracy_control(model: Any, calib: Samples, metric: ValidationMetric, max_drop: float,
                                   s: PTQSettings, max_layers: Optional[int] = None,
                                   plain: Any = None) -> AccuracyControlResult:
    """int8 where NNCF reverts the most sensitive layers to float until ``metric`` drops by at most
    ``max_drop`` points from the fp32 model (``max_layers`` caps how many). ``plain`` is the plain int8
    model, when the caller has it, to name the reverted layers; it is built here otherwise."""
    import nncf

    restorer = nncf.AdvancedAccuracyRestorerParameters(
        **({} if max_layers is None else {"max_num_iterations": max_layers}))
    with _nncf_log(s.verbose):
        result = nncf.quantize_with_accuracy_control(
            model, dataset(calib), nncf.Dataset(metric.items), metric.fn, max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=_advanced(s),
            advanced_accuracy_restorer_parameters=restorer, **_common_kwargs(s, model, len(calib)))
    plain = plain if plain is not None else quantize(model, calib, s)
    before, after = int8_layers(plain), int8_layers(result)
    return AccuracyControlResult(
        model=result, metric=metric.name, fp32_value=evaluate_metric(model, metric),
        int8_value=evaluate_metric(result, metric), plain_int8_value=evaluate_metric(plain, metric),
        reverted=sorted(set(before) - set(after)), int8_layers=len(after))


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


def check_drop(step: str, result: AccuracyControlResult, max_drop: float) -> None:
    """Raise ``AccuracyError`` saying why accuracy control could not meet the bound (or met it only by
    putting every layer back in float, which is no int8 model at all)."""
    if result.drop <= max_drop + 1e-9 and result.int8_layers == 0:
        raise AccuracyError(
            step, "labels" if result.metric == "top1_points" else "all outputs", "int8_layers", 0, 1,
            hint=(f"NNCF accuracy control met the {result.metric} bound of {max_drop} points only by putting all "
                  f"{len(result.reverted)} quantized layers back in float (plain int8 drop "
                  f"{result.fp32_value - (result.plain_int8_value or 0):.3g} points): the bound cannot be met with "
                  f"int8 here; loosen --max-accuracy-drop or use --quantize fp32/bf16"))
    if result.drop <= max_drop + 1e-9:
        return
    raise AccuracyError(
        step, "labels" if result.metric == "top1_points" else "all outputs", f"{result.metric}_drop",
        result.drop, max_drop,
        hint=(f"NNCF accuracy control put {len(result.reverted)} layer(s) back in float "
              f"({', '.join(result.reverted[:6]) or 'none'}{' …' if len(result.reverted) > 6 else ''}) and "
              f"{result.int8_layers} remain int8, but the drop is still {result.drop:.3g} points (plain int8: "
              f"{result.fp32_value - (result.plain_int8_value or 0):.3g}); the bound cannot be met with int8 "
              f"here: loosen --max-accuracy-drop, keep more layers with --keep-fp32, or use --quantize fp32"))
