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
        axis = batch_axis(dims)
        if axis is not None and isinstance(dims[axis], int):
            notes.append(f"input '{vi.name}' has a fixed batch of {dims[axis]} in {path.name}")
        inputs.append(InputSpec(name=vi.name, shape=dims, dtype=tensor_dtype_to_np_dtype(tt.elem_type).name,
                                batch_axis=axis))
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
        names = [d.dim_param if d.HasField("dim_param") else (d.dim_value or None)
                 for d in tt.shape.dim] if tt.HasField("shape") else []
        outputs.append(OutputSpec(name=vo.name, kind=kind, batch_axis=batch_axis(names) or 0))
    family = family_of_ops({n.op_type for n in _nodes(model)})
    task, pre = task_and_preprocessing(family, inputs, outputs)
    spec = ModelSpec(family=family, task=task, inputs=inputs, outputs=outputs, preprocessing=pre,
                     num_classes=num_classes, arch=graph.name or None)
    return spec, notes


def batch_axis(dims: list) -> "int | None":
    """The sample axis of a graph tensor: the axis named like a batch (``batch``, ``batch_size``, ``N``),
    else axis 0 (None for a scalar)."""
    if not dims:
        return None
    for i, d in enumerate(dims):
        if isinstance(d, str) and d.lower() in ("batch", "batch_size", "n", "b", "bs"):
            return i
    return 0


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


#: ONNX / ONNX Runtime contrib ops that compute in or carry int8: a graph with none of them is not quantized.
INT8_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                      "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearConcat",
                      "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSoftmax",
                      "QGemm", "QAttention", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul",
                      "MatMulIntegerToFloat", "QEmbedLayerNormalization", "QOrderedMatMul"})


def int8_op_count(model) -> int:
    """Nodes of ``model`` (subgraphs included) that quantize, dequantize or compute in int8."""
    return sum(1 for n in _nodes(model) if n.op_type in INT8_OPS)


def external_files(model, path: Path) -> list[str]:
    """The external data files the ONNX model at ``path`` reads (relative locations), checked: each must exist
    and lie inside the model's folder (a location that climbs out of it or is absolute is refused, as ONNX
    Runtime refuses it)."""
    import onnx

    folder = Path(path).parent.resolve()
    locs: list[str] = []
    tensors = list(model.graph.initializer)
    for n in _nodes(model):  # Constant nodes can hold external tensors too
        tensors += [a.t for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if not loc:
            raise CheckpointError(f"checkpoint {path}: tensor '{t.name}' is external but names no data file")
        target = (folder / loc).resolve()
        if Path(loc).is_absolute() or not target.is_relative_to(folder):
            raise CheckpointError(f"checkpoint {path}: tensor '{t.name}' reads external data from '{loc}', outside "
                                  f"the model's folder {folder}; refused: external data files must sit beside the model")
        if not target.is_file():
            raise CheckpointError(f"checkpoint {path}: its weights are in an external data file '{loc}' that is "
                                  f"missing beside it")
        if loc not in locs:
            locs.append(loc)
    return locs


def _check_external_data(model, path: Path) -> None:
    external_files(model, path)


def copy_onnx(src: Path, dst: Path) -> list[str]:
    """Copy the ONNX model ``src`` to ``dst``; external data (any number of files) is gathered into one
    ``<dst name>.data`` beside it, so the bundle holds (and hashes) every byte the model needs. Returns notes."""
    import shutil

    import onnx

    model = onnx.load(str(src), load_external_data=False)
    locs = external_files(model, src)
    if not locs:
        shutil.copyfile(src, dst)
        return []
    try:
        full = onnx.load(str(src), load_external_data=True)
    except Exception as e:  # a truncated data file: offsets past its end
        raise CheckpointError(f"checkpoint {src}: cannot read its external data {locs} "
                              f"({str(e).strip().splitlines()[0][:200]})") from None
    data = dst.name + ".data"
    onnx.save_model(full, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    return [f"{src.name} keeps its weights in external data ({', '.join(locs)}): copied into the bundle as "
            f"{dst.parent.name}/{data} (hashed in the manifest)"]


def source_sha256(path: Path) -> str:
    """sha256 of an ONNX source: the .onnx file, plus its external data files when it has any."""
    import hashlib

    import onnx

    from edgefm.bundle import sha256_file

    locs = external_files(onnx.load(str(path), load_external_data=False), path)
    if not locs:
        return sha256_file(path)
    h = hashlib.sha256(sha256_file(path).encode())
    for loc in sorted(locs):
        h.update(loc.encode())
        h.update(sha256_file(Path(path).parent / loc).encode())
    return h.hexdigest()


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
