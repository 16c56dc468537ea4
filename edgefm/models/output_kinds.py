"""Guessing what each output means (its kind) from the exported ONNX graph and the fp32 outputs on the
eval data, for outputs the user did not declare and the loader could not name with certainty.

Rules, first match wins (conservative: a wrong guess should refuse rather than certify):

1. declared by the user (``--output-kind``/recipe ``outputs:``): kept.
2. a strong loader guess (Hugging Face task head, sentence-transformers pooling): kept — except class
   scores with one column (an HF regression head), which fall through to rule 6.
3. an output whose name stem and shape match a float input (``h_out`` ↔ ``h_in``, ``state_n`` ↔ ``state``):
   ``state`` (fed back).
4. the last op before the output (looking through Reshape/Squeeze/Transpose/Identity…): Softmax →
   ``probabilities`` (its axis), LogSoftmax → ``logits``, Sigmoid → ``binary``.
5. a name with ``embed`` → ``embedding``.
6. one float column per sample (rank 1, or last axis 1): ``binary`` if every eval value lies in [0, 1],
   else ``regression``.
7. integer outputs → ``other`` (judged by exact agreement).
8. a 2-D float output with more than one column → ``logits`` (weak: printed with how to declare otherwise).
9. anything else → ``other`` (error figures / SQNR only).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from edgefm.models.spec import ModelSpec, OutputSpec

_PASS_THROUGH = {"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Flatten", "Cast", "Gather",
                 "Slice", "Concat", "DequantizeLinear", "QuantizeLinear"}
_STEM_TAIL = re.compile(r"(?:[_.\-]?(?:in|out|input|output|new|next|prev|old|init|initial|n|t|\d+))+$")


def _stem(name: str) -> str:
    low = name.lower()
    stem = _STEM_TAIL.sub("", low)
    return stem or low


def _last_ops(onnx_path: Optional[Path]) -> dict[str, tuple[str, dict]]:
    """output name -> (op type, attributes) of the op that really makes it (through shape-only ops)."""
    if onnx_path is None:
        return {}
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for out in model.graph.output:
        node, hops = producer.get(out.name), 0
        while node is not None and node.op_type in _PASS_THROUGH and node.input and hops < 8:
            node, hops = producer.get(node.input[0]), hops + 1
        if node is not None:
            found[out.name] = (node.op_type, {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute})
    return found


def infer_kinds(spec: ModelSpec, onnx_path: Optional[Path], reference: Mapping[str, np.ndarray]
                ) -> tuple[ModelSpec, list[str]]:
    """A copy of ``spec`` whose outputs carry a kind and the reason for it; notes list every guess."""
    ops = _last_ops(onnx_path)
    spec = spec.model_copy(deep=True)
    notes = []
    floats_in = {i.name: i for i in spec.inputs if i.dtype.startswith("float")}
    for o in spec.outputs:
        if o.declared:
            continue
        arr = reference.get(o.name)
        kind, params, reason = _guess(o, arr, ops.get(o.name), floats_in)
        if kind is None:  # a strong loader guess stands
            continue
        o.kind, o.params, o.reason = kind, params, reason
        how = f"--output-kind {o.name}:KIND" if "weak" in reason else ""
        notes.append(f"output '{o.name}' guessed {kind}: {reason}" + (f" (declare it otherwise with {how})"
                                                                       if how else ""))
    if spec.task in ("classification", "image-classification", "unknown"):  # a guessed task follows the kinds
        from edgefm.models.guess import task_and_preprocessing

        spec.task = task_and_preprocessing(spec.family, spec.inputs, spec.outputs)[0]
    return spec, notes


def _guess(o: OutputSpec, arr: Optional[np.ndarray], op: Optional[tuple[str, dict]], floats_in: dict):
    one_col = arr is not None and arr.dtype.kind == "f" and (arr.ndim == 1 or arr.shape[-1] == 1)
    if o.reason and not (o.kind in ("logits", "probabilities") and one_col):
        return None, {}, ""
    if arr is not None:
        for name, spec_in in floats_in.items():
            if _stem(name) == _stem(o.name) and name != o.name and len(spec_in.shape) == arr.ndim and all(
                    isinstance(d, str) or d == a for d, a in zip(spec_in.shape, arr.shape)):
                return "state", {}, f"name and shape match input '{name}' (state fed back)"
    if op is not None:
        op_type, attrs = op
        if op_type == "Softmax":
            return "probabilities", {"axis": int(attrs.get("axis", -1))}, "the graph ends in Softmax"
        if op_type == "LogSoftmax":
            return "logits", {"axis": int(attrs.get("axis", -1))}, "the graph ends in LogSoftmax"
        if op_type == "Sigmoid":
            return "binary", {}, "the graph ends in Sigmoid (independent probabilities)"
    if "embed" in o.name.lower():
        return "embedding", {}, "the name says embedding"
    if arr is None:
        return "other", {}, "no eval output to look at"
    if one_col:
        if np.all((arr >= 0) & (arr <= 1)):
            return "binary", {}, "one float column, every eval value in [0, 1] (a probability)"
        return "regression", {}, "one float column with values outside [0, 1]"
    if arr.dtype.kind in "iub":
        return "other", {}, "integer output: judged by exact agreement"
    if arr.ndim == 2 and arr.shape[1] > 1:
        return "logits", {}, f"weak guess: a 2-D float output with {arr.shape[1]} columns is taken as class scores"
    return "other", {}, f"a float output of rank {arr.ndim}: error figures only (weak guess)"


def declare(spec: ModelSpec, decls: Mapping[str, Mapping]) -> ModelSpec:
    """A copy of ``spec`` with the user's declarations (``--output-kind``/recipe ``outputs:``) applied;
    a name that is not an output is a ``ConfigError`` listing the outputs."""
    from edgefm.contract import check_decl
    from edgefm.errors import ConfigError

    if not decls:
        return spec
    names = spec.output_names
    unknown = [n for n in decls if n not in names]
    if unknown:
        raise ConfigError(f"--output-kind / recipe outputs: {unknown} are not outputs of the model; its outputs are "
                          f"{names}")
    spec = spec.model_copy(deep=True)
    for o in spec.outputs:
        if o.name in decls:
            d = dict(decls[o.name])
            check_decl(o.name, d, where="outputs")
            o.kind = d.pop("kind")
            o.params, o.declared, o.reason = d, True, "declared"
    return spec
