"""How far outputs moved from the fp32 reference, and accuracy against labels.

Every stage (export, quantize, compile) calls ``compare`` and then ``check`` with its limits, so the
figures in the manifest and the errors users see are computed one way everywhere."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefm.errors import AccuracyError
from edgefm.models.spec import ModelSpec


class Limits(BaseModel):
    """Tolerances for one step; None means "not checked"."""

    model_config = ConfigDict(extra="forbid")
    max_abs: Optional[float] = Field(None, description="Largest allowed |out - ref|")
    max_abs_scale: Optional[float] = Field(
        None, description="With max_abs: the limit becomes max(max_abs, max_abs_scale x max|ref|) of each output, "
                          "so fp32 rounding on large-valued outputs (pixel boxes) is not taken for an error")
    cosine: Optional[float] = Field(None, description="Smallest allowed mean per-sample cosine similarity")
    top1_agreement: Optional[float] = Field(None, description="Smallest allowed share of equal argmax (logits)")
    accuracy_drop: Optional[float] = Field(None, description="Largest allowed top-1 drop in points (labels)")


def _flat(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)


def cosine_per_sample(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    r, g = _flat(ref), _flat(got)
    num = (r * g).sum(1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    both_zero = den == 0
    cos = np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))
    return cos


def compare(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], spec: Optional[ModelSpec] = None
            ) -> dict[str, dict[str, float]]:
    """Per output: max_abs, mean_abs, cosine (mean over samples), min_cosine, and top1_agreement for
    logits outputs (or any output whose last axis has 2+ entries when no spec says otherwise)."""
    kinds = {o.name: o.kind for o in spec.outputs} if spec else {}
    result: dict[str, dict[str, float]] = {}
    for name, r in ref.items():
        if name not in got:
            continue
        r, g = np.asarray(r), np.asarray(got[name])
        if r.shape != g.shape:
            raise AccuracyError("compare", name, "shape", float("nan"), float("nan"),
                                hint=f"reference shape {r.shape} vs {g.shape}")
        diff = np.abs(r.astype(np.float64) - g.astype(np.float64))
        cos = cosine_per_sample(r, g)
        m = {"max_abs": float(diff.max()) if diff.size else 0.0,
             "mean_abs": float(diff.mean()) if diff.size else 0.0,
             "cosine": float(cos.mean()), "min_cosine": float(cos.min()),
             "ref_max_abs": float(np.abs(r.astype(np.float64)).max()) if r.size else 0.0}
        kind = kinds.get(name, "logits" if r.ndim == 2 and r.shape[-1] > 1 else "other")
        if kind == "logits":
            m["top1_agreement"] = float((r.argmax(-1) == g.argmax(-1)).mean())
        result[name] = m
    return result


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1 (and top5 where there are more than 5 classes), in [0, 1]."""
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    out = {"top1": float((logits.argmax(-1) == labels).mean())}
    if logits.shape[-1] > 5:
        top5 = np.argsort(-logits, axis=-1)[:, :5]
        out["top5"] = float((top5 == labels[:, None]).any(1).mean())
    return out


def check(step: str, metrics: Mapping[str, Mapping[str, float]], limits: Limits, hint: str = "") -> None:
    """Raise ``AccuracyError`` for the first output/metric past its limit."""
    for out, m in metrics.items():
        if out.startswith("_"):
            continue
        if limits.max_abs is not None:
            limit = max(limits.max_abs, (limits.max_abs_scale or 0.0) * m.get("ref_max_abs", 0.0))
            if m.get("max_abs", 0.0) > limit:
                raise AccuracyError(step, out, "max_abs", m["max_abs"], limit, hint)
        if limits.cosine is not None and m.get("cosine", 1.0) < limits.cosine:
            raise AccuracyError(step, out, "cosine", m["cosine"], limits.cosine, hint)
        if limits.top1_agreement is not None and m.get("top1_agreement", 1.0) < limits.top1_agreement:
            raise AccuracyError(step, out, "top1_agreement", m["top1_agreement"], limits.top1_agreement, hint)
    acc = metrics.get("_accuracy")
    if acc and limits.accuracy_drop is not None:
        drop = 100.0 * (acc["fp32_top1"] - acc["top1"])
        if drop > limits.accuracy_drop:
            raise AccuracyError(step, "labels", "accuracy_drop_points", drop, limits.accuracy_drop, hint)


def evaluate(spec: ModelSpec, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
             labels: Optional[np.ndarray] = None) -> dict[str, dict[str, float]]:
    """``compare`` plus, with labels, ``_accuracy`` = {top1, fp32_top1, (top5, fp32_top5)} on the first logits output."""
    metrics = compare(ref, got, spec)
    if labels is not None:
        logit_outs = [o.name for o in spec.outputs if o.kind == "logits"] or list(ref)[:1]
        name = logit_outs[0]
        a, a_ref = accuracy(got[name], labels), accuracy(ref[name], labels)
        metrics["_accuracy"] = {**a, **{f"fp32_{k}": v for k, v in a_ref.items()}}
    return metrics


def summarize(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """One line for people: per output cosine / max abs / top-1 agreement, and accuracy with labels. Keys
    starting with ``_`` other than ``_accuracy`` are backend extras and are left out."""
    parts = []
    for k, m in metrics.items():
        if k == "_accuracy":
            parts.append(f"top-1 {100 * m['top1']:.2f}% (fp32 {100 * m['fp32_top1']:.2f}%)")
        elif not k.startswith("_") and isinstance(m, Mapping) and "cosine" in m:
            s = f"{k}: cos {m['cosine']:.5f}"
            if "max_abs" in m:
                s += f", max abs {m['max_abs']:.3g}"
            if "top1_agreement" in m:
                s += f", top-1 agree {100 * m['top1_agreement']:.1f}%"
            parts.append(s)
    return "; ".join(parts)
