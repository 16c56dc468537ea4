"""Parameter and MAC counts of a torch model, through torch-pruning's op counter.

torch-pruning (1.6) counts an RNN's MACs from the wrong axes (it reads batch and sequence length from
``input[0][0]``, so the count changes with the batch size and ignores ``batch_first``); we register a
correct per-sample hook for LSTM/GRU/RNN instead. Attention score matmuls (not modules) are not counted:
at the sequence lengths we use they are a few per cent of a Transformer's Linear layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefm.models.spec import ModelSpec


def _rnn_hook(module, inputs, output) -> None:
    """MACs of nn.LSTM/GRU/RNN per sample: each step runs W_ih·x and W_hh·h for every layer/direction."""
    x = inputs[0]
    if hasattr(x, "data") and not hasattr(x, "shape"):  # PackedSequence
        x = x.data
    batch_first = getattr(module, "batch_first", False)
    if x.dim() == 2:  # unbatched (T, F)
        batch, steps = 1, x.shape[0]
    else:
        batch, steps = (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
    macs = 0
    dirs = 2 if module.bidirectional else 1
    for layer in range(module.num_layers):
        for sfx in ("", "_reverse")[:dirs]:
            macs += getattr(module, f"weight_ih_l{layer}{sfx}").numel()
            macs += getattr(module, f"weight_hh_l{layer}{sfx}").numel()
    module.__flops__ += int(macs * steps * batch)


def count(model, example_args: tuple, what: str = "the model") -> tuple[int, int]:
    """(MACs per sample, parameters) of ``model`` called as ``model(*example_args)``.

    The op counter divides by the batch it saw, so the result is per sample. A model that does not run
    (e.g. a pruned one that reshapes to a fixed size) raises ``ConfigError`` naming the layer that failed."""
    failing = run_or_explain(model, example_args, what)
    del failing
    import torch
    from torch import nn
    from torch_pruning.utils import op_counter

    # count_ops_and_params clears this global after each call, so set it every time.
    op_counter.CUSTOM_MODULES_MAPPING = {nn.LSTM: _rnn_hook, nn.GRU: _rnn_hook, nn.RNN: _rnn_hook}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        macs, params = op_counter.count_ops_and_params(model, tuple(example_args))
    model.train(was_training)
    return int(round(macs)), int(params)


def run_or_explain(model, args: tuple, what: str) -> None:
    """Run ``model(*args)``; on failure raise ``ConfigError`` naming the innermost layer that raised and why."""
    import torch

    from edgefm.errors import ConfigError

    stack: list[str] = []
    names = {id(m): n for n, m in model.named_modules()}
    failed: list[str] = []

    def pre(mod, _inp):
        stack.append(names.get(id(mod), type(mod).__name__))

    def post(mod, _inp, _out):
        stack.pop()

    hooks = [m.register_forward_pre_hook(pre) for m in model.modules()]
    hooks += [m.register_forward_hook(post) for m in model.modules()]
    try:
        with torch.no_grad():
            model(*args)
    except Exception as e:  # noqa: BLE001 - the user's forward: name where it broke, in one line
        failed = list(stack)
        layer = next((n for n in reversed(failed) if n), "")
        layer = layer.removeprefix("inner.")
        mod = dict(model.named_modules()).get(failed[-1]) if failed else None
        kind = f" ({type(mod).__name__})" if mod is not None else ""
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        where = f"in layer '{layer}'{kind}" if layer else "outside any layer (in forward's own code)"
        raise ConfigError(f"{what} does not run {where}: {type(e).__name__}: {msg}. A reshape/view to a fixed "
                          f"size breaks when pruning changes channel counts: write it as flatten(1) or "
                          f"reshape(x.shape[0], -1), or keep the layer before it with prune.keep") from None
    finally:
        for h in hooks:
            h.remove()


def example_args(spec: ModelSpec, feed: dict[str, np.ndarray], n: int = 2) -> tuple:
    """The first ``n`` samples of ``feed`` as torch tensors in the spec's input order (the calling
    convention every torch-side stage uses: ``model(*inputs)``)."""
    import torch

    return tuple(torch.from_numpy(np.array(feed[name][:n])) for name in spec.input_names)


def summary(model, spec: ModelSpec, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """{"params": …, "macs": …} for one sample of ``feed``."""
    macs, params = count(model, example_args(spec, feed))
    return {"params": params, "macs": macs}
