"""Structured pruning of Hugging Face BERT-family encoders: layer dropping, attention heads, FFN neurons.

Supported layout (BertModel, RobertaModel, XLMRobertaModel, ElectraModel …): ``encoder.layer[i]`` with
``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``.
Only ``BertModel`` is exercised by our tests.

So that the pruned model still saves, loads and exports:

* layer dropping rewrites ``config.num_hidden_layers``;
* FFN neurons are pruned by the same count in every layer (the neurons differ per layer), so
  ``config.intermediate_size`` stays one number and a stock ``AutoModel.from_pretrained`` loads it;
* attention heads cannot be described by a stock config (BERT derives the head size from
  ``hidden_size / num_attention_heads``, and transformers 5 removed ``prune_heads``/``pruned_heads``),
  so heads kept per layer are recorded in ``config.edgefm_structure``; ``load_pruned`` (and
  ``restore_structure`` for other loaders) rebuilds those shapes before loading the weights.

Importance is measured on data when there is some (a head's contribution ``‖W_o[:, head]·ctx_head‖``,
an FFN neuron's ``E|a_j|·‖W_down[:, j]‖``, padding tokens left out), else on weight magnitudes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch_pruning.pruner import function as tpf

from edgefm.errors import CheckpointError, ConfigError

STRUCTURE_KEY = "edgefm_structure"


def find_encoder(model: nn.Module) -> Optional[nn.Module]:
    """The BERT-family model inside ``model`` (itself or a wrapped submodule), or None."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        enc = getattr(m, "encoder", None)
        if cfg is not None and hasattr(cfg, "num_hidden_layers") and isinstance(getattr(enc, "layer", None),
                                                                                  nn.ModuleList):
            return m
    return None


def layers(hf: nn.Module) -> nn.ModuleList:
    return hf.encoder.layer


def _check_layout(hf: nn.Module) -> None:
    lay = layers(hf)[0]
    try:
        lay.attention.self.query, lay.attention.output.dense, lay.intermediate.dense, lay.output.dense
    except AttributeError:
        raise ConfigError(f"head/FFN pruning supports BERT-family layouts (attention.self.query …); "
                          f"{type(hf).__name__} has another layout (layer dropping still works)") from None


def head_size(hf: nn.Module) -> int:
    return hf.config.hidden_size // hf.config.num_attention_heads


def structure(hf: nn.Module) -> dict[str, Any]:
    """What differs from a stock config: heads and FFN width per layer, and where the layers came from."""
    old = dict(getattr(hf.config, STRUCTURE_KEY, None) or {})
    d = head_size(hf)
    lays = layers(hf)
    return {"heads": [lay.attention.self.query.out_features // d for lay in lays],
            "intermediate": [lay.intermediate.dense.out_features for lay in lays],
            "source_layers": old.get("source_layers", list(range(len(lays)))),
            "source_num_layers": old.get("source_num_layers", len(lays))}


def _write_config(hf: nn.Module) -> None:
    st = structure(hf)
    hf.config.num_hidden_layers = len(layers(hf))
    if len(set(st["intermediate"])) == 1:
        hf.config.intermediate_size = st["intermediate"][0]
    setattr(hf.config, STRUCTURE_KEY, st)


def drop_layers(hf: nn.Module, keep: list[int]) -> None:
    """Keep only encoder layers ``keep`` (in that order) and rewrite the config."""
    lays = layers(hf)
    n = len(lays)
    if not keep or len(set(keep)) != len(keep) or any(not 0 <= i < n for i in keep):
        raise ConfigError(f"prune.layers {keep}: need distinct layer indices in 0..{n - 1}")
    src = structure(hf)["source_layers"]
    new = nn.ModuleList([lays[i] for i in keep])
    for i, lay in enumerate(new):  # layer_idx indexes KV caches; keep it consistent with the new order
        for m in lay.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    hf.encoder.layer = new
    st = getattr(hf.config, STRUCTURE_KEY, None) or {}
    setattr(hf.config, STRUCTURE_KEY, {**st, "source_layers": [src[i] for i in keep],
                                       "source_num_layers": st.get("source_num_layers", n)})
    _write_config(hf)


def spread_layers(total: int, keep: int) -> list[int]:
    """``keep`` layers spread evenly over ``total`` and ending with the last one (for 3 of 6: 1, 3, 5),
    so student layer i starts from the teacher layer it is later matched to in distillation."""
    if not 1 <= keep <= total:
        raise ConfigError(f"prune.num_layers {keep}: must be between 1 and the model's {total} layers")
    return [round((i + 1) * total / keep) - 1 for i in range(keep)]


def choose_layers(model, hf: nn.Module, keep: int, batches: list[tuple]) -> list[int]:
    """Greedy backward elimination: drop, one at a time, the layer whose absence moves ``model``'s first
    output least (mean cosine to the full model on ``batches``) until ``keep`` layers remain. For
    all-MiniLM-L6-v2 and 3 of 6 this keeps 0, 4, 5 (cosine 0.77 before distillation, against 0.60 for
    the evenly spread 1, 3, 5)."""
    full = layers(hf)
    if not 1 <= keep <= len(full):
        raise ConfigError(f"prune.num_layers {keep}: must be between 1 and the model's {len(full)} layers")

    def first(out):
        return (out[0] if isinstance(out, (tuple, list)) else out).flatten(1).float()

    with torch.no_grad():
        ref = [first(model(*b)) for b in batches]

        def score(subset: list[int]) -> float:
            hf.encoder.layer = nn.ModuleList([full[i] for i in subset])
            try:
                cos = [torch.nn.functional.cosine_similarity(first(model(*b)), r, dim=1) for b, r in zip(batches, ref)]
            finally:
                hf.encoder.layer = full
            return float(torch.cat(cos).mean())

        current = list(range(len(full)))
        while len(current) > keep:
            current = max(([i for i in current if i != drop] for drop in current), key=score)
    return current


def _slice_heads(lay: nn.Module, keep_heads: list[int], d: int) -> None:
    att = lay.attention.self
    n = att.query.out_features // d
    drop = [j for h in range(n) if h not in keep_heads for j in range(h * d, (h + 1) * d)]
    if drop:
        for lin in (att.query, att.key, att.value):
            tpf.prune_linear_out_channels(lin, drop)
        tpf.prune_linear_in_channels(lay.attention.output.dense, drop)
    att.num_attention_heads = len(keep_heads)
    att.all_head_size = len(keep_heads) * d


def _slice_ffn(lay: nn.Module, keep: list[int]) -> None:
    drop = sorted(set(range(lay.intermediate.dense.out_features)) - set(keep))
    if drop:
        tpf.prune_linear_out_channels(lay.intermediate.dense, drop)
        tpf.prune_linear_in_channels(lay.output.dense, drop)


class _Collector:
    """Accumulates per-layer head and FFN-neuron importance from forward hooks."""

    def __init__(self, hf: nn.Module):
        self.hf, self.d = hf, head_size(hf)
        n = len(layers(hf))
        self.heads: list[Optional[torch.Tensor]] = [None] * n
        self.ffn: list[Optional[torch.Tensor]] = [None] * n
        self.mask: Optional[torch.Tensor] = None  # (N, L) token mask of the current batch

    def _tok(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, C) → (tokens, C), padding left out when the batch has an attention mask."""
        if self.mask is not None and self.mask.shape == x.shape[:2]:
            return x[self.mask.bool()]
        return x.reshape(-1, x.shape[-1])

    def hooks(self) -> list:
        hs = []
        for i, lay in enumerate(layers(self.hf)):
            hs.append(lay.attention.output.dense.register_forward_pre_hook(self._head_hook(i, lay)))
            hs.append(lay.output.dense.register_forward_pre_hook(self._ffn_hook(i, lay)))
        return hs

    def _head_hook(self, i: int, lay: nn.Module):
        def hook(mod, args):
            ctx = self._tok(args[0].detach())
            w = mod.weight.detach()
            n = w.shape[1] // self.d
            score = torch.stack([(ctx[:, h * self.d:(h + 1) * self.d] @ w[:, h * self.d:(h + 1) * self.d].T)
                                 .norm(dim=1).sum() for h in range(n)])
            self.heads[i] = score if self.heads[i] is None else self.heads[i] + score
        return hook

    def _ffn_hook(self, i: int, lay: nn.Module):
        def hook(mod, args):
            act = self._tok(args[0].detach()).abs().sum(0)
            score = act * mod.weight.detach().norm(dim=0)
            self.ffn[i] = score if self.ffn[i] is None else self.ffn[i] + score
        return hook


def importance(model: nn.Module, hf: nn.Module, batches: list[tuple], mask_index: Optional[int]
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(head scores, FFN neuron scores) per layer: from ``model(*batch)`` when there are batches,
    else from weight magnitudes. ``mask_index`` is the position of the attention mask in a batch."""
    d = head_size(hf)
    if not batches:
        heads, ffn = [], []
        for lay in layers(hf):
            w = lay.attention.output.dense.weight.detach()
            heads.append(torch.stack([w[:, h * d:(h + 1) * d].norm() for h in range(w.shape[1] // d)]))
            ffn.append(lay.output.dense.weight.detach().norm(dim=0) * lay.intermediate.dense.weight.detach().norm(dim=1))
        return heads, ffn
    col = _Collector(hf)
    handles = col.hooks()
    try:
        with torch.no_grad():
            for batch in batches:
                col.mask = batch[mask_index] if mask_index is not None else None
                model(*batch)
    finally:
        for h in handles:
            h.remove()
    return col.heads, col.ffn


def prune_heads(hf: nn.Module, ratio: float, scores: list[torch.Tensor]) -> list[int]:
    """Remove ``ratio`` of the heads in every layer (the least important ones); returns heads kept per layer."""
    _check_layout(hf)
    d, kept = head_size(hf), []
    for lay, s in zip(layers(hf), scores):
        n = s.numel()
        k = max(1, n - int(round(ratio * n)))
        keep = sorted(torch.topk(s, k).indices.tolist())
        _slice_heads(lay, keep, d)
        kept.append(k)
    _write_config(hf)
    return kept


def prune_ffn(hf: nn.Module, ratio: float, scores: list[torch.Tensor], round_to: int) -> int:
    """Remove ``ratio`` of the FFN neurons in every layer, the same count everywhere (rounded down to
    a multiple of ``round_to``); returns the new intermediate size."""
    _check_layout(hf)
    width = layers(hf)[0].intermediate.dense.out_features
    k = width - int(round(ratio * width))
    if round_to > 1:
        k = max(round_to, k - k % round_to)
    k = max(1, min(k, width))
    for lay, s in zip(layers(hf), scores):
        _slice_ffn(lay, sorted(torch.topk(s, k).indices.tolist()))
    _write_config(hf)
    return k


def restore_structure(hf: nn.Module, st: dict[str, Any]) -> None:
    """Give a freshly built model (from a rewritten config) the recorded per-layer shapes, so that the
    pruned weights load into it. Values are placeholders until the state dict is loaded."""
    d = head_size(hf)
    lays = layers(hf)
    if len(st.get("heads", [])) != len(lays) or len(st.get("intermediate", [])) != len(lays):
        raise CheckpointError(f"config {STRUCTURE_KEY} describes {len(st.get('heads', []))} layers, "
                              f"the model has {len(lays)}")
    for lay, n_heads, width in zip(lays, st["heads"], st["intermediate"]):
        _slice_heads(lay, list(range(n_heads)), d)
        _slice_ffn(lay, list(range(width)))


def load_pruned(folder: Path):
    """Load a model saved with ``save_pretrained`` after pruning (stock loader when no heads were pruned)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    st = getattr(config, STRUCTURE_KEY, None)
    if not st:
        return AutoModel.from_pretrained(folder)
    model = AutoModel.from_config(config)
    restore_structure(model, st)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no .safetensors weights next to config.json")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not fit the recorded structure "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
