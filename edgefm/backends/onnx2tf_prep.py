"""ONNX rewrites made before onnx2tf converts a graph: each one keeps the model's outputs exactly and avoids a
layout mistake onnx2tf is known to make (seen with onnx2tf 1.29.24). The converted model is still checked against
the fp32 ONNX reference afterwards, as every artifact is.

No-op ``Slice`` axes. A TorchScript export writes ``z[:, :129, :]`` as three chained ``Slice`` nodes, two of
them full-range (start 0, end INT64_MAX, step 1) on axes 0 and 2; silero-vad's STFT does this to split its
Conv1d output into real and imaginary channels. onnx2tf moves 3-D tensors from NCW to NWC, and then:

- onnxsim (which onnx2tf runs first) fuses the chain into one ``Slice`` over axes [0, 1, 2]; onnx2tf maps the
  axes to NWC ([0, 2, 1]) but not the starts and ends, so the channel bounds land on the time axis (one
  branch comes out whole, the other 0-sized, and the LSTM after it fails on an input of shape (0, 1, 128));
- without onnxsim, slice bounds held by ``Constant`` nodes make onnx2tf treat the sliced tensor as not
  transposed, with the same result.

Dropping the full-range axes leaves one single-axis ``Slice`` per branch, which onnx2tf maps correctly. No onnx2tf
option reaches this: ``-k``/``-kt``/``-kat`` apply to graph inputs only, and ``-prf`` replaces parameters of
named ops, one model at a time. No torch here.

Outputs in the ONNX layout. onnx2tf writes some 3-D outputs transposed (silero's state (2, 1, 128) comes out as
(1, 2, 128)); fed back as the state input in LiteRT's own API, it fails. ``transpose_back`` writes the parameter
replacement (onnx2tf's ``-prf``, ``post_process_transpose_perm``) that transposes each such output back at the
node producing it, from the axes found by running both models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: An end at least this large, with start 0 and step 1, takes the whole axis (torch writes INT64_MAX, some
#: exporters INT32_MAX).
_WHOLE = 2**31 - 1


def _constants(graph) -> dict:
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            found[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return found


def _whole_axes(node, consts: dict):
    """(axes, starts, ends, steps, whole) of a ``Slice`` (opset >= 10) whose bounds are constants, ``whole[i]``
    saying axis i is taken whole; None when the bounds are not constants."""
    ins = list(node.input) + [""] * (5 - len(node.input))
    if any(i and i not in consts for i in ins[1:]):
        return None
    starts, ends = np.asarray(consts[ins[1]]).ravel(), np.asarray(consts[ins[2]]).ravel()
    axes = np.asarray(consts[ins[3]]).ravel() if ins[3] else np.arange(len(starts))
    steps = np.asarray(consts[ins[4]]).ravel() if ins[4] else np.ones_like(starts)
    if not (len(starts) == len(ends) == len(axes) == len(steps)):
        return None
    whole = (starts == 0) & (ends >= _WHOLE) & (steps == 1)
    return axes, starts, ends, steps, whole


def drop_noop_slices(model) -> int:
    """In ``model`` (an ``onnx.ModelProto``, main graph), remove ``Slice`` nodes that take every axis they name
    whole, and the whole-axis entries of the others. Returns how many axes were dropped."""
    from onnx import numpy_helper

    graph = model.graph
    consts = _constants(graph)
    outputs = {o.name for o in graph.output}
    bypass: dict[str, str] = {}
    kept, dropped = [], 0
    for node in graph.node:
        found = _whole_axes(node, consts) if node.op_type == "Slice" and node.domain in ("", "ai.onnx") else None
        if found is None or not found[4].any():
            kept.append(node)
            continue
        axes, starts, ends, steps, whole = found
        if whole.all() and node.output[0] not in outputs:
            bypass[node.output[0]] = node.input[0]
            dropped += len(axes)
            continue
        if whole.all():  # a graph output: keep the node, it costs nothing
            kept.append(node)
            continue
        rest = ~whole
        names = []
        for part, values in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps)):
            name = f"{node.output[0]}__{part}"
            graph.initializer.append(numpy_helper.from_array(values[rest].astype(np.int64), name))
            names.append(name)
        del node.input[1:]
        node.input.extend(names)
        dropped += int(whole.sum())
        kept.append(node)
    if not dropped:
        return 0

    def source(name: str) -> str:
        while name in bypass:
            name = bypass[name]
        return name

    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = source(name)
    del graph.node[:]
    graph.node.extend(kept)
    return dropped


def drop_noop_slices_file(path: Path) -> int:
    """``drop_noop_slices`` on the ONNX file at ``path``, rewritten in place (external data kept beside it)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    dropped = drop_noop_slices(model)
    if dropped:
        big = model.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit
        onnx.save_model(model, str(path), save_as_external_data=big, location=path.name + ".data")
    return dropped


def transpose_back(onnx_path: Path, perm: dict[str, list[int]]) -> list[dict]:
    """onnx2tf parameter replacement operations that transpose each output ``name`` of ``perm`` by its axes
    (``transpose(tflite_out, axes)`` equals the ONNX output) at the node of ``onnx_path`` producing it. Outputs
    made by an unnamed node are left out."""
    import onnx

    if not perm:
        return []
    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = []
    for node in model.graph.node:
        for name in node.output:
            if name in perm and node.name:
                ops.append({"op_name": node.name, "param_target": "outputs", "param_name": name,
                            "post_process_transpose_perm": [int(a) for a in perm[name]]})
    return ops
