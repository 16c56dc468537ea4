"""Task metrics handed to ``edgefm compress --metric benchmarks/real_metrics.py:FN`` by the real-model suite:
what a user of the model would check, on the compress-time eval data. fn(ref, got, labels) -> score, higher
is better; edgefm gates on the drop from the fp32 score (``--metric-drop``)."""

import numpy as np


def _mtcnn_px(ref: dict, got: dict, size: int) -> float:
    """Mean pixel error of the box offsets (and landmarks, for ONet) on the crops fp32 calls faces; MTCNN's
    offsets and landmarks are fractions of the ``size``-pixel crop."""
    prob = next(v for v in ref.values() if v.shape[-1] == 2)[:, 1]
    faces = prob > 0.5
    if not faces.any():
        return 0.0
    errs = [np.abs(got[k] - ref[k])[faces].mean() * size for k, v in ref.items() if v.shape[-1] in (4, 10)]
    return float(max(errs))


def mtcnn_onet_px(ref, got, labels=None):
    """ONet (48 px crops): minus the worst of box/landmark mean pixel errors."""
    return -_mtcnn_px(ref, got, 48)


def mtcnn_rnet_px(ref, got, labels=None):
    """RNet (24 px crops): minus the box offsets' mean pixel error."""
    return -_mtcnn_px(ref, got, 24)


def nudenet_detections(ref, got, labels=None):
    """nudenet's own post-processing (score >= 0.2, per-class NMS at IoU 0.45), then the artifact's detections
    matched to fp32's by IoU >= 0.5 and class: the lower of precision and recall."""
    from benchmarks.realdata import match_detections, yolo_detections

    key = next(iter(ref))
    prec, rec, _ = match_detections(yolo_detections(ref[key], conf=0.2), yolo_detections(got[key], conf=0.2))
    return {"score": min(prec, rec), "precision": prec, "recall": rec}
