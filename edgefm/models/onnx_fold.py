"""Resolve an ONNX graph's ``If`` nodes that its declared inputs already decide.

A shipped ONNX often branches on a value its user fixes: silero-vad's graph takes ``sr`` (16 kHz or 8 kHz
weights, one ``If``) and, inside each branch, more ``If`` nodes that test ranks and fixed dimensions (torch's
``squeeze`` of a size-1 axis). Runtimes and converters that take control flow badly (OpenVINO's ONNX frontend
when the branches differ in rank, onnx2tf) refuse such graphs, and ONNX Runtime's quantizer does not look
inside a branch, so nothing there is quantized. The spec says which inputs are constants (``sr=16000``) and
which dimensions are fixed (``input: batch,576``): with those written into the graph, constant folding
(onnxscript's, which inlines the taken branch of an ``If`` whose condition it can compute, shapes included)
turns the graph into the plain one the declared calls run. The batch axis stays dynamic; an ``If`` on it is
left alone. No torch here."""

from __future__ import annotations

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


def resolve_ifs_file(path: Path, spec: ModelSpec) -> list[str]:
    """Rewrite the ONNX file at ``path`` (a bundle's own copy) with ``resolve_ifs``; external data stays in
    ``<name>.data`` beside it. Returns notes (none when the graph has no ``If`` or none could be resolved)."""
    import onnx

    from edgefm.models.onnx_graph import external_files

    path = Path(path)
    external = bool(external_files(onnx.load(str(path), load_external_data=False), path))
    model = onnx.load(str(path), load_external_data=True)
    try:
        out, before, after = resolve_ifs(model, spec)
    except Exception as e:  # noqa: BLE001 - a graph the folder cannot take is used as it is, and said so
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return [f"{count_ifs(model)} If node(s) in the graph; resolving them failed ({type(e).__name__}: {why}), "
                f"the graph is used unchanged"]
    if out is model:
        return [f"{before} If node(s) in the graph; none is decided by the declared inputs, kept"] if before else []
    if external:
        onnx.save_model(out, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(out, str(path))
    baked = [s.name for s in spec.inputs if s.constant and s.name in {i.name for i in model.graph.input}]
    return [f"{before - after} of {before} If node(s) (nested ones counted) resolved from the declared inputs "
            f"({', '.join(f'{n}={spec.input(n).value}' for n in baked) or 'constants'} and fixed dimensions): "
            f"the taken branches inlined, {after} left" + (f"; {', '.join(baked)} now held in the graph" if baked else "")]
