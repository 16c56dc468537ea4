"""2:4 structured sparsity on the weights of an ONNX model, for the sparse tensor cores of Ampere-class GPUs
(compute capability 8.0 and up; Jetson Orin is 8.7).

In every group of four consecutive weights along the reduction axis (input channels of a Conv, K of a
Gemm/MatMul) the two smallest magnitudes are set to zero; TensorRT then picks sparse kernels where they
are faster (builder flag SPARSE_WEIGHTS). Pruning without fine-tuning costs accuracy, which the compile
step measures like any other. Layers too small for sparse kernels to pay are left dense, with a warning."""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)


def _reduction_layout(node, weight: np.ndarray) -> Optional[tuple[np.ndarray, int, int]]:
    """(weights as [outputs, reduction] view, n_out, n_reduce) for the layers TensorRT can run sparse."""
    if node.op_type == "Conv":
        k, c = weight.shape[0], weight.shape[1]
        # groups of four along input channels, for every (out channel, kernel position)
        return np.moveaxis(weight, 1, -1).reshape(-1, c), k, c * int(np.prod(weight.shape[2:]))
    if node.op_type == "Gemm" and weight.ndim == 2:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        w = weight if trans_b else weight.T
        return w, w.shape[0], w.shape[1]
    if node.op_type == "MatMul" and weight.ndim == 2:
        return weight.T, weight.shape[1], weight.shape[0]
    return None


def prune_2_4(rows: np.ndarray) -> np.ndarray:
    """Zero the two smallest-magnitude values of every group of four along the last axis."""
    groups = rows.reshape(-1, 4)
    drop = np.argsort(np.abs(groups), axis=1)[:, :2]
    out = groups.copy()
    np.put_along_axis(out, drop, 0, axis=1)
    return out.reshape(rows.shape)


def is_2_4(rows: np.ndarray) -> bool:
    """True when every group of four along the last axis holds at most two non-zeros."""
    return bool(rows.shape[-1] % 4 == 0 and ((rows.reshape(-1, 4) != 0).sum(1) <= 2).all())


def apply_2_4(model, min_channels: int = 64) -> dict[str, Any]:
    """Prune the weights of Conv/Gemm/MatMul layers of ``model`` (in place) to the 2:4 pattern.

    Layers whose output channels or reduction length are below ``min_channels``, whose group count is not 1,
    or whose reduction length is not a multiple of 4 are left dense and reported under ``skipped``."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    report: dict[str, Any] = {"pruned": [], "skipped": [], "min_channels": min_channels}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        weight = numpy_helper.to_array(init)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        layout = _reduction_layout(node, weight)
        if layout is None:
            continue
        rows, n_out, n_red = layout
        reason = None
        if groups != 1:
            reason = f"grouped convolution (group={groups}) has no sparse kernel"
        elif rows.shape[-1] % 4:
            reason = f"reduction length {rows.shape[-1]} is not a multiple of 4"
        elif min(n_out, n_red) < min_channels:
            reason = (f"too small for sparse kernels to pay ({n_out} outputs x {n_red} reduction < "
                      f"{min_channels})")
        if reason:
            report["skipped"].append({"node": node.name, "op": node.op_type, "reason": reason})
            continue
        pruned = prune_2_4(rows)
        if node.op_type == "Conv":
            new = np.moveaxis(pruned.reshape(weight.shape[0], *weight.shape[2:], weight.shape[1]), -1, 1)
        elif node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
            new = pruned.T
        elif node.op_type == "MatMul":
            new = pruned.T
        else:
            new = pruned
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new, dtype=weight.dtype), init.name))
        report["pruned"].append({"node": node.name, "op": node.op_type, "weights": int(weight.size)})
    if report["skipped"]:
        log.warning("2:4 sparsity: %d layer(s) left dense: %s", len(report["skipped"]),
                    "; ".join(f"{s['node']}: {s['reason']}" for s in report["skipped"]))
    if not report["pruned"]:
        log.warning("2:4 sparsity: no layer of this model is large enough for sparse kernels to pay")
    return report
