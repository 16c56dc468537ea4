"""Hidden-unit pruning of LSTM, GRU and plain RNN modules, stacked and bidirectional ones included.

torch-pruning 1.6 ships an LSTM pruner that asserts ``num_layers == 1``, slices the recurrent and
input weights along the wrong axes, and has no GRU pruner at all. We register this pruner with its
``DependencyGraph`` instead, so the graph still finds every consumer of the RNN's output (the
classifier's input columns, a following layer …) and this class only has to be right about the RNN.

The rule for a stack of ``L`` layers. ``nn.LSTM`` has ONE ``hidden_size`` for all its layers, so every
layer keeps the same number of units, but not the same units:

* the last layer's units are the module's output channels: the dependency graph picks them (they are
  coupled with the consumers) and passes them in as ``idxs``;
* each lower layer ``l`` drops the same number of its own least important units, ranked by the L2
  norm of everything that belongs to a unit: its rows in every gate of ``W_ih_l``/``W_hh_l``/biases,
  its column in ``W_hh_l`` (what the recurrence reads) and its column in ``W_ih_{l+1}`` (what the
  next layer reads);
* layer ``l+1``'s input columns follow layer ``l``'s choice; for a bidirectional stack the next layer
  reads ``[forward units, backward units]`` and both halves are sliced;
* a bidirectional module's output is ``[fwd, bwd]``: ``get_out_channel_groups`` returns 2 so the
  pruner removes the same unit positions in both directions (the count must match; one hidden_size).

``proj_size`` LSTMs are refused (the projection would need its own rule)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch_pruning.pruner import function
from torch_pruning.pruner.importance import GroupMagnitudeImportance

from edgefm.errors import ConfigError

RNN_TYPES = (nn.LSTM, nn.GRU, nn.RNN)


def _gates(layer: nn.Module) -> int:
    return 4 if isinstance(layer, nn.LSTM) else 3 if isinstance(layer, nn.GRU) else 1


def _sfx(layer: nn.Module) -> tuple[str, ...]:
    return ("", "_reverse") if layer.bidirectional else ("",)


def _gate_rows(keep: torch.Tensor, hidden: int, gates: int) -> torch.Tensor:
    """Row indices of units ``keep`` in every gate block of a (gates*hidden, ·) weight."""
    return torch.cat([keep + g * hidden for g in range(gates)])


def _unit_norms(layer: nn.Module, l: int, sfx: str) -> torch.Tensor:
    """Squared L2 norm per hidden unit of layer ``l``/direction ``sfx`` (see the module docstring)."""
    h, g = layer.hidden_size, _gates(layer)
    w_ih, w_hh = getattr(layer, f"weight_ih_l{l}{sfx}"), getattr(layer, f"weight_hh_l{l}{sfx}")
    norms = w_ih.detach().pow(2).sum(1).view(g, h).sum(0) + w_hh.detach().pow(2).sum(1).view(g, h).sum(0)
    norms = norms + w_hh.detach().pow(2).sum(0)
    if layer.bias:
        for b in ("bias_ih", "bias_hh"):
            norms = norms + getattr(layer, f"{b}_l{l}{sfx}").detach().pow(2).view(g, h).sum(0)
    if l + 1 < layer.num_layers:
        offset = 0 if sfx == "" else h
        for nxt in _sfx(layer):
            norms = norms + getattr(layer, f"weight_ih_l{l + 1}{nxt}").detach()[:, offset:offset + h].pow(2).sum(0)
    return norms


def _set(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    # RNNBase.__setattr__ keeps its _flat_weights list in step with the new Parameter.
    setattr(layer, name, nn.Parameter(value.contiguous(), requires_grad=getattr(layer, name).requires_grad))


class StackedRNNPruner(function.BasePruningFunc):
    """torch-pruning pruner for nn.LSTM / nn.GRU / nn.RNN of any depth (rule in the module docstring)."""

    TARGET_MODULES = RNN_TYPES

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        if getattr(layer, "proj_size", 0):
            raise ConfigError(f"pruning an LSTM with proj_size={layer.proj_size} is not supported")
        h, g, dirs = layer.hidden_size, _gates(layer), _sfx(layer)
        idxs = sorted(set(int(i) for i in idxs))
        drop_last = sorted({i % h for i in idxs})  # bidirectional: same positions in both halves
        n_keep = h - len(drop_last)
        if n_keep < 1:
            raise ConfigError(f"pruning would leave {type(layer).__name__} with no hidden units")
        keep_last = torch.tensor([i for i in range(h) if i not in set(drop_last)])
        keeps: list[torch.Tensor] = []  # per layer: units kept (same for every direction of the layer)
        for l in range(layer.num_layers):
            if l == layer.num_layers - 1:
                keeps.append(keep_last)
            else:
                score = sum(_unit_norms(layer, l, s) for s in dirs)
                keeps.append(torch.sort(torch.topk(score, n_keep).indices).values)
        for l, keep in enumerate(keeps):
            rows = _gate_rows(keep, h, g)
            in_cols = None
            if l > 0:
                prev = keeps[l - 1]
                in_cols = torch.cat([prev + d * h for d in range(len(dirs))])
            for s in dirs:
                w_ih = getattr(layer, f"weight_ih_l{l}{s}").data[rows]
                _set(layer, f"weight_ih_l{l}{s}", w_ih[:, in_cols] if in_cols is not None else w_ih)
                _set(layer, f"weight_hh_l{l}{s}", getattr(layer, f"weight_hh_l{l}{s}").data[rows][:, keep])
                if layer.bias:
                    for b in ("bias_ih", "bias_hh"):
                        _set(layer, f"{b}_l{l}{s}", getattr(layer, f"{b}_l{l}{s}").data[rows])
        layer.hidden_size = n_keep
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = torch.tensor([i for i in range(layer.input_size) if i not in set(int(j) for j in idxs)])
        for s in _sfx(layer):
            _set(layer, f"weight_ih_l0{s}", getattr(layer, f"weight_ih_l0{s}").data[:, keep])
        layer.input_size = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.hidden_size * len(_sfx(layer))

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.input_size

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return len(_sfx(layer))

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return 1


class RNNAwareImportance(GroupMagnitudeImportance):
    """torch-pruning's group L2 magnitude, plus the last RNN layer's own weights for RNN output groups
    (the stock importance only sees the Linear/Conv consumers of an RNN)."""

    def __init__(self, rnn_pruner: StackedRNNPruner):
        super().__init__(p=2)
        self.rnn_pruner = rnn_pruner

    def __call__(self, group):
        base = super().__call__(group)
        extra = None
        for dep, idxs in group:
            if dep.pruning_fn != self.rnn_pruner.prune_out_channels or not isinstance(dep.layer, RNN_TYPES):
                continue
            layer = dep.layer
            last = layer.num_layers - 1
            per_unit = torch.cat([_unit_norms(layer, last, s) for s in _sfx(layer)])  # [fwd, bwd]
            local = per_unit[torch.as_tensor(idxs) % per_unit.numel()]
            local = local / local.mean().clamp_min(1e-12)
            extra = local if extra is None else extra + local
        if extra is None:
            return base
        return extra if base is None else base + extra


class _Opaque(torch.autograd.Function):
    """Identity on an RNN's (detached) output whose only graph inputs are the RNN's input and one weight."""

    @staticmethod
    def forward(ctx, out, x, w):  # noqa: D102
        return out.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - never run: only the graph's shape is used
        return None, None, None


def _opaque_hook(module, inputs, output):
    x = inputs[0].data if isinstance(inputs[0], nn.utils.rnn.PackedSequence) else inputs[0]
    out, rest = output
    data = out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out
    new = _Opaque.apply(data.detach(), x, module.weight_ih_l0)
    if isinstance(out, nn.utils.rnn.PackedSequence):
        return out._replace(data=new), rest
    if module.bidirectional or data.dim() != 3:
        return new, rest
    # The final state (h_n, c_n) as a view of the output's last step, so the dependency graph sees that a
    # head reading h_n[-1] consumes the RNN's hidden units (the values only matter for shapes here: this
    # hook is active while the graph is traced, never in a real forward).
    last = new[:, -1] if module.batch_first else new[-1]
    fake = last.unsqueeze(0).expand(module.num_layers, *last.shape)
    if isinstance(rest, tuple):
        return new, tuple(fake for _ in rest)
    return new, fake


class opaque_rnns:
    """While building torch-pruning's DependencyGraph, make each RNN one autograd node.

    A GRU on the CPU records every time step as separate autograd ops (split, mul, …); the graph tracer
    walks into them and fails with an IndexError in its split index mapping as soon as a prunable layer
    feeds the GRU. Cutting the RNN's internals out of the traced graph leaves just input → RNN → output."""

    def __init__(self, model: nn.Module):
        self.model, self.handles = model, []

    def __enter__(self):
        self.handles = [m.register_forward_hook(_opaque_hook) for m in self.model.modules()
                        if isinstance(m, RNN_TYPES)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False
