"""Unstructured magnitude sparsity and N:M (e.g. 2:4) sparsity, for targets whose kernels exploit
zeros (TensorRT sparse tensor cores on Ampere/Orin). Unlike structured pruning, shapes stay the same:
the file and a dense CPU kernel do not get smaller or faster.

Masks are chosen with ``torch.nn.utils.prune`` (global L1 magnitude) or by N:M magnitude groups, the
zeros are written into the weights, and each mask stays on its module (``module.edgefm_mask``, a plain
attribute: not in the state dict, not exported). ``keep_masks`` re-attaches them as
``torch.nn.utils.prune`` reparametrisations during fine-tuning, so the zeros stay zero."""

from __future__ import annotations

import re
from typing import Iterable, Optional

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from edgefm.errors import ConfigError

MASK_ATTR = "edgefm_mask"
_NM = re.compile(r"^(\d+):(\d+)$")


def parse_nm(pattern: str) -> tuple[int, int]:
    """'2:4' → (2, 4): keep N of every M consecutive weights along the input axis."""
    m = _NM.match(pattern)
    if not m or not 0 < int(m[1]) < int(m[2]):
        raise ConfigError(f"sparsity pattern '{pattern}': expected N:M with 0 < N < M, e.g. 2:4")
    return int(m[1]), int(m[2])


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` largest-magnitude weights of every ``m`` consecutive ones along the input axis
    (the layout sparse tensor cores read); rows whose input width is not a multiple of ``m`` get a
    dense tail."""
    w = weight.detach()
    rows = w.reshape(w.shape[0], -1)
    cols = rows.shape[1] - rows.shape[1] % m
    mask = torch.ones_like(rows)
    if cols:
        groups = rows[:, :cols].abs().reshape(rows.shape[0], -1, m)
        drop = torch.topk(groups, m - n, dim=-1, largest=False).indices
        gm = torch.ones_like(groups).scatter_(-1, drop, 0.0)
        mask[:, :cols] = gm.reshape(rows.shape[0], cols)
    return mask.reshape(w.shape)


def targets(model: nn.Module, skip: Iterable[nn.Module] = ()) -> list[nn.Module]:
    """Linear and Conv modules whose weights are sparsified (``skip``: e.g. the classifier)."""
    skip = set(skip)
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
            and m not in skip]


def apply(model: nn.Module, mode: str, ratio: float = 0.5, pattern: str = "2:4",
          skip: Iterable[nn.Module] = ()) -> dict[str, float]:
    """Zero weights in place and remember the masks. ``mode``: ``unstructured`` (global L1 magnitude at
    ``ratio``) or ``nm`` (``pattern`` N:M). Returns {"sparsity": share of zeros in the targeted weights}."""
    mods = targets(model, skip)
    if not mods:
        raise ConfigError("sparsity: the model has no Linear/Conv weights to sparsify")
    if mode == "unstructured":
        if not 0 < ratio < 1:
            raise ConfigError(f"prune.sparsity_ratio {ratio}: must be between 0 and 1")
        tprune.global_unstructured([(m, "weight") for m in mods], pruning_method=tprune.L1Unstructured,
                                   amount=ratio)
        masks = {m: m.weight_mask.detach().clone() for m in mods}
        for m in mods:
            tprune.remove(m, "weight")
    elif mode == "nm":
        n, mm = parse_nm(pattern)
        masks = {m: nm_mask(m.weight, n, mm) for m in mods}
        with torch.no_grad():
            for m, mask in masks.items():
                m.weight.mul_(mask)
    else:
        raise ConfigError(f"sparsity mode '{mode}': expected unstructured or nm")
    for m, mask in masks.items():
        setattr(m, MASK_ATTR, mask)
    zeros = sum(int((m.weight == 0).sum()) for m in mods)
    return {"sparsity": zeros / sum(m.weight.numel() for m in mods)}


def has_masks(model: nn.Module) -> bool:
    return any(getattr(m, MASK_ATTR, None) is not None for m in model.modules())


class keep_masks:
    """Context manager for fine-tuning: each masked module computes ``weight = weight_orig * mask``
    (``torch.nn.utils.prune.custom_from_mask``), so gradients never revive a zero; on exit the masks
    are folded back into plain weights."""

    def __init__(self, model: nn.Module):
        self.mods: list[nn.Module] = [m for m in model.modules() if getattr(m, MASK_ATTR, None) is not None]

    def __enter__(self):
        for m in self.mods:
            tprune.custom_from_mask(m, "weight", getattr(m, MASK_ATTR).to(m.weight.device))
        return self

    def __exit__(self, *exc):
        for m in self.mods:
            if tprune.is_pruned(m):
                tprune.remove(m, "weight")
        return False


def measured(model: nn.Module, skip: Optional[Iterable[nn.Module]] = None) -> float:
    """Share of exact zeros in the Linear/Conv weights of ``model``."""
    mods = targets(model, skip or ())
    return sum(int((m.weight == 0).sum()) for m in mods) / max(1, sum(m.weight.numel() for m in mods))
