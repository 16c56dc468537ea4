"""Turning a user's torch module into what the rest of edgefm expects: ``forward(<inputs in spec order>)``
returning a tuple of tensors in spec output order, plus the parts of the ``ModelSpec`` a module can tell
about itself (family, inputs from its first layer, outputs from one run)."""

from __future__ import annotations

import inspect
import keyword
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from edgefm.errors import CheckpointError, ConfigError
from edgefm.models.guess import CONV, RNN
from edgefm.models.spec import InputSpec, OutputSpec


class SpecModule(nn.Module):
    """Calls ``inner`` with the inputs in spec order (positionally, or as keywords for Hugging Face
    models) and returns a flat tuple of tensors; ``select`` picks named fields of a dict-like output."""

    def __init__(self, inner: nn.Module, input_names: Sequence[str], as_kwargs: bool = False,
                 select: Optional[Sequence[str]] = None, fixed_mode: bool = False,
                 scalars: Optional[dict[int, str]] = None):
        super().__init__()
        self.inner = inner
        # position -> "int" | "float" | "bool": forward takes a Python number there (TorchScript `sr: int`);
        # the tensor fed is turned into one, which tracing records as a constant
        self.scalars = dict(scalars or {})
        self.input_names = list(input_names)
        self.as_kwargs = as_kwargs
        self.select = list(select) if select else None
        self.fixed_mode = fixed_mode

    def train(self, mode: bool = True):
        # An ExportedProgram's module keeps the mode it was exported in and raises on train()/eval().
        if self.fixed_mode:
            self.training = mode
            return self
        return super().train(mode)

    def _call(self, args: tuple):
        if self.scalars:
            conv = {"int": int, "float": float, "bool": bool}
            args = tuple(conv[self.scalars[i]](a.item()) if i in self.scalars else a for i, a in enumerate(args))
        out = self.inner(**dict(zip(self.input_names, args))) if self.as_kwargs else self.inner(*args)
        if self.select is not None:
            return tuple(out[k] for k in self.select)
        return tuple(flatten_outputs(out))


def wrap(inner: nn.Module, input_names: Sequence[str], as_kwargs: bool = False,
         select: Optional[Sequence[str]] = None, fixed_mode: bool = False,
         scalars: Optional[dict[int, str]] = None) -> SpecModule:
    """A ``SpecModule`` whose ``forward`` has one named parameter per input: torch.export (and so the
    dynamo ONNX exporter) matches ``dynamic_shapes``/``dynamic_axes`` by parameter name and fails on
    ``*args``, so the signature is generated."""
    params: list[str] = []
    for i, n in enumerate(input_names):
        py = _py_name(n, i)
        params.append(py if py not in params else f"input_{i}")
    src = f"def forward(self, {', '.join(params)}):\n    return self._call(({', '.join(params)},))\n"
    ns: dict[str, Any] = {}
    exec(src, ns)  # noqa: S102 — the source is built from sanitised identifiers only
    cls = type("EdgefmModel", (SpecModule,), {"forward": ns["forward"], "__module__": __name__})
    return cls(inner, input_names, as_kwargs, select, fixed_mode, scalars).eval()


def _py_name(name: str, i: int) -> str:
    py = re.sub(r"\W", "_", name)
    if not py.isidentifier() or keyword.iskeyword(py) or py in ("self", "args"):
        py = f"input_{i}"
    return py


def flatten_outputs(out: Any) -> list:
    """Tensors of a module's output in order: a tensor, nested tuples/lists, or dicts (values in order)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):  # also transformers' ModelOutput
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out if o is not None for t in flatten_outputs(o)]
    raise CheckpointError(f"the model returns a {type(out).__name__}; edgefm needs tensors "
                          f"(a tensor, or tuples/lists/dicts of tensors)")


def type_names(module: nn.Module) -> list[str]:
    """Class names of every submodule; TorchScript modules keep theirs in ``original_name``."""
    names = []
    for m in module.modules():
        names.append(getattr(m, "original_name", None) or type(m).__name__)
    return names


def forward_params(module: nn.Module) -> tuple[list[str], Optional[int]]:
    """(parameter names, number required) of ``module.forward``; (names, None) when it takes ``*args``."""
    if isinstance(module, torch.jit.ScriptModule):
        args = module.forward.schema.arguments[1:]
        return [a.name for a in args], sum(1 for a in args if not a.has_default_value())
    sig = inspect.signature(module.forward)
    names, required = [], 0
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return names, None
        names.append(p.name)
        required += p.default is p.empty
    return names, required


def scalar_params(module: nn.Module) -> dict[int, tuple[str, str]]:
    """Parameters of a TorchScript ``forward`` that take a Python number, not a tensor:
    {position: (name, "int" | "float" | "bool")}."""
    if not isinstance(module, torch.jit.ScriptModule):
        return {}
    kinds = {"IntType": "int", "FloatType": "float", "BoolType": "bool"}
    out = {}
    for i, a in enumerate(module.forward.schema.arguments[1:]):
        k = kinds.get(a.type.kind())
        if k:
            out[i] = (a.name, k)
    return out


def declared_inputs(module: nn.Module, decls: Sequence[InputSpec], source: Path) -> list[InputSpec]:
    """Check ``--input`` declarations against the module's forward signature."""
    names, required = forward_params(module)
    if required is not None and not (required <= len(decls) <= len(names)):
        want = f"{required}" if required == len(names) else f"{required} to {len(names)}"
        raise ConfigError(f"checkpoint {source}: --input declares {len(decls)} input(s) ({', '.join(d.name for d in decls)}), "
                          f"but its forward takes {want}: ({', '.join(names)})")
    return list(decls)


def infer_inputs(module: nn.Module, source: Path) -> tuple[list[InputSpec], str]:
    """Inputs read from the first layer with weights, where they can be; otherwise ``CheckpointError``
    asking for ``--input``. Returns (inputs, note)."""
    names, required = forward_params(module)
    if required is None or required != 1:
        raise CheckpointError(f"checkpoint {source}: forward takes ({', '.join(names) or '*args'}); declare each input with "
                              f"--input NAME:DIMS:DTYPE (e.g. --input x:1,3,224,224:float32)")
    name = names[0]
    layer, kind = _first_layer(module)
    if layer is None:
        raise CheckpointError(f"checkpoint {source}: cannot tell the input shape (no layer with weights found); declare it with "
                              f"--input {name}:1,...:float32")
    w = layer.weight_ih_l0 if kind in RNN else layer.weight
    if kind in ("Conv2d", "Conv3d"):
        hw = "H,W" if kind == "Conv2d" else "D,H,W"
        raise CheckpointError(f"checkpoint {source}: the first layer is {kind} with {w.shape[1]} input channel(s); its "
                              f"spatial size cannot be read from the weights: declare it, e.g. --input {name}:1,{w.shape[1]},{hw}:float32")
    if kind == "Conv1d":
        shape, dtype = ["batch", int(w.shape[1]), "length"], "float32"
    elif kind == "Linear":
        shape, dtype = ["batch", int(w.shape[1])], "float32"
    elif kind == "Embedding":
        shape, dtype = ["batch", "sequence"], "int64"
    elif kind in RNN and getattr(layer, "batch_first", None) is True:
        shape, dtype = ["batch", "sequence", int(w.shape[1])], "float32"
    else:
        what = f"{kind} (not batch_first)" if kind in RNN else kind
        raise CheckpointError(f"checkpoint {source}: the first layer is {what}; edgefm cannot tell the input layout: declare it "
                              f"with --input {name}:1,...:float32")
    inp = InputSpec(name=name, shape=shape, dtype=dtype)
    return [inp], (f"input '{name}' {shape} {dtype} inferred from the first layer ({kind}); "
                   f"declare --input to fix other dimensions")


def _first_layer(module: nn.Module):
    for m in module.modules():
        kind = getattr(m, "original_name", None) or type(m).__name__
        own = dict(m.named_parameters(recurse=False))
        if not own:
            continue
        if kind in CONV | RNN | {"Linear", "Embedding"}:
            return m, kind
        return None, kind  # e.g. a leading norm layer: the input cannot be read off it
    return None, None


def probe(module: nn.Module, feed: dict[str, np.ndarray], source: Path) -> tuple:
    """Run ``module`` once on ``feed``; a failure is a ``CheckpointError`` naming the input shapes."""
    args = [torch.from_numpy(a) for a in feed.values()]
    try:
        with torch.no_grad():
            return tuple(module(*args))
    except CheckpointError:
        raise
    except Exception as e:  # the model rejecting our example inputs is an input-declaration problem
        if "TorchScript" in str(e):
            raise CheckpointError(script_error(str(e), source)) from None
        shapes = ", ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in feed.items())
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {source}: running the model on example inputs ({shapes}) failed: {msg}. "
                              f"Check the --input declarations") from None


def learn_outputs(module: nn.Module, feed: dict[str, np.ndarray], source: Path) -> tuple[list[OutputSpec], Optional[int]]:
    """Run ``module`` once on ``feed``; name its outputs: the first 2-D float output ``logits`` (its
    width is ``num_classes``), the others ``output``, ``output_1`` …"""
    specs, num_classes, plain = [], None, 0
    for t in probe(module, feed, source):
        if t.ndim == 2 and t.is_floating_point() and num_classes is None:
            specs.append(OutputSpec(name="logits", kind="logits"))
            num_classes = int(t.shape[1])
        else:
            specs.append(OutputSpec(name="output" if plain == 0 else f"output_{plain}", kind="other"))
            plain += 1
    return specs, num_classes


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def scripted_line(text: str) -> Optional[tuple[str, int, str, str]]:
    """(file, line, function or "", code) of the scripted source line a TorchScript error points at ("<---
    HERE"): the original code's traceback (the user's file) rather than the serialized ``code/`` one, the
    innermost call; None when the text has none. TorchScript's "line N" is the line marked HERE."""
    text = ANSI.sub("", text)
    part = text.split("original code (most recent call last):")[-1]
    blocks = re.findall(r'File "([^"]+)", line (\d+)(?:, in (\w+))?\n((?:.*\n)*?.*<--- HERE)', part + "\n")
    if not blocks:
        return None
    own = [b for b in blocks if not b[0].startswith("code/__torch__")] or blocks
    f, line, fn, body = own[-1]
    rows = [r for r in body.splitlines()]
    hit = next(i for i, r in enumerate(rows) if "<--- HERE" in r)
    code = next((rows[i].strip() for i in range(hit - 1, -1, -1) if rows[i].strip()), "")
    return f, int(line), fn, code


def script_error(text: str, source: Path) -> str:
    """One line for a TorchScript interpreter error: the module file, line and code where it failed and the
    error itself, instead of "The following operation failed in the TorchScript interpreter."."""
    text = ANSI.sub("", text)
    if "TorchScript" not in text:
        return text
    where = ""
    found = scripted_line(text)
    if found:
        f, line, fn, code = found
        where = f"{f' in {fn}()' if fn else ''} at {f}:{line}: `{code}`"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    err = next((ln for ln in reversed(lines) if re.match(r"^[\w.]*(Error|Exception)\b.*:", ln)), "")
    err = re.sub(r"^builtins\.", "", err) or (lines[0] if lines else "")
    return f"checkpoint {source}: the scripted code failed{where}: {err}"
