"""Fold ONNX ``If`` nodes whose condition the model's static shapes already decide.

Scripted (TorchScript) code keeps its Python control flow when exported: ``if len(state):``, LSTMCell's
``if input.dim() == 1`` and ``squeeze(dim)`` become ``If`` nodes whose conditions only read dimensions that
are fixed once the inputs are declared (the state's 2 layers, a rank, a channel count). Left in, they stop
int8 recipes (quantizers treat branches apart or not at all), OpenVINO, onnx2tf and TensorRT. Here each such
condition is computed from the inferred shapes and the ``If`` replaced by the branch it always takes; a
condition that depends on the data or on a dynamic dimension (the batch) keeps its ``If``. The export is
verified against torch afterwards as always."""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np

log = logging.getLogger(__name__)

#: Passes at most (each folds one If; a folded branch can hold further Ifs).
MAX_FOLDS = 64
#: Largest constant (elements) computed ahead for shape inference.
MAX_CONST = 4096


class _Dims(list):
    """A shape with unknown (dynamic) entries as None: what ``Shape`` of a partly dynamic tensor gives."""


def fold_static_ifs(model) -> int:
    """Fold, in place, every ``If`` of ``model``'s main graph whose condition the static shapes decide;
    returns how many were folded."""
    import onnx

    folded = 0
    while folded < MAX_FOLDS and any(n.op_type == "If" for n in model.graph.node):
        try:
            plain = _fold_constants(model)
            inferred = onnx.shape_inference.infer_shapes(plain, data_prop=True)
        except Exception as e:  # noqa: BLE001 - inference failing only means nothing can be folded
            log.debug("shape inference failed, If nodes kept: %s", e)
            break
        ev = _Evaluator(plain.graph, inferred.graph)
        for i, node in enumerate(model.graph.node):
            if node.op_type != "If":
                continue
            cond = ev.value(node.input[0])
            if isinstance(cond, np.ndarray) and cond.size == 1 and _inline(model.graph, i, bool(cond.reshape(()))):
                folded += 1
                break
        else:
            break
    return folded


def _fold_constants(model):
    """A copy of ``model`` whose nodes computed from constants alone (small results) are initializers, so that
    shape inference sees e.g. a Pad's pads; the model itself is left as it is."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    values = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer if np.prod(t.dims) <= MAX_CONST}
    keep = []
    for n in out.graph.node:
        has_graph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
        if n.domain in ("", "ai.onnx") and not has_graph and all(i in values for i in n.input if i):
            try:
                res = ReferenceEvaluator(n, opsets={"": opset} if opset else None).run(
                    None, {i: values[i] for i in n.input if i})
            except Exception:  # noqa: BLE001 - an op the reference runtime cannot run stays a node
                res = None
            if res is not None and all(np.asarray(r).size <= MAX_CONST for r in res):
                for name, r in zip(n.output, res):
                    values[name] = np.asarray(r)
                    out.graph.initializer.append(numpy_helper.from_array(np.asarray(r), name))
                continue
        keep.append(n)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def _inline(graph, index: int, take_then: bool) -> bool:
    """Replace the If at ``graph.node[index]`` by its branch's nodes (then Identity to its output names)."""
    from onnx import helper

    node = graph.node[index]
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if take_then else "else_branch"))
    taken = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer} | {i.name for i in graph.input}
    if any(o in taken for n in branch.node for o in n.output) or any(t.name in taken for t in branch.initializer):
        return False  # a name clash would rewire the main graph: keep the If
    nodes = list(branch.node) + [helper.make_node("Identity", [b.name], [o], name=f"{node.name}/folded/{k}")
                                 for k, (b, o) in enumerate(zip(branch.output, node.output))]
    graph.initializer.extend(branch.initializer)
    del graph.node[index]
    for k, n in enumerate(nodes):
        graph.node.insert(index + k, n)
    return True


class _Evaluator:
    """Values computable without data: initializers, Constants, and shape arithmetic on inferred shapes."""

    def __init__(self, graph, inferred):
        from onnx import numpy_helper

        self.producer = {o: n for n in graph.node for o in n.output}
        self.known: dict[str, Any] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.shapes: dict[str, list[Optional[int]]] = {}
        for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]

    def value(self, name: str, depth: int = 0):
        if name in self.known:
            return self.known[name]
        node = self.producer.get(name)
        val = None
        if node is not None and depth < 32:
            try:
                val = self._op(node, [self.value(i, depth + 1) if i else None for i in node.input])
                val = val if val is None or isinstance(val, _Dims) else np.asarray(val)  # numpy scalars too
            except Exception:  # noqa: BLE001 - anything unexpected: unknown, so the If stays
                val = None
        self.known[name] = val
        return val

    def _op(self, node, args: list):
        from onnx import helper, numpy_helper

        op, attrs = node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if op == "Constant":
            return numpy_helper.to_array(attrs["value"]) if "value" in attrs else None
        if op == "Shape":
            dims = self.shapes.get(node.input[0])
            if dims is None:
                return None
            dims = dims[attrs.get("start", 0):attrs["end"]] if "end" in attrs else dims[attrs.get("start", 0):]
            return np.array(dims, np.int64) if None not in dims else _Dims(dims)
        if op == "Size" and isinstance(args[0], _Dims):
            return np.array(len(args[0]), np.int64)  # Size of a Shape: the rank
        if op == "Gather" and isinstance(args[0], _Dims) and isinstance(args[1], np.ndarray):
            picked = [args[0][int(i)] for i in args[1].reshape(-1)]
            if None in picked:
                return None
            return np.array(picked, np.int64).reshape(args[1].shape)
        if not args or args[0] is None or any(not isinstance(x, np.ndarray) for x in args if x is not None):
            return None
        a = args
        if op == "Gather":
            return np.take(a[0], a[1], axis=attrs.get("axis", 0))
        if op in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Add", "Sub", "Mul"):
            fn = {"Equal": np.equal, "Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal,
                  "LessOrEqual": np.less_equal, "And": np.logical_and, "Or": np.logical_or, "Add": np.add,
                  "Sub": np.subtract, "Mul": np.multiply}[op]
            return np.asarray(fn(a[0], a[1]))
        if op == "Not":
            return np.logical_not(a[0])
        if op == "Identity":
            return a[0]
        if op == "Cast":
            return a[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
        if op in ("Squeeze", "Unsqueeze"):
            axes = attrs.get("axes", a[1].tolist() if len(a) > 1 and a[1] is not None else None)
            if op == "Squeeze":
                return np.squeeze(a[0], axis=tuple(axes) if axes is not None else None)
            out = a[0]
            for ax in sorted(int(x) % (out.ndim + len(axes)) for x in axes):
                out = np.expand_dims(out, ax)
            return out
        if op == "Size":
            return np.array(a[0].size, np.int64)
        return None
