"""The accuracy contract: what every output means (its *kind*), and the gates an artifact must pass.

The pipeline resolves one ``Contract`` per (target, precision) with ``resolve`` and records it in the
manifest; every backend calls ``judge`` (figures + verdict) and ``enforce`` (raise when refused); ``edgefm
verify`` reads the recorded contract back. No torch here.

Kinds and their gates (defaults per precision tier int8 / fp16-bf16 / fp32; a declared param with a gate's
metric name replaces its limit, ``none`` drops the gate):

=============  ==============================================================================================
logits         top1_agreement >= .95/.99/.99, prob_cosine (mean cosine of softmax) >= .98/.999/.9999
probabilities  same, on the probabilities as they are
binary         decision_agreement at ``threshold`` (0.5) >= .95/.99/.999, mean_abs_error <= .03/.01/.001,
               max_abs_error <= .3/.1/.01 (of the probability; ``logits=true``: sigmoid first)
ordinal        within_k (k = ``k``, default 1 % of the bins) >= .95/.99/.999, top1_agreement >= .5/.8/.95,
               mean_bin_error_k (weighted-average bin around the peak, in units of k) <= 1/.5/.25
embedding      cosine >= .98/.999/.9999, min_cosine >= .9/.99/.999, knn_recall >= .9/.98/.99
regression     rel_error (relative L2 over the eval set) <= .1/.01/.001   (sqnr_db recorded)
detections     precision and recall of matched detections (IoU >= ``iou`` .5, same class) >= .9/.97/.99
state          drift (relative error; per step with ``step_axis``) <= .1/.01/.001
other          sqnr_db >= 14/27/40 dB (integer outputs: agreement >= .95/.99/.999)
=============  ==============================================================================================

Every kind also takes ``max_abs`` (largest |got - ref| of the raw output); the ``tolerances`` section of the
config still counts (its cosine / top1_agreement / max_abs set the matching gates of its tier; fp32 has
max_abs <= max(1e-3, 2e-5 x max|ref|) by default: ``FP32_MAX_ABS_SCALE``). With labels, ``accuracy_drop``
(points of top-1) gates the first classifier output; ``--max-accuracy-drop`` without labels bounds the cosine
drop (100 x (1 - cosine)) of every output that has a cosine. A user metric (``--metric file.py:fn``) adds the
gate ``task_drop`` <= ``metric_drop``."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Literal, Mapping, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from edgefm.errors import AccuracyError, ConfigError

KINDS = ("logits", "probabilities", "binary", "ordinal", "embedding", "regression", "detections", "state", "other")
LEGACY_KINDS = {"hidden": "embedding"}  # manifests written before the contract
CLASSIFIERS = ("logits", "probabilities", "ordinal")
TIERS = ("int8", "half", "fp32")

# kind -> metric -> (direction, (int8, half, fp32))
DEFAULT_GATES: dict[str, dict[str, tuple[str, tuple[float, float, float]]]] = {
    "logits": {"top1_agreement": ("min", (0.95, 0.99, 0.99)), "prob_cosine": ("min", (0.98, 0.999, 0.9999))},
    "probabilities": {"top1_agreement": ("min", (0.95, 0.99, 0.99)),
                      "prob_cosine": ("min", (0.98, 0.999, 0.9999))},
    "binary": {"decision_agreement": ("min", (0.95, 0.99, 0.999)), "mean_abs_error": ("max", (0.03, 0.01, 0.001)),
               "max_abs_error": ("max", (0.3, 0.1, 0.01))},
    "ordinal": {"within_k": ("min", (0.95, 0.99, 0.999)), "top1_agreement": ("min", (0.5, 0.8, 0.95)),
                "mean_bin_error_k": ("max", (1.0, 0.5, 0.25))},  # in units of k
    "embedding": {"cosine": ("min", (0.98, 0.999, 0.9999)), "min_cosine": ("min", (0.9, 0.99, 0.999)),
                  "knn_recall": ("min", (0.9, 0.98, 0.99))},
    "regression": {"rel_error": ("max", (0.1, 0.01, 0.001))},
    "detections": {"precision": ("min", (0.9, 0.97, 0.99)), "recall": ("min", (0.9, 0.97, 0.99))},
    "state": {"drift": ("max", (0.1, 0.01, 0.001))},
    "other": {"sqnr_db": ("min", (14.0, 27.0, 40.0))},
}
# params each kind understands besides its gates' metric names (a typo is an error, not a silent default)
PARAMS: dict[str, set[str]] = {
    "logits": {"axis", "labels"}, "probabilities": {"axis", "labels"},
    "binary": {"threshold", "logits", "labels"},
    "ordinal": {"axis", "k", "scores", "labels"},
    "embedding": {"k", "knn_tolerance"},
    "regression": set(), "other": set(), "state": {"step_axis"},
    "detections": {"boxes", "scores", "objectness", "axis", "layout", "score_threshold", "iou", "scores_output",
                   "scores_axis", "score_logits"},
}
#: The fp32 tier's default max_abs (tolerances.compile, 1e-3) also scales with the output: the limit is
#: max(1e-3, FP32_MAX_ABS_SCALE x max|ref|). Why 2e-5: two correct fp32 runtimes differ by rounding, and rounding
#: error is relative. A dot product of length n re-associated (blocking, FMA, Winograd, another summation order)
#: moves by about sqrt(n) u of its magnitude (u = 2^-24 = 6e-8), and L layers add up like a random walk:
#: sqrt(n L) u = 2e-5 for n = 2304 (a 3x3x256 conv), L = 50 layers (339 u). Seen: nudenet 320n (YOLOv8n, pixel
#: boxes up to 320) ONNX Runtime vs LiteRT fp32, 1.1e-3 = 3.6e-6 x 320. A real conversion error is orders above
#: it (a dropped bias moves the output by the bias: ~1e-2 of the scale), and the cosine gate still holds.
FP32_MAX_ABS_SCALE = 2e-5
UNIVERSAL_GATES = {"max_abs": "max"}  # declarable on every kind (largest |got - ref| of the raw output)
BOUNDED = {"top1_agreement", "prob_cosine", "decision_agreement", "within_k", "cosine", "min_cosine", "knn_recall",
           "precision", "recall", "agreement"}


class Gate(BaseModel):
    """One check that can fail: ``metric`` of ``output`` must be >= (``min``) or <= (``max``) ``limit``."""

    model_config = ConfigDict(extra="forbid")
    output: str
    metric: str
    limit: float
    direction: Literal["min", "max"]
    scale_limit: Optional[float] = Field(
        None, description="max gates only: the limit becomes max(limit, scale_limit x max|ref|), max|ref| being the "
                          "largest magnitude of the output's reference on the judged data (fp32 rounding error "
                          "scales with the values: an absolute 1e-3 means 3 ulp on a pixel coordinate of 320)")
    _scale: Optional[float] = PrivateAttr(None)

    def at_scale(self, scale: Optional[float]) -> "Gate":
        """This gate with its limit resolved for an output whose reference reaches ``scale`` in magnitude."""
        if self.scale_limit is None or scale is None or not math.isfinite(scale):
            return self
        g = self.model_copy(update={"limit": max(self.limit, self.scale_limit * float(scale))})
        g._scale = float(scale)
        return g

    def passes(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return value >= self.limit if self.direction == "min" else value <= self.limit

    def slack(self, value: float) -> float:
        """Normalised distance to the limit: >= 0 iff it passes; 1 = perfect for bounded shares."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return -1.0
        if self.direction == "min":
            scale = (1.0 - self.limit) if self.metric in BOUNDED and self.limit < 1 else abs(self.limit)
            return (value - self.limit) / max(scale, 1e-9)
        return (self.limit - value) / max(abs(self.limit), 1e-12)

    def line(self, value: Optional[float]) -> str:
        cmp = "<" if self.direction == "min" else ">"
        shown = "not computable" if value is None else f"{value:.6g}"
        limit = f"{self.limit:.6g}" + self.scale_note()
        return f"output '{self.output}': {self.metric} {shown} {cmp} limit {limit}" if value is not None \
            else f"output '{self.output}': {self.metric} {shown} (limit {limit})"

    def scale_note(self) -> str:
        """How a scale-relative limit was resolved (empty for a plain one)."""
        if self.scale_limit is None or self._scale is None:
            return ""
        return f" (the larger of its floor and {self.scale_limit:g} x max|ref| {self._scale:.6g})"


class OutputContract(BaseModel):
    """One output's kind, its params and its gates; ``inferred`` is False when the user declared the kind."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    gates: list[Gate] = Field(default_factory=list)
    inferred: bool = True
    reason: str = Field("", description="Why this kind: declared, or how it was guessed")


class Contract(BaseModel):
    """Resolved ONCE by the pipeline per (target, precision) and stored in the manifest entry."""

    model_config = ConfigDict(extra="forbid")
    precision: str
    outputs: list[OutputContract] = Field(default_factory=list)
    metric: Optional[str] = Field(None, description="User metric 'path.py:fn' (run at compress time only)")
    metric_gate: Optional[Gate] = None
    metric_replaces_gates: bool = False
    accuracy_drop: Optional[float] = Field(None, description="Largest top-1 drop in points with labels")
    accuracy_output: Optional[str] = Field(None, description="Output the labels are compared with")
    fidelity_drop: Optional[float] = Field(
        None, description="--max-accuracy-drop without labels: the mean cosine to fp32 of every output that has "
                          "one (class scores, embeddings) may drop this many points (100 x (1 - cosine))")
    _metric_fn: Optional[Callable] = PrivateAttr(None)

    def output(self, name: str) -> Optional[OutputContract]:
        return next((o for o in self.outputs if o.name == name), None)

    def gates(self) -> list[Gate]:
        gs = [] if (self.metric_replaces_gates and self.metric_gate) else [g for o in self.outputs for g in o.gates]
        return gs + ([self.metric_gate] if self.metric_gate else [])

    def describe(self) -> str:
        """One line for people: kind and gates per output."""
        parts = []
        for o in self.outputs:
            gs = ", ".join(f"{g.metric} {'>=' if g.direction == 'min' else '<='} {g.limit:g}" for g in o.gates)
            parts.append(f"{o.name}: {o.kind} ({'guessed' if o.inferred else 'declared'}; {gs})")
        if self.accuracy_drop is not None and self.accuracy_output:
            parts.append(f"with labels: top-1 drop <= {self.accuracy_drop:g} points on {self.accuracy_output}")
        if self.fidelity_drop is not None:
            parts.append(f"without labels: cosine drop <= {self.fidelity_drop:g} points")
        if self.metric_gate:
            parts.append(f"{self.metric}: task_drop <= {self.metric_gate.limit:g}")
        return "; ".join(parts)


class Verdict(BaseModel):
    """What ``judge`` found: ok, figures per output (``_accuracy`` with labels, ``_task`` for the user
    metric), one line per failed gate, and the smallest normalised slack (>= 0 iff ok)."""

    model_config = ConfigDict(extra="forbid")
    ok: bool
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    failures: list[str] = Field(default_factory=list)
    margin: float = 0.0
    notes: list[str] = Field(default_factory=list)
    worst: Optional[Gate] = Field(None, description="The gate with the smallest slack")
    worst_value: Optional[float] = None


# --- declarations ---------------------------------------------------------------------------------------------

_DECL = re.compile(r"^(?P<name>[^:]+):(?P<kind>[A-Za-z_]+)(?::(?P<params>.*))?$")


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text.strip()


def parse_output_decl(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:KIND[:key=value,...]`` → (name, {"kind": KIND, key: value}). Values may contain ':' (field
    ranges such as ``boxes=0:4``)."""
    m = _DECL.match(text.strip())
    if not m:
        raise ConfigError(f"--output-kind '{text}': expected NAME:KIND[:key=value,...], e.g. speaker:embedding or "
                          f"det:detections:boxes=0:4,scores=4:,layout=cxcywh,axis=1")
    decl: dict[str, Any] = {"kind": m["kind"]}
    for part in filter(None, (m["params"] or "").split(",")):
        if "=" not in part:
            raise ConfigError(f"--output-kind '{text}': '{part}' is not key=value")
        k, v = part.split("=", 1)
        decl[k.strip()] = _value(v)
    check_decl(m["name"], decl, where=f"--output-kind '{text}'")
    return m["name"], decl


def check_decl(name: str, decl: Mapping[str, Any], where: str) -> None:
    """Raise ``ConfigError`` for an unknown kind or param."""
    kind = decl.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: output '{name}' kind '{kind}' is not one of {', '.join(KINDS)}")
    allowed = PARAMS[kind] | set(DEFAULT_GATES[kind]) | set(UNIVERSAL_GATES) | {"kind"}
    bad = sorted(set(decl) - allowed)
    if bad:
        raise ConfigError(f"{where}: output '{name}' ({kind}) has unknown params {bad}; valid: {sorted(allowed - {'kind'})}")
    for k in set(decl) & (set(DEFAULT_GATES[kind]) | set(UNIVERSAL_GATES)):
        if decl[k] is not None and not isinstance(decl[k], (int, float)):
            raise ConfigError(f"{where}: output '{name}' limit {k}={decl[k]!r} is not a number (or none)")


# --- resolve ------------------------------------------------------------------------------------------------

def tier(precision: str) -> int:
    """0 = int8 (and anything quantized), 1 = fp16/bf16, 2 = fp32."""
    return {"fp16": 1, "bf16": 1, "fp32": 2}.get(precision, 0)


def _tolerance_overrides(config: Any, precision: str) -> dict[str, float]:
    """The legacy ``tolerances`` section still counts: its cosine / top1_agreement / max_abs set the
    matching gates of every output of this tier."""
    tol = getattr(config, "tolerances", None)
    if tol is None:
        return {}
    lim = [tol.quantize, tol.fp16, tol.compile][tier(precision)]
    out = {}
    if lim.cosine is not None:
        out["cosine"] = out["prob_cosine"] = lim.cosine
    if lim.top1_agreement is not None:
        out["top1_agreement"] = lim.top1_agreement
    if lim.max_abs is not None:
        out["max_abs"] = lim.max_abs
        if tier(precision) == 2 and "compile" not in tol.model_fields_set:
            out["max_abs_scale"] = FP32_MAX_ABS_SCALE  # the default fp32 limit: relative to the output's scale
    return out


def output_gates(name: str, kind: str, params: Mapping[str, Any], precision: str,
                 legacy: Optional[Mapping[str, float]] = None) -> list[Gate]:
    """The gates of one output: the kind's defaults for the tier, the legacy tolerances, then the params."""
    t = tier(precision)
    gates = {}
    for metric, (direction, limits) in DEFAULT_GATES[kind].items():
        limit = limits[t]
        if legacy and metric in legacy and metric != "max_abs" and kind != "ordinal":
            limit = legacy[metric]
        gates[metric] = Gate(output=name, metric=metric, limit=float(limit), direction=direction)
    if legacy and "max_abs" in legacy:  # the tolerances section's max_abs (fp32 default 1e-3) holds for every kind
        gates["max_abs"] = Gate(output=name, metric="max_abs", limit=float(legacy["max_abs"]), direction="max",
                                scale_limit=legacy.get("max_abs_scale"))
    directions = {**UNIVERSAL_GATES, **{m: d for m, (d, _) in DEFAULT_GATES[kind].items()}}
    for metric in list(gates) + [m for m in params if m in directions and m not in gates]:
        if metric in params:
            if params[metric] is None:
                gates.pop(metric, None)
            else:
                direction = directions[metric]
                gates[metric] = Gate(output=name, metric=metric, limit=float(params[metric]), direction=direction)
    return list(gates.values())


def resolve(spec: Any, config: Any, precision: str) -> Contract:
    """The contract of ``spec``'s outputs at ``precision``: kinds from the spec (inferred or declared at load)
    refined by the config's ``outputs`` declarations, gates from the kind defaults, the legacy tolerances and
    declared params; the user metric (loaded here, at compress time) and the accuracy bound with labels."""
    decls: dict[str, dict[str, Any]] = dict(getattr(config, "outputs", None) or {})
    names = [o.name for o in spec.outputs]
    unknown = [n for n in decls if n not in names]
    if unknown:
        raise ConfigError(f"--output-kind / recipe outputs: {unknown} are not outputs of the model; its outputs are "
                          f"{names}")
    legacy = _tolerance_overrides(config, precision)
    outs = []
    for o in spec.outputs:
        kind = LEGACY_KINDS.get(o.kind, o.kind)
        params = dict(getattr(o, "params", None) or {})
        declared = getattr(o, "declared", False)
        reason = getattr(o, "reason", "") or ("recorded in the spec" if kind == o.kind else f"legacy kind '{o.kind}'")
        if o.name in decls:
            d = dict(decls[o.name])
            check_decl(o.name, d, where="outputs")
            kind = d.pop("kind")
            params = {**(params if kind == LEGACY_KINDS.get(o.kind, o.kind) else {}), **d}
            declared, reason = True, "declared"
        outs.append(OutputContract(name=o.name, kind=kind, params=params, inferred=not declared, reason=reason,
                                   gates=output_gates(o.name, kind, params, precision, legacy)))
    contract = Contract(precision=precision, outputs=outs)
    if tier(precision) == 0:
        drop = getattr(config, "max_accuracy_drop", None)
        if drop is None and getattr(config, "tolerances", None) is not None:
            drop = config.tolerances.quantize.accuracy_drop
        contract.accuracy_drop = 1.0 if drop is None and config is None else drop
        # the user's bound means the same on every backend: top-1 points with labels, cosine points without
        contract.fidelity_drop = getattr(config, "max_accuracy_drop", None)
    # labels are compared with the output that says so (labels=true), else the first classifier
    contract.accuracy_output = next((o.name for o in outs if o.params.get("labels")), None) or next(
        (o.name for o in outs if o.kind in CLASSIFIERS and o.params.get("labels") is not False), None)
    metric = getattr(config, "metric", None)
    if metric:
        contract.metric = metric
        contract.metric_gate = Gate(output="_task", metric="task_drop", direction="max",
                                    limit=float(getattr(config, "metric_drop", None) or 0.01))
        contract.metric_replaces_gates = bool(getattr(config, "metric_replaces_gates", False))
        contract._metric_fn = load_metric(metric)
    return contract


def recorded(manifest: Any, target: str) -> tuple[Contract, str]:
    """The contract a bundle's target was built against, and a note: the one in its manifest entry, or — for
    bundles written before the contract existed — the one its recorded config resolves to (said so). Never
    imports a user metric: its gate is recorded, the function is not re-run."""
    entry = manifest.targets[target]
    if entry.contract is not None:
        return entry.contract, "recorded contract"
    from edgefm.config import CompressConfig

    cfg = None
    if manifest.config:
        try:
            cfg = CompressConfig.model_validate({**manifest.config, "metric": None})
        except Exception:  # noqa: BLE001 - an old config this version no longer reads: defaults
            cfg = None
    return resolve(manifest.spec, cfg, entry.precision), ("no contract recorded (bundle made before it): derived "
                                                           "from the recorded config and spec")


def check_metric(text: str) -> tuple[str, str]:
    """(path, function) of ``--metric path.py:fn``, checked without importing it (the pipeline's plan)."""
    from pathlib import Path

    path, sep, fn = str(text).rpartition(":")
    if not sep or not path.endswith(".py") or not fn.isidentifier():
        raise ConfigError(f"--metric '{text}': expected path/to/file.py:function")
    if not Path(path).is_file():
        raise ConfigError(f"--metric '{text}': no such file {path}")
    return path, fn


def load_metric(text: str) -> Callable:
    """Import ``path.py:fn`` (user code named on the command line; only ever at compress time)."""
    import importlib.util

    path, fn = check_metric(text)
    mod_spec = importlib.util.spec_from_file_location(f"edgefm_user_metric_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file: one line naming it
        raise ConfigError(f"--metric '{text}': importing {path} failed: {type(e).__name__}: {e}") from None
    f = getattr(module, fn, None)
    if not callable(f):
        raise ConfigError(f"--metric '{text}': {path} has no function '{fn}'")
    return f


# --- judge --------------------------------------------------------------------------------------------------

def _measure(oc: OutputContract, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> dict[str, float]:
    from edgefm import output_metrics as om

    r, g = np.asarray(ref[oc.name]), np.asarray(got[oc.name])
    if r.shape != g.shape:
        raise AccuracyError("judge", oc.name, "shape", float("nan"), float("nan"),
                            hint=f"reference shape {r.shape} vs {g.shape}")
    try:
        if oc.kind == "detections":
            so = oc.params.get("scores_output")
            if so and (so not in ref or so not in got):
                raise ValueError(f"scores_output '{so}' is not an output of the model")
            m = om.detections(r, g, oc.params, ref.get(so) if so else None, got.get(so) if so else None)
        else:
            m = om.MEASURES[oc.kind](r, g, oc.params)
    except (ValueError, IndexError, np.exceptions.AxisError) as e:  # params that do not fit the output's shape
        raise ConfigError(f"output '{oc.name}' ({oc.kind}, shape {list(r.shape)}, params {oc.params}): {e}") from None
    if "max_abs" not in m:  # on the raw output, for every kind (the tolerances section may gate it)
        m["max_abs"] = float(np.abs(om.f64(r) - om.f64(g)).max()) if r.size else 0.0
    if any(gate.scale_limit is not None for gate in oc.gates):  # what a scale-relative limit is relative to
        m["ref_max_abs"] = float(np.abs(om.f64(r)).max()) if r.size else 0.0
    return m


def _accuracy(scores: np.ndarray, labels: np.ndarray, params: Mapping[str, Any]) -> dict[str, float]:
    from edgefm.output_metrics import rows

    r = rows(scores, int(params.get("axis", -1)))
    labels = np.asarray(labels).reshape(-1)
    out = {"top1": float((r.argmax(1) == labels).mean())}
    if r.shape[1] > 5:
        top5 = np.argsort(-r, axis=1)[:, :5]
        out["top5"] = float((top5 == labels[:, None]).any(1).mean())
    return out


def judge(contract: Contract, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
          labels: Optional[np.ndarray] = None, inputs: Optional[Mapping[str, np.ndarray]] = None,
          metric_fn: Optional[Callable] = None) -> Verdict:
    """Measure every output of ``got`` against ``ref`` the way its kind asks and hold it to the gates.

    ``labels`` adds ``_accuracy`` (and the accuracy-drop gate); the user metric runs only when its function
    was loaded by ``resolve`` in this process (or is passed as ``metric_fn``): a contract read from a
    manifest never imports user code, and the verdict says the metric was not re-run."""
    metrics: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for oc in contract.outputs:
        if oc.name not in got or oc.name not in ref:
            continue
        m = _measure(oc, ref, got)
        if oc.kind in ("logits", "probabilities") and m.get("classes", 2) < 2:
            notes.append(f"output '{oc.name}' has one column: top-1 and cosine mean nothing there; declare it "
                         f"binary (--output-kind {oc.name}:binary) or regression")
        if oc.kind == "detections" and m.get("ref_detections") == 0:
            notes.append(f"output '{oc.name}': the reference has no detection above score_threshold on the eval "
                         f"data, so precision/recall test nothing; use eval data with objects")
        metrics[oc.name] = m
    if labels is not None and contract.accuracy_output in got:
        oc = contract.output(contract.accuracy_output)
        rows = int(np.prod(np.delete(np.shape(got[oc.name]), int(oc.params.get("axis", -1)))))
        if rows != np.size(labels):
            notes.append(f"labels ({np.size(labels)}) do not match the rows of output '{oc.name}' ({rows}): "
                         f"accuracy not computed")
        else:
            a, a_ref = _accuracy(got[oc.name], labels, oc.params), _accuracy(ref[oc.name], labels, oc.params)
            metrics["_accuracy"] = {**a, **{f"fp32_{k}": v for k, v in a_ref.items()},
                                    "drop_points": 100.0 * (a_ref["top1"] - a["top1"])}
    fn = metric_fn or contract._metric_fn
    if contract.metric and fn is not None:
        metrics["_task"] = _task_metric(fn, contract.metric, ref, got, labels)
    elif contract.metric:
        notes.append(f"user metric {contract.metric} was not re-run (user code is only run at compress time); "
                     f"the recorded gates were checked")

    checks: list[tuple[Gate, Optional[float]]] = []
    for g in contract.gates():
        if g.output == "_task":
            if "_task" in metrics:
                checks.append((g, metrics["_task"]["task_drop"]))
            continue
        if g.output not in metrics:
            continue
        m = metrics[g.output]
        checks.append((g.at_scale(m.get("ref_max_abs")), m.get(g.metric)))
    if labels is None and contract.fidelity_drop is not None:
        for name, m in metrics.items():
            if not name.startswith("_") and "cosine" in m:
                m["cosine_drop_points"] = 100.0 * (1.0 - m["cosine"])
                checks.append((Gate(output=name, metric="cosine_drop_points", limit=contract.fidelity_drop,
                                    direction="max"), m["cosine_drop_points"]))
    if "_accuracy" in metrics and contract.accuracy_drop is not None:
        checks.append((Gate(output=contract.accuracy_output or "labels", metric="accuracy_drop_points",
                            limit=contract.accuracy_drop, direction="max"), metrics["_accuracy"]["drop_points"]))
    failures = [g.line(v) for g, v in checks if not g.passes(v)]
    slacks = [(g.slack(v), g, v) for g, v in checks]
    worst = min(slacks, key=lambda s: s[0]) if slacks else None
    return Verdict(ok=not failures, metrics=metrics, failures=failures, notes=notes,
                   margin=float(worst[0]) if worst else 1.0, worst=worst[1] if worst else None,
                   worst_value=worst[2] if worst else None)


def _task_metric(fn: Callable, name: str, ref, got, labels) -> dict[str, float]:
    def call(outputs):
        try:
            v = fn(dict(ref), dict(outputs), labels)
        except Exception as e:  # noqa: BLE001 - user code: say whose
            raise ConfigError(f"--metric {name} raised {type(e).__name__}: {e}") from None
        if isinstance(v, Mapping):
            if not v:
                raise ConfigError(f"--metric {name} returned an empty dict")
            main = v.get("score", next(iter(v.values())))
            return float(main), {k: float(x) for k, x in v.items()}
        try:
            return float(v), {}
        except (TypeError, ValueError):
            raise ConfigError(f"--metric {name} returned {type(v).__name__}; expected a float or a dict") from None

    value, extra = call(got)
    base, _ = call(ref)
    return {**extra, "value": value, "fp32_value": base, "task_drop": base - value}


def enforce(step: str, verdict: Verdict, hint: str = "") -> None:
    """Raise ``AccuracyError`` naming the step, output, metric, value and limit of the first failed gate
    (the others follow in the message)."""
    if verdict.ok:
        return
    g, v = verdict.worst, verdict.worst_value  # a failed gate has the smallest (negative) slack
    first = g.line(v) if g else ""
    more = [f for f in verdict.failures if f != first]
    text = hint + ((" " if hint else "") + "Also: " + "; ".join(more) if more else "")
    if g is not None and g.scale_note():
        text = f"{g.scale_note().strip()} " + text
    for n in verdict.notes:
        text += (" " if text else "") + n
    raise AccuracyError(step, g.output if g else "-", g.metric if g else "?", v if v is not None else float("nan"),
                        g.limit if g else float("nan"), text.strip(), direction=g.direction if g else None)


def summarize(metrics: Mapping[str, Any]) -> str:
    """One line for people: the gated figures of each output, accuracy with labels, the user metric."""
    show = ("top1_agreement", "prob_cosine", "decision_agreement", "mean_abs_error", "within_k", "mean_bin_error_k",
            "cosine", "min_cosine", "knn_recall", "rel_error", "sqnr_db", "precision", "recall", "drift", "agreement",
            "max_abs")
    parts = []
    for k, m in metrics.items():
        if not isinstance(m, Mapping):
            continue
        if k == "_accuracy":
            parts.append(f"top-1 {100 * m['top1']:.2f}% (fp32 {100 * m['fp32_top1']:.2f}%)")
        elif k == "_task":
            parts.append(f"task metric {m['value']:.4g} (fp32 {m['fp32_value']:.4g})")
        elif not k.startswith("_"):
            figs = [f"{s} {m[s]:.4g}" for s in show if s in m][:4]
            if figs:
                parts.append(f"{k}: " + ", ".join(figs))
    return "; ".join(parts)
