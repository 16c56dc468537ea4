"""TorchScript modules that keep state in their own attributes (``self._state = ...`` inside ``forward``, as
silero-vad's shipped ``.jit`` does with its LSTM state and audio context), and ``--submodule``: exporting a
part of a module instead of the whole.

An exported ONNX graph is a pure function: attribute writes are either refused by the exporter or frozen
at their export-time value, so such a ``forward`` cannot be exported faithfully. Such modules usually hold
a stateless inner model that takes the state as an input and returns the next one; exporting that one
makes a streaming model with a declared state pair (``--state``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn

from edgefm.errors import ConfigError, ExportError

#: How many "takes its state explicitly" submodules a refusal suggests at most.
MAX_HINTS = 3


def select_submodule(module: nn.Module, path: str, source: Path) -> nn.Module:
    """``module``'s submodule at the dotted ``path`` (as in ``named_modules()``); ``ConfigError`` listing the
    top-level children when there is none."""
    found = dict(module.named_modules()).get(path)
    if found is None or path == "":
        children = [n for n, _ in module.named_children()]
        raise ConfigError(f"checkpoint {source}: --submodule '{path}' is not a submodule of the model; its "
                          f"submodules are {children[:12]}{' …' if len(children) > 12 else ''} (nest with dots, "
                          f"e.g. {children[0] + '.NAME' if children else 'a.b'})")
    return found


def written_attributes(module: torch.jit.ScriptModule) -> list[str]:
    """Attributes of ``module`` (or its submodules) that its ``forward`` assigns, in order of first write;
    empty for a stateless forward."""
    names: list[str] = []
    graph = module.forward.inlined_graph  # held: its nodes are invalid once the graph is freed
    for node in _nodes(graph):
        if node.kind() == "prim::SetAttr" and node.s("name") not in names:
            names.append(node.s("name"))
    return names


def _nodes(graph_or_block) -> Iterator:
    for node in graph_or_block.nodes():
        yield node
        for sub in node.blocks():
            yield from _nodes(sub)


def check_stateless(module: nn.Module, source: Path, path: Optional[str] = None) -> None:
    """Raise ``ExportError`` (one line) when a TorchScript ``forward`` writes module attributes: it names the
    attributes, the code line that writes the first, and submodules that take the state explicitly
    (``--submodule``). Eager modules pass: their Python code cannot be read for writes."""
    if not isinstance(module, torch.jit.ScriptModule):
        return
    attrs = written_attributes(module)
    if not attrs:
        return
    what = f"submodule '{path}'" if path else (getattr(module, "original_name", None) or "the module")
    line = _code_line(module, attrs[0])
    written = ", ".join(f"self.{a}" for a in attrs[:6]) + (" …" if len(attrs) > 6 else "")
    head = (f"checkpoint {source}: {what}'s forward keeps state in module attributes (it writes {written}"
            f"{f'; e.g. `{line}`' if line else ''}), which an exported graph cannot carry from call to call")
    hints = stateless_candidates(module, prefix=f"{path}." if path else "")
    if hints:
        opts = " or ".join(f"--submodule {n} (forward{sig})" for n, sig in hints)
        raise ExportError(f"{head}; export a submodule that takes the state explicitly: {opts}, and declare its "
                          f"inputs (--input) and its state pair (--state STATE_IN:STATE_OUT)")
    raise ExportError(f"{head}; no submodule takes the state explicitly either: save a module whose forward takes "
                      f"the state as an input and returns the next one (forward(x, state) -> (y, state)) and "
                      f"compress that, with --state STATE_IN:STATE_OUT")


def stateless_candidates(module: torch.jit.ScriptModule, prefix: str = "") -> list[tuple[str, str]]:
    """(path, signature) of the shallowest TorchScript submodules whose forward writes no attribute, takes two
    or more tensors and returns a tuple: the usual shape of a model that takes its state explicitly."""
    by_depth: dict[int, list[tuple[str, str]]] = {}
    for name, sub in module.named_modules():
        if not name or not isinstance(sub, torch.jit.ScriptModule) or not hasattr(sub, "forward"):
            continue
        try:
            schema = sub.forward.schema
        except (AttributeError, RuntimeError):  # a module without a scripted forward
            continue
        args = schema.arguments[1:]
        tensors = [a for a in args if a.type.kind() == "TensorType"]
        rets = schema.returns
        returns_tuple = len(rets) > 1 or (len(rets) == 1 and rets[0].type.kind() == "TupleType")
        if len(tensors) < 2 or not returns_tuple or written_attributes(sub):
            continue
        out = rets[0].type.annotation_str if len(rets) == 1 else ", ".join(r.type.annotation_str for r in rets)
        sig = f"({', '.join(a.name for a in args)}) -> {out}"
        by_depth.setdefault(name.count("."), []).append((prefix + name, sig))
    return by_depth[min(by_depth)][:MAX_HINTS] if by_depth else []


def _code_line(module: torch.jit.ScriptModule, attr: str) -> str:
    """The first line of the module's serialized code (or a submodule's) that assigns ``self.<attr>``."""
    for _, sub in module.named_modules():
        try:
            code = sub.code
        except (AttributeError, RuntimeError):
            continue
        for ln in code.splitlines():
            if ln.strip().startswith(f"self.{attr} ="):
                return ln.strip()
    return ""
