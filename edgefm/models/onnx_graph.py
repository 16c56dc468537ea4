"""A ``ModelSpec`` read from an ONNX graph: inputs (names, shapes with ``dim_param`` as dynamic axes,
dtypes), outputs, and the family guessed from the ops. No torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from edgefm.errors import CheckpointError
from edgefm.models.guess import family_of_ops, task_and_preprocessing
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec

def spec_from_onnx(path: Path) -> tuple[ModelSpec, list[str]]:
    """Read the spec of the ONNX model at ``path``; returns (spec, notes)."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    _check_external_data(model, path)
    graph, notes = model.graph, []
    weights = {i.name for i in graph.initializer}
    inputs = []
    for vi in (v for v in graph.input if v.name not in weights):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            raise CheckpointError(f"checkpoint {path}: input '{vi.name}' has no tensor type or shape in the graph")
        dims = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or ("batch" if i == 0 else f"{vi.name}_dim{i}"))
        if dims and isinstance(dims[0], int):
            notes.append(f"input '{vi.name}' has a fixed batch of {dims[0]} in {path.name}")
        inputs.append(InputSpec(name=vi.name, shape=dims, dtype=tensor_dtype_to_np_dtype(tt.elem_type).name))
    outputs, num_classes = [], None
    for vo in graph.output:
        tt = vo.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim] if tt.HasField("shape") else []
        is_float = tt.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
        kind = "other"
        low = vo.name.lower()
        if "embed" in low:
            kind = "embedding"
        elif "hidden" in low:
            kind = "hidden"
        elif is_float and len(dims) == 2 and dims[1] and dims[1] > 1 and num_classes is None:
            kind, num_classes = "logits", int(dims[1])
        outputs.append(OutputSpec(name=vo.name, kind=kind))
    family = family_of_ops({n.op_type for n in _nodes(model)})
    task, pre = task_and_preprocessing(family, inputs, outputs)
    spec = ModelSpec(family=family, task=task, inputs=inputs, outputs=outputs, preprocessing=pre,
                     num_classes=num_classes, arch=graph.name or None)
    return spec, notes


def _nodes(model) -> Iterator:
    """Every node, including those in subgraphs (If/Loop/Scan) and model-local functions."""
    import onnx

    def walk(nodes):
        for n in nodes:
            yield n
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from walk(a.g.node)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        yield from walk(g.node)

    yield from walk(model.graph.node)
    for f in model.functions:
        yield from walk(f.node)


def _check_external_data(model, path: Path) -> None:
    import onnx

    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and not (path.parent / loc).is_file():
                raise CheckpointError(f"checkpoint {path}: its weights are in an external data file '{loc}' that is "
                                      f"missing beside it")
