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
    _check_ops(model, path)
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
    """External weights must be files inside the model's folder: an ONNX file must not make edgefm read (and
    copy into a bundle) ``/etc/passwd`` or a file beside some other project."""
    import onnx

    folder = path.parent.resolve()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if not loc:
                raise CheckpointError(f"checkpoint {path}: initializer '{t.name}' has external data without a location")
            target = (path.parent / loc).resolve()
            if Path(loc).is_absolute() or not target.is_relative_to(folder):
                raise CheckpointError(f"checkpoint {path}: initializer '{t.name}' keeps its data in '{loc}', outside "
                                      f"the model's folder {folder}; external data files must sit beside the model")
            if not target.is_file():
                raise CheckpointError(f"checkpoint {path}: its weights are in an external data file '{loc}' that is "
                                      f"missing beside it")


#: Operator domains ONNX Runtime runs here without a custom-op library (ai.onnx is the default domain "").
_KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training")


def _check_ops(model, path: Path) -> None:
    """Every node is a standard ONNX op (or an ONNX Runtime contrib op, or a function the model defines): a
    custom op would fail later, deep inside a runtime, with a message about a missing kernel."""
    import onnx.defs

    local = {(f.domain, f.name) for f in model.functions}
    for n in _nodes(model):
        if (n.domain, n.op_type) in local:
            continue
        if n.domain not in _KNOWN_DOMAINS:
            raise CheckpointError(f"checkpoint {path}: node '{n.name or n.op_type}' uses the custom op "
                                  f"{n.domain}::{n.op_type}, which needs a custom-op library; edgefm takes standard "
                                  f"ONNX ops (domains ai.onnx, ai.onnx.ml) and ONNX Runtime's com.microsoft ops")
        if n.domain in ("", "ai.onnx", "ai.onnx.ml") and not onnx.defs.has(n.op_type, n.domain.replace("ai.onnx", "", 1) if n.domain == "ai.onnx" else n.domain):
            raise CheckpointError(f"checkpoint {path}: node '{n.name or n.op_type}' uses op '{n.op_type}', which is not "
                                  f"a standard ONNX op of domain '{n.domain or 'ai.onnx'}'")
