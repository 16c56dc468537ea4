"""Resolve an ONNX graph's ``If`` nodes that its declared inputs already decide.

A shipped ONNX often branches on a value its user fixes: silero-vad's graph takes ``sr`` (16 kHz or 8 kHz
weights, one ``If``) and, inside each branch, more ``If`` nodes that test ranks and fixed dimensions (torch's
``squeeze`` of a size-1 axis). Runtimes and converters that take control flow badly (OpenVINO's ONNX frontend
when the branches differ in rank, onnx2tf) refuse such graphs, and ONNX Runtime's quantizer does not look
inside a branch, so nothing there is quantized. The spec says which inputs are constants (``sr=16000``) and
which dimensions are fixed (``input: batch,576``): with those written into the graph, constant folding
(onnxscript's, which inlines the taken branch of an ``If`` whose condition it can compute, shapes included)
turns the graph into the plain one the declared calls run. The batch axis stays dynamic; an ``If`` on it is
left alone. No torch here.

The same pass runs after a torch export (edgefm.stages.export): scripted (TorchScript) control flow such as
``if len(state):``, ``if x.size(1) == 8:`` or ``squeeze(dim)`` exports as ``If`` nodes on dimensions the declared
inputs fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgefm.models.spec import ModelSpec


#: Largest constant (elements) folded: any weight tensor of an edge model; a bigger one is left to the runtime.
_FOLD_LIMIT = 1 << 24


def count_ifs(model) -> int:
    """Number of ``If`` nodes in ``model``, those inside subgraphs included."""
    from edgefm.models.onnx_graph import _nodes

    return sum(1 for n in _nodes(model) if n.op_type == "If" and n.domain in ("", "ai.onnx"))


def resolve_ifs(model, spec: ModelSpec):
    """A copy of ``model`` (an ``onnx.ModelProto``) with every ``If`` whose condition follows from constants,
    the spec's constant inputs and its fixed dimensions replaced by the nodes of the branch it takes; constant
    inputs become initializers (no longer graph inputs: a Predictor checks and drops them, see
    ``InputSpec.baked``). Returns (model, ifs before, ifs after); when no ``If`` could be resolved, the model
    returned is ``model`` itself, untouched."""
    import onnx
    import onnx_ir.passes.common as common
    from onnxscript import ir
    from onnxscript.optimizer import fold_constants_ir

    before = count_ifs(model)
    if not before:
        return model, 0, 0
    work = onnx.ModelProto()
    work.CopyFrom(model)
    _write_declared_inputs(work, spec)
    graph = ir.serde.deserialize_model(work)
    _shape_indices_as_vectors(graph)
    for _ in range(8):  # each round can expose the next condition (a rank known once its If is inlined)
        # ConstantOfShape is kept by default (to keep files small); here it builds small pads and shapes that
        # a condition may depend on (its output is still bounded by the output limit). Weights are folded too
        # (an LSTM's W and R reordered by Slice/Concat of the checkpoint's tensors), so a quantizer sees them as
        # the initializers they are
        changed = fold_constants_ir(graph, onnx_shape_inference=True, input_size_limit=_FOLD_LIMIT,
                                    output_size_limit=_FOLD_LIMIT,
                                    should_fold=lambda n: True if n.op_type == "ConstantOfShape" else None).modified
        common.RemoveUnusedNodesPass()(graph)
        if not changed:
            break
    # weights a branch held as Constant nodes become initializers, as quantizers expect them (ONNX Runtime's
    # dynamic quantizer refused silero's Convs: "Expected ...reparam_conv.weight to be an initializer")
    common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16)(graph)
    common.NameFixPass()(graph)  # inlined branches bring their own value names: keep every name unique
    out = ir.serde.serialize_model(graph)
    _drop_unused_initializers(out)
    after = count_ifs(out)
    if after >= before:
        return model, before, before
    onnx.checker.check_model(out)
    return out, before, after


def _shape_indices_as_vectors(model) -> None:
    """Rewrite each ``Gather(Shape(x), i)`` with a constant 0-d ``i`` (how torch exports ``x.size(1)``) as
    ``Squeeze(Gather(Shape(x), [i]), [0])``, the same value: onnxscript 0.7 reads a dimension out of a shape only
    through a 1-D index, so a condition on ``x.size(1)`` stayed an ``If`` even with that size fixed."""
    import numpy as np
    from onnxscript import ir

    opset = model.opset_imports.get("", 17)
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.graph is None:
            continue
        data, index = node.inputs[0], node.inputs[1]
        source = data.producer() if data is not None else None
        const = ir.convenience.get_const_tensor(index) if index is not None else None
        if source is None or source.op_type != "Shape" or const is None or const.numpy().ndim != 0:
            continue
        axis = node.attributes.get_int("axis", 0)
        as_vector = ir.node("Constant", [], attributes={"value": ir.tensor(const.numpy().reshape(1))})
        gather = ir.node("Gather", [data, as_vector.outputs[0]], attributes={"axis": axis})
        if opset >= 13:
            axes = ir.node("Constant", [], attributes={"value": ir.tensor(np.array([axis], np.int64))})
            squeeze = [axes, ir.node("Squeeze", [gather.outputs[0], axes.outputs[0]])]
        else:
            squeeze = [ir.node("Squeeze", [gather.outputs[0]], attributes={"axes": [axis]})]
        ir.convenience.replace_nodes_and_values(node.graph, node, [node], [as_vector, gather, *squeeze],
                                                node.outputs, squeeze[-1].outputs)


def _drop_unused_initializers(model) -> None:
    """Remove main-graph initializers no node reads any more (the dropped branch's weights: onnx_ir still counts
    the uses by the nodes of a branch that was folded away, so its unused-node pass keeps them)."""
    from edgefm.models.onnx_graph import _nodes

    used = {i for n in _nodes(model) for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) < len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def _write_declared_inputs(model, spec: ModelSpec) -> None:
    """Constant inputs become initializers holding their value; the other inputs get the spec's fixed
    dimensions where the graph leaves them open (a dimension the graph fixes itself is kept)."""
    from onnx import numpy_helper

    by_name = {s.name: s for s in spec.inputs}
    graph = model.graph
    constants = [vi for vi in graph.input if vi.name in by_name and by_name[vi.name].constant]
    for vi in constants:
        graph.input.remove(vi)
        graph.initializer.append(numpy_helper.from_array(by_name[vi.name].constant_array(), vi.name))
    for vi in graph.input:
        s = by_name.get(vi.name)
        if s is None or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(s.shape):
            continue
        for d, want in zip(dims, s.shape):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            d.Clear()
            if isinstance(want, int):
                d.dim_value = want
            else:
                d.dim_param = want


@dataclass
class Resolved:
    """What ``resolve_ifs_file`` did: ``If`` nodes (nested ones counted) before and after, and notes for the
    stage record (none when the graph has no ``If``)."""

    before: int = 0
    after: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def folded(self) -> int:
        """How many ``If`` nodes went (0: the file was left as it was)."""
        return self.before - self.after


def resolve_ifs_file(path: Path, spec: ModelSpec) -> Resolved:
    """Rewrite the ONNX file at ``path`` (a bundle's own copy, or a fresh export) with ``resolve_ifs``; external
    data stays in ``<name>.data`` beside it. A file without ``If`` is not even loaded in full."""
    import onnx

    from edgefm.models.onnx_graph import external_files

    path = Path(path)
    header = onnx.load(str(path), load_external_data=False)
    if not count_ifs(header):
        return Resolved()
    external = bool(external_files(header, path))
    model = onnx.load(str(path), load_external_data=True)
    try:
        out, before, after = resolve_ifs(model, spec)
    except Exception as e:  # noqa: BLE001 - a graph the folder cannot take is used as it is, and said so
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        n = count_ifs(model)
        return Resolved(n, n, [f"{n} If node(s) in the graph; resolving them failed ({type(e).__name__}: {why}), "
                               f"the graph is used unchanged"])
    if out is model:
        return Resolved(before, before, [f"{before} If node(s) in the graph; none is decided by the declared "
                                         f"inputs, kept"])
    if external:
        onnx.save_model(out, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(out, str(path))
    baked = [s.name for s in spec.inputs if s.constant and s.name in {i.name for i in model.graph.input}]
    fixed = ", ".join(f"{n}={spec.input(n).value}" for n in baked)
    return Resolved(before, after, [
        f"{before - after} of {before} If node(s) (nested ones counted) resolved from the declared inputs "
        f"({fixed + ' and ' if fixed else ''}fixed dimensions): the taken branches inlined, {after} left"
        + (f"; {', '.join(baked)} now held in the graph" if baked else "")])
