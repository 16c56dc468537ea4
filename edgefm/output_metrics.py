"""Per-kind figures of how far an artifact's output moved from the fp32 reference. NumPy only.

Each function takes the reference and the artifact's output of ONE model output (first axis = samples)
and the output's contract params, and returns ``{metric: value}``. ``edgefm.contract`` turns them into
gates; here are only the measurements, so that each is computed one way everywhere."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

import numpy as np

Params = Mapping[str, Any]


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings for large |x|


def rows(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """``a`` with ``axis`` moved last and every other axis flattened: (rows, width)."""
    a = np.moveaxis(f64(a), axis, -1) if a.ndim else f64(a).reshape(1)
    return a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1)


def per_sample(a: np.ndarray) -> np.ndarray:
    """(samples, everything else flattened)."""
    a = f64(a)
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)


def cosine_rows(r: np.ndarray, g: np.ndarray) -> np.ndarray:
    num = (r * g).sum(1)
    den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
    zero = den == 0
    both_zero = zero & (np.abs(r).sum(1) == 0) & (np.abs(g).sum(1) == 0)
    return np.where(both_zero, 1.0, np.where(zero, 0.0, num / np.where(zero, 1.0, den)))


def errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """max/mean absolute error, relative L2 error over the whole set and the SQNR it means, in dB."""
    r, g = f64(ref), f64(got)
    d = np.abs(r - g)
    norm_r, norm_d = float(np.linalg.norm(r)), float(np.linalg.norm(r - g))
    rel = norm_d / norm_r if norm_r > 0 else (0.0 if norm_d == 0 else float("inf"))
    return {"max_abs": float(d.max()) if d.size else 0.0, "mean_abs": float(d.mean()) if d.size else 0.0,
            "rel_error": rel, "sqnr_db": float(min(200.0, -20.0 * np.log10(rel))) if rel > 0 else 200.0}


def classes(ref, got, p: Params, probabilities: bool) -> dict[str, float]:
    """Class scores: top-1 agreement and mean cosine of the class probabilities (softmax of logits)."""
    axis = int(p.get("axis", -1))
    r, g = rows(ref, axis), rows(got, axis)
    m = {"max_abs": float(np.abs(r - g).max()) if r.size else 0.0, "classes": float(r.shape[1])}
    if r.shape[1] < 2:
        return m  # no top-1 on one column: the gates fail as "not computable" (declare it binary)
    pr, pg = (r, g) if probabilities else (softmax(r), softmax(g))
    m["top1_agreement"] = float((r.argmax(1) == g.argmax(1)).mean())
    m["prob_cosine"] = float(cosine_rows(pr, pg).mean())
    m["cosine"] = float(cosine_rows(per_sample(ref), per_sample(got)).mean())
    return m


def binary(ref, got, p: Params) -> dict[str, float]:
    """Independent probabilities (one column or many): decision agreement at the threshold, and the
    mean / largest absolute error of the probability itself."""
    r, g = f64(ref), f64(got)
    if p.get("logits"):
        r, g = sigmoid(r), sigmoid(g)
    thr = float(p.get("threshold", 0.5))
    d = np.abs(r - g)
    return {"decision_agreement": float(((r >= thr) == (g >= thr)).mean()) if r.size else 1.0,
            "mean_abs_error": float(d.mean()) if d.size else 0.0, "max_abs_error": float(d.max()) if d.size else 0.0,
            "positive_rate": float((r >= thr).mean()) if r.size else 0.0}


def default_k(bins: int) -> int:
    """Bins an ordinal answer may move and still count as "the same": about 1 % of the bins, at least 1."""
    return max(1, int(round(0.01 * bins)))


def ordinal(ref, got, p: Params) -> dict[str, float]:
    """Ordered bins: top-1, share within k bins, and the error of the weighted-average bin around the peak
    (how pitch-like decoders read such outputs), in bins."""
    axis = int(p.get("axis", -1))
    r, g = rows(ref, axis), rows(got, axis)
    bins = r.shape[1]
    k = int(p.get("k") or default_k(bins))
    ar, ag = r.argmax(1), g.argmax(1)
    dist = np.abs(ar - ag)
    w = max(4, k)
    err = float(np.abs(_local_mean(r, ar, w, p) - _local_mean(g, ag, w, p)).mean())
    return {"top1_agreement": float((dist == 0).mean()), "within_k": float((dist <= k).mean()), "k": float(k),
            "bins": float(bins), "mean_bin_error": err, "mean_bin_error_k": err / k}


def _local_mean(x: np.ndarray, peak: np.ndarray, w: int, p: Params) -> np.ndarray:
    idx = np.clip(peak[:, None] + np.arange(-w, w + 1)[None, :], 0, x.shape[1] - 1)
    vals = np.take_along_axis(x, idx, 1)
    if str(p.get("scores", "logits")) == "logits":
        weights = softmax(vals, 1)
    else:
        weights = np.clip(vals, 0, None) + 1e-12
        weights = weights / weights.sum(1, keepdims=True)
    return (weights * idx).sum(1)


def embedding(ref, got, p: Params) -> dict[str, float]:
    """Cosine (mean, min) per sample, and k-NN recall among the eval set: of the k neighbours the artifact
    retrieves for each sample, the share that the reference ranks as good as its own k-th best (within a
    tolerance of a tenth of the gap between that k-th best and the median similarity, so near-ties do not
    count as misses)."""
    r, g = per_sample(ref), per_sample(got)
    cos = cosine_rows(r, g)
    m = {"cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    n = r.shape[0]
    if n >= 3:
        k = int(min(int(p.get("k", 5)), n - 1))
        tol = float(p.get("knn_tolerance", 0.1))
        sr, sg = _similarity(r), _similarity(g)
        order_g = np.argsort(-sg, axis=1)[:, :k]
        sorted_r = -np.sort(-sr, axis=1)  # the diagonal was set to -inf, so it sorts last
        kth = sorted_r[:, k - 1]
        median = np.median(sorted_r[:, : n - 1], axis=1)
        eps = tol * np.maximum(kth - median, 0.0)
        hits = np.take_along_axis(sr, order_g, 1) >= (kth - eps)[:, None] - 1e-12
        m["knn_recall"] = float(hits.mean())
        m["knn_k"] = float(k)
    return m


def _similarity(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = (x / np.where(norm == 0, 1.0, norm)).astype(np.float32)  # float32: eval sets of wide vectors stay small
    s = (u @ u.T).astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    return s


def regression(ref, got, p: Params) -> dict[str, float]:
    return errors(ref, got)


def other(ref, got, p: Params) -> dict[str, float]:
    """Unknown meaning: error figures only; integer outputs (e.g. class indices) by exact agreement."""
    r, g = np.asarray(ref), np.asarray(got)
    if r.dtype.kind in "iub" and g.dtype.kind in "iub":
        return {"agreement": float((r == g).mean()) if r.size else 1.0, **errors(r, g)}
    return errors(r, g)


def state(ref, got, p: Params) -> dict[str, float]:
    """Recurrent state: drift = relative error; with ``step_axis`` (a streamed sequence of states) the
    largest drift over the steps, and the last step's."""
    step_axis = p.get("step_axis")
    m = errors(ref, got)
    if step_axis is None:
        m["drift"] = m["rel_error"]
        return m
    r, g = np.moveaxis(f64(ref), int(step_axis), 0), np.moveaxis(f64(got), int(step_axis), 0)
    per_step = [errors(r[i], g[i])["rel_error"] for i in range(r.shape[0])]
    m["drift"] = float(max(per_step)) if per_step else 0.0
    m["final_drift"] = float(per_step[-1]) if per_step else 0.0
    m["steps"] = float(len(per_step))
    return m


# --- detections ---------------------------------------------------------------------------------------------

_SLICE = re.compile(r"^\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?$")


def parse_slice(text: Any) -> slice:
    """``"0:4"`` → slice(0, 4), ``"4:"`` → slice(4, None), ``"4"`` → slice(4, 5). Raises ValueError."""
    if isinstance(text, (int, np.integer)):
        return slice(int(text), int(text) + 1)
    m = _SLICE.match(str(text))
    if not m or (m.group(1) == "" and m.group(2) is None):
        raise ValueError(f"'{text}' is not a field range such as 0:4, 4: or 4")
    a = int(m.group(1)) if m.group(1) not in ("", None) else None
    if m.group(2) is None and ":" not in str(text):
        return slice(a, a + 1 if a != -1 else None)
    b = int(m.group(2)) if m.group(2) not in ("", None) else None
    return slice(a, b)


def decode(arr: np.ndarray, p: Params, scores_arr: Optional[np.ndarray] = None) -> list[tuple]:
    """Per sample (boxes xyxy (n, 4), scores (n,), classes (n,)) above ``score_threshold``.

    The tensor holds, per sample, many candidates of F fields; ``axis`` is the field axis (YOLOv8:
    (1, 4+C, N) → ``axis=1``; default the last). ``boxes`` and ``scores`` are field ranges; ``objectness``
    (YOLOv5) multiplies the class scores; ``scores_output`` names a separate scores tensor instead."""
    a = np.moveaxis(f64(arr), int(p.get("axis", -1)), -1)
    a = a.reshape(a.shape[0], -1, a.shape[-1])  # (samples, candidates, fields)
    boxes = a[..., parse_slice(p.get("boxes", "0:4"))]
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes={p.get('boxes', '0:4')} selects {boxes.shape[-1]} fields, 4 are needed")
    if scores_arr is not None:
        s = np.moveaxis(f64(scores_arr), int(p.get("scores_axis", -1)), -1)
        s = s.reshape(s.shape[0], -1, s.shape[-1])
    else:
        s = a[..., parse_slice(p.get("scores", "4:"))]
    if s.shape[-1] == 0:
        raise ValueError(f"scores={p.get('scores', '4:')} selects no field")
    if p.get("objectness") is not None:
        s = s * a[..., parse_slice(p["objectness"])]
    if p.get("score_logits"):
        s = sigmoid(s)
    boxes = _xyxy(boxes, str(p.get("layout", "xyxy")))
    cls, score = s.argmax(-1), s.max(-1)
    thr = float(p.get("score_threshold", 0.25))
    return [(boxes[i][score[i] >= thr], score[i][score[i] >= thr], cls[i][score[i] >= thr])
            for i in range(a.shape[0])]


def _xyxy(b: np.ndarray, layout: str) -> np.ndarray:
    if layout == "xyxy":
        return b
    if layout == "cxcywh":
        cx, cy, w, h = np.moveaxis(b, -1, 0)
        return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    if layout == "xywh":
        x, y, w, h = np.moveaxis(b, -1, 0)
        return np.stack([x, y, x + w, y + h], -1)
    if layout == "yxyx":
        return b[..., [1, 0, 3, 2]]
    raise ValueError(f"layout '{layout}' is not one of xyxy, cxcywh, xywh, yxyx")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def detections(ref, got, p: Params, ref_scores=None, got_scores=None) -> dict[str, float]:
    """Decode both, keep scores above the threshold, match the artifact's detections (highest score first)
    greedily to unmatched reference detections of the same class with IoU >= ``iou`` (no NMS: candidates
    are compared as the model emits them). precision = matched / artifact's, recall = matched / reference's."""
    thr_iou = float(p.get("iou", 0.5))
    dr, dg = decode(ref, p, ref_scores), decode(got, p, got_scores)
    matched = n_ref = n_got = 0
    ious = []
    for (rb, rs, rc), (gb, gs, gc) in zip(dr, dg):
        n_ref, n_got = n_ref + len(rb), n_got + len(gb)
        m = iou_matrix(gb, rb)
        m[gc[:, None] != rc[None, :]] = 0.0
        used = np.zeros(len(rb), bool)
        for i in np.argsort(-gs):
            if not len(rb):
                break
            cand = np.where(used, -1.0, m[i])
            j = int(cand.argmax())
            if cand[j] >= thr_iou:
                used[j] = True
                matched += 1
                ious.append(cand[j])
    return {"precision": matched / n_got if n_got else 1.0, "recall": matched / n_ref if n_ref else 1.0,
            "ref_detections": float(n_ref), "detections": float(n_got),
            "mean_iou": float(np.mean(ious)) if ious else 0.0}


MEASURES: dict[str, Callable[..., dict[str, float]]] = {
    "logits": lambda r, g, p: classes(r, g, p, probabilities=False),
    "probabilities": lambda r, g, p: classes(r, g, p, probabilities=True),
    "binary": binary, "ordinal": ordinal, "embedding": embedding, "regression": regression,
    "detections": detections, "state": state, "other": other,
}
