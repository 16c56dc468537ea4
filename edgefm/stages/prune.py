"""Structured pruning that removes parameters physically (a smaller file and a faster model, not
zeros), plus optional unstructured / N:M sparsity.

* CNNs and RNNs (and mixes): torch-pruning's ``DependencyGraph`` removes coupled channels everywhere
  at once; LSTM/GRU/RNN modules, stacked ones included, go through our ``StackedRNNPruner``
  (prune_rnn.py). By ratio, or by a MACs budget (the ratio is searched), local or global, per-layer
  ratios by name or chosen from a sensitivity analysis, channel counts rounded down to multiples of 8
  for int8 kernels. The output layers (the classifier) keep their outputs.
* BERT-family Transformers: layer dropping, attention heads and FFN neurons (prune_transformer.py);
  the HF config is rewritten so the pruned model saves, loads and exports.
* Sparsity (sparsity.py): unstructured magnitude or N:M, masks kept through distillation.

``prune_model(model, spec, cfg, data)`` never edits ``model``: it returns a pruned copy and the stage
record with parameters, MACs and accuracy (or fidelity to the unpruned model) before and after."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Callable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefm.samples import Samples
from edgefm.bundle import StageRecord
from edgefm.errors import ConfigError
from edgefm.models.spec import ModelSpec

log = logging.getLogger(__name__)


class PruneConfig(BaseModel):
    """How to prune. At least one of ratio, macs_target, heads, num_layers/layers or sparsity."""

    model_config = ConfigDict(extra="forbid")
    ratio: Optional[float] = Field(None, gt=0, lt=1, description=(
        "Share of channels / RNN hidden units / FFN neurons removed (per layer with scope=local, "
        "over the whole model with scope=global)"))
    macs_target: Optional[float] = Field(None, gt=0, lt=1, description=(
        "Keep at most this share of the model's MACs; the channel ratio (or, with auto, the tolerated "
        "per-layer drop) is searched to meet it. CNN/RNN only"))
    scope: Literal["local", "global"] = Field("local", description=(
        "local: every layer loses the same share; global: channels are ranked across layers"))
    layer_ratios: dict[str, float] = Field(default_factory=dict, description=(
        "Per-layer ratio by module name (e.g. features.3: 0.7), overriding ratio for those layers"))
    auto: bool = Field(False, description=(
        "Choose per-layer ratios from a sensitivity analysis on the eval data (needs data)"))
    sensitivity_ratios: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75], description=(
        "Ratios tried per layer by the sensitivity analysis"))
    max_drop: float = Field(1.0, ge=0, description=(
        "auto without macs_target: a layer gets the largest tried ratio whose drop stays within this "
        "(points of top-1 with labels, else points of top-1 agreement / cosine x100 to the unpruned model)"))
    round_to: int = Field(8, ge=1, description="Channel counts left are rounded down to a multiple of this")
    heads: Optional[float] = Field(None, gt=0, lt=1, description="Transformers: share of attention heads removed per layer")
    ffn: Optional[float] = Field(None, gt=0, lt=1, description=(
        "Transformers: share of FFN neurons removed per layer (default: ratio)"))
    num_layers: Optional[int] = Field(None, ge=1, description=(
        "Transformers: layers kept, spread evenly and ending with the last (3 of 6: 1, 3, 5)"))
    layers: Optional[list[int]] = Field(None, description="Transformers: exact layer indices kept (overrides num_layers)")
    layer_choice: Literal["greedy", "spread"] = Field("greedy", description=(
        "Which num_layers layers to keep: greedy drops, one at a time, the layer whose absence changes the "
        "outputs least on the data; spread keeps evenly spaced layers ending with the last"))
    sparsity: Literal["none", "unstructured", "nm"] = Field("none", description=(
        "Zero weights without changing shapes, for sparse kernels (TensorRT on Ampere/Orin): "
        "unstructured magnitude or N:M"))
    sparsity_ratio: float = Field(0.5, gt=0, lt=1, description="unstructured: share of weights zeroed")
    sparsity_pattern: str = Field("2:4", description="nm: keep N of every M weights along the input axis")
    keep: list[str] = Field(default_factory=list, description=(
        "Module names never pruned; the output layers (classifier) always keep their outputs"))

    @model_validator(mode="after")
    def _something_to_do(self) -> "PruneConfig":
        if not (self.ratio or self.macs_target or self.heads or self.ffn or self.num_layers or self.layers
                or self.layer_ratios or self.auto or self.sparsity != "none"):
            raise ValueError("nothing to prune: give ratio, macs_target, layer_ratios, auto, heads, ffn, "
                             "num_layers/layers or sparsity")
        for name, r in self.layer_ratios.items():
            if not 0 <= r < 1:
                raise ValueError(f"layer_ratios[{name}] = {r}: must be in [0, 1)")
        if any(not 0 < r < 1 for r in self.sensitivity_ratios):
            raise ValueError("sensitivity_ratios must lie strictly between 0 and 1")
        return self


# --- calling a model the way every torch-side stage does: model(*inputs in spec order) -------------

def to_args(spec: ModelSpec, feed: dict[str, np.ndarray]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in spec.input_names)


def outputs(model, spec: ModelSpec, samples: Samples, batch: int = 256) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on ``samples`` by output name (eval mode, no grad)."""
    import torch

    was = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for b in samples.batches(batch):
            out = model(*to_args(spec, b.inputs))
            out = out if isinstance(out, (tuple, list)) else (out,)
            names = spec.output_names or [f"output_{i}" for i in range(len(out))]
            for name, t in zip(names, out):
                parts.setdefault(name, []).append(t.detach().float().numpy())
    model.train(was)
    return {k: np.concatenate(v) for k, v in parts.items()}


def quality(spec: ModelSpec, ref: dict[str, np.ndarray], got: dict[str, np.ndarray],
            labels: Optional[np.ndarray]) -> dict[str, float]:
    """The figures a pruning/distillation decision is made on: top-1 (with labels), top-1 agreement
    and cosine to the reference model. ``score`` is the one used to rank: top-1 with labels, else
    top-1 agreement for logits, else cosine — all in points (x100)."""
    from edgefm.fidelity import evaluate

    m = evaluate(spec, ref, got, labels)
    first = next(k for k in m if not k.startswith("_"))
    q: dict[str, float] = {"cosine": m[first]["cosine"]}
    if "top1_agreement" in m[first]:
        q["top1_agreement"] = m[first]["top1_agreement"]
    if "_accuracy" in m:
        q["top1"] = m["_accuracy"]["top1"]
    q["score"] = 100.0 * q.get("top1", q.get("top1_agreement", q["cosine"]))
    return q


def output_layers(model, args: tuple) -> list:
    """Linear/Conv modules whose outputs are the model's outputs (the classifier), or else the last
    one that ran. Their output channels are never pruned."""
    import torch
    from torch import nn

    order: list[tuple[Any, Any]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append((mod, o)))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        with torch.no_grad():
            out = model(*args)
    finally:
        for h in hooks:
            h.remove()
    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(o, torch.Tensor)]
    found = [mod for mod, o in order if any(o is t for t in outs)]
    return found or ([order[-1][0]] if order else [])


def named_modules(model):
    """``model.named_modules()`` with names as the user wrote the model: the wrapper edgefm's loader puts
    around it (``SpecModule.inner``) does not appear in them."""
    from edgefm.models.wrap import SpecModule

    return (model.inner if isinstance(model, SpecModule) else model).named_modules()


def _named(model, names: list[str], what: str) -> list:
    mods = dict(named_modules(model))
    missing = [n for n in names if n not in mods]
    if missing:
        known = [n for n, m in named_modules(model) if n and not list(m.children())][:12]
        raise ConfigError(f"{what}: no module named {missing}; layers are e.g. {known}")
    return [mods[n] for n in names]


# --- CNN / RNN through torch-pruning --------------------------------------------------------------

def _tp_prune(model, args: tuple, cfg: PruneConfig, ratio: float, layer_ratios: dict[str, float]) -> None:
    """One torch-pruning pass on ``model`` in place."""
    import torch_pruning as tp
    from torch import nn

    from edgefm.stages.prune_rnn import RNNAwareImportance, StackedRNNPruner, opaque_rnns

    rnn = StackedRNNPruner()
    ignored = output_layers(model, args) + _named(model, cfg.keep, "prune.keep")
    per_layer = {m: r for m, r in zip(_named(model, list(layer_ratios), "prune.layer_ratios"),
                                      layer_ratios.values())}
    ignored += [m for m, r in per_layer.items() if r == 0]
    per_layer = {m: r for m, r in per_layer.items() if r > 0}
    roots = [nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LSTM, nn.GRU, nn.RNN]
    with opaque_rnns(model):
        pruner = tp.pruner.BasePruner(
            model, args, RNNAwareImportance(rnn), global_pruning=cfg.scope == "global",
            pruning_ratio=ratio, pruning_ratio_dict=per_layer or None, ignored_layers=ignored,
            round_to=cfg.round_to if cfg.round_to > 1 else None, max_pruning_ratio=0.95,
            customized_pruners={nn.LSTM: rnn, nn.GRU: rnn, nn.RNN: rnn}, root_module_types=roots)
    pruner.step()


def prunable_layers(model, args: tuple, cfg: PruneConfig) -> list[str]:
    """Names of the layers whose output channels a ratio applies to (group roots torch-pruning would
    prune), in model order — the rows of the sensitivity table."""
    from torch import nn

    outs = set(output_layers(model, args)) | set(_named(model, cfg.keep, "prune.keep"))
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.LSTM, nn.GRU, nn.RNN)
    names = []
    for name, m in named_modules(model):
        if isinstance(m, kinds) and m not in outs and not (isinstance(m, nn.Conv2d) and m.groups > 1
                                                           and m.groups == m.in_channels):
            names.append(name)
    return names


def pruned_copy(model, args: tuple, cfg: PruneConfig, ratio: float = 0.0,
                layer_ratios: Optional[dict[str, float]] = None):
    """A deep copy of ``model`` pruned by torch-pruning at ``ratio`` (and per-layer ratios)."""
    m = copy.deepcopy(model)
    lr = dict(cfg.layer_ratios if layer_ratios is None else layer_ratios)
    if ratio > 0 or any(r > 0 for r in lr.values()):
        _tp_prune(m, args, cfg, ratio, lr)
    return m


def _search_ratio(fits: Callable[[float], bool], step: float = 0.1, refine: int = 4) -> Optional[float]:
    """Smallest ratio for which ``fits`` holds: scan upwards in ``step``s, then bisect the last step.

    A scan rather than a plain bisection because MACs are not monotone in the ratio at the top end:
    with channel rounding a layer can round to nothing, which torch-pruning then leaves unpruned."""
    prev, hit = 0.0, None
    r = step
    while r < 0.951:
        if fits(r):
            hit = r
            break
        prev, r = r, round(r + step, 6)
    if hit is None:
        return None
    lo, hi = prev, hit
    for _ in range(refine):
        mid = (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _structured_tp(model, spec: ModelSpec, cfg: PruneConfig, data: Optional[Samples], args: tuple,
                   notes: list[str], extra: dict[str, Any]):
    from edgefm.stages import macs as macs_mod

    base_macs, _ = macs_mod.count(model, args)
    layer_ratios = dict(cfg.layer_ratios)
    if cfg.auto:
        if data is None or len(data) == 0:
            raise ConfigError("prune.auto needs eval data for its sensitivity analysis")
        from edgefm.stages.sensitivity import analyze, choose_ratios

        table = analyze(model, spec, cfg, data)
        extra["sensitivity"] = table.as_dict()
        macs_of = (lambda lr: macs_mod.count(pruned_copy(model, args, cfg, 0.0, lr), args)[0] / base_macs)
        layer_ratios.update(choose_ratios(table, cfg, macs_of))
        notes.append("per-layer ratios from sensitivity: " + ", ".join(f"{k}={v:g}" for k, v in layer_ratios.items()))
        return pruned_copy(model, args, cfg, 0.0, layer_ratios)
    ratio = cfg.ratio or 0.0
    if cfg.macs_target:
        def fits(r: float) -> bool:
            return macs_mod.count(pruned_copy(model, args, cfg, r, layer_ratios), args)[0] <= cfg.macs_target * base_macs

        found = _search_ratio(fits)
        if found is None:
            raise ConfigError(f"prune.macs_target {cfg.macs_target}: no channel ratio up to 0.95 brings the "
                              f"MACs that low (layers kept: output layers and {cfg.keep or 'none'})")
        ratio = found
        notes.append(f"ratio {ratio:.3f} found for macs_target {cfg.macs_target}")
        extra["searched_ratio"] = round(ratio, 4)
    return pruned_copy(model, args, cfg, ratio, layer_ratios)


# --- Transformers ----------------------------------------------------------------------------------

def _structured_transformer(model, hf, spec: ModelSpec, cfg: PruneConfig, data: Optional[Samples],
                            notes: list[str]):
    from edgefm.stages import prune_transformer as pt

    if cfg.macs_target or cfg.auto or cfg.layer_ratios:
        raise ConfigError("macs_target, auto and layer_ratios apply to CNN/RNN channels; for Transformers "
                          "use num_layers/layers, heads and ffn (or ratio)")
    model = copy.deepcopy(model)
    hf = pt.find_encoder(model)
    total = len(pt.layers(hf))
    batches = [to_args(spec, b.inputs) for b in data.take(slice(0, 128)).batches(32)] if data else []
    keep = cfg.layers
    if keep is None and cfg.num_layers:
        if cfg.layer_choice == "greedy" and batches:
            keep = pt.choose_layers(model, hf, cfg.num_layers, batches[:2])
        else:
            keep = pt.spread_layers(total, cfg.num_layers)
    if keep is not None and keep != list(range(total)):
        pt.drop_layers(hf, keep)
        notes.append(f"kept layers {keep} of {total}" + (f" ({cfg.layer_choice})" if cfg.layers is None else ""))
    ffn = cfg.ffn if cfg.ffn is not None else cfg.ratio
    if cfg.heads or ffn:
        mask_index = next((i for i, s in enumerate(spec.inputs) if "mask" in s.name), None)
        head_s, ffn_s = pt.importance(model, hf, batches, mask_index)
        if cfg.heads:
            kept = pt.prune_heads(hf, cfg.heads, head_s)
            notes.append(f"heads kept per layer {kept}")
        if ffn:
            width = pt.prune_ffn(hf, ffn, ffn_s, cfg.round_to)
            notes.append(f"FFN width {width} in every layer")
    return model


# --- the stage -------------------------------------------------------------------------------------

def prune_model(model, spec: ModelSpec, cfg: PruneConfig, data: Optional[Samples] = None):
    """Prune a copy of ``model`` as ``cfg`` says; returns ``(pruned, StageRecord)``.

    ``data`` (eval samples, labels optional) provides example inputs for tracing, data-driven
    importance for Transformers, the sensitivity analysis, and the before/after figures."""
    from edgefm.stages import macs as macs_mod
    from edgefm.stages import prune_transformer as pt
    from edgefm.stages import sparsity

    t0 = time.perf_counter()
    if data is None or len(data) == 0:
        raise ConfigError("pruning needs example data (calibration or eval samples) to trace the model")
    args = to_args(spec, data.take(slice(0, 2)).inputs)
    model.eval()
    notes: list[str] = []
    extra: dict[str, Any] = {}
    before_macs, before_params = macs_mod.count(model, args)
    hf = pt.find_encoder(model)
    structured = any([cfg.ratio, cfg.macs_target, cfg.heads, cfg.ffn, cfg.num_layers, cfg.layers,
                      cfg.layer_ratios, cfg.auto])
    if not structured:
        pruned = copy.deepcopy(model)
    elif hf is not None:
        pruned = _structured_transformer(model, hf, spec, cfg, data, notes)
    else:
        if cfg.heads or cfg.ffn or cfg.num_layers or cfg.layers:
            raise ConfigError("heads, ffn and num_layers/layers apply to Transformer encoders; "
                              f"this {spec.family} model has none")
        if spec.family == "transformer":
            raise ConfigError(f"structured pruning of Transformers supports BERT-family encoders (encoder.layer); "
                              f"{spec.arch or 'this model'} has another layout — sparsity still works")
        pruned = _structured_tp(model, spec, cfg, data, args, notes, extra)
    if cfg.sparsity != "none":
        skip = output_layers(pruned, args)
        s = sparsity.apply(pruned, "nm" if cfg.sparsity == "nm" else "unstructured", cfg.sparsity_ratio,
                           cfg.sparsity_pattern, skip=skip)
        extra["sparsity"] = round(s["sparsity"], 4)
        notes.append(f"{cfg.sparsity} sparsity {s['sparsity']:.3f} (masks kept for fine-tuning)")
    pruned.eval()
    after_macs, after_params = macs_mod.count(pruned, args)
    eval_set = data.take(slice(0, min(len(data), 1024)))
    ref, got = outputs(model, spec, eval_set), outputs(pruned, spec, eval_set)
    q_before = quality(spec, ref, ref, eval_set.labels)
    q_after = quality(spec, ref, got, eval_set.labels)
    metrics = {"params_before": before_params, "params_after": after_params,
               "macs_before": before_macs, "macs_after": after_macs,
               "macs_ratio": round(after_macs / max(1, before_macs), 4),
               "before": q_before, "after": q_after, **extra}
    settings = cfg.model_dump(mode="json", exclude_defaults=True)
    log.info("pruned: params %d → %d, MACs %d → %d", before_params, after_params, before_macs, after_macs)
    return pruned, StageRecord(name="prune", settings=settings, seconds=round(time.perf_counter() - t0, 3),
                               metrics=metrics, notes=notes)
