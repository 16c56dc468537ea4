"""Checks a Q/DQ ONNX against what TensorRT's ONNX parser and explicit quantization accept, so that
`edgefm verify BUNDLE --target jetson-...` finds on the workstation what would otherwise fail on the device.

Each rule reports violations by node. Rules: ``opset`` and ``op`` (supported by the TensorRT version of the
target), ``qdq-zero-point``, ``qdq-type``, ``qdq-scale``, ``qdq-axis`` (per-tensor activations, per-channel
weights on the output-channel axis), ``qdq-pair`` (Q feeds DQ with the same scale), ``qdq-weights``
(int8 initializers, which TensorRT 8.x cannot import), ``profile`` (shapes within the optimisation
profiles) and ``input-type`` (a warning for int64 inputs on TensorRT 8.x)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import numpy as np

from edgefm.backends import tensorrt_ops as ops_table

ONNX_DOMAINS = ("", "ai.onnx")
_ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 10: "float16",
               16: "bfloat16", 17: "float8e4m3fn", 21: "uint4", 22: "int4"}


@dataclass
class Violation:
    rule: str
    node: str
    op: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"node '{self.node}' ({self.op})" if self.node else "model"
        return f"[{self.rule}] {where}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class _Graph:
    """Lookups over an ONNX graph: constants, producers, consumers."""

    def __init__(self, model):
        from onnx import numpy_helper

        g = model.graph
        self.consts: dict[str, Any] = {i.name: i for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = n.attribute[0].t
        self.array = lambda name: numpy_helper.to_array(self.consts[name])
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def elem_type(self, name: str) -> Optional[str]:
        t = self.consts.get(name)
        return None if t is None else _ELEM_TYPES.get(t.data_type, str(t.data_type))


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == 2 else a.f if a.type == 1 else a
    return default


def _check_opset(model, version: str, table: str) -> list[Violation]:
    opset = next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), None)
    if opset is not None and opset > ops_table.MAX_OPSET[table]:
        return [Violation("opset", "", "", f"opset {opset} is newer than TensorRT {version} reads "
                          f"(at most {ops_table.MAX_OPSET[table]}); export with opset <= {ops_table.MAX_OPSET[table]}")]
    return []


def _check_ops(model, version: str, table: str) -> list[Violation]:
    out = []
    supported = ops_table.OPS[table]
    for n in model.graph.node:
        if n.domain not in ONNX_DOMAINS:
            out.append(Violation("op", n.name, f"{n.domain}.{n.op_type}",
                                 f"custom-domain op '{n.domain}' is not an ONNX op TensorRT {version} imports "
                                 f"(no plugin is bundled)"))
        elif n.op_type not in supported:
            out.append(Violation("op", n.name, n.op_type,
                                 f"{n.op_type} is not in the ONNX operators TensorRT {version} imports"))
    return out


def _weight_axis(consumer, rank: int) -> Optional[int]:
    """The output-channel axis TensorRT wants for a weight read by ``consumer`` (input 1)."""
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    if consumer.op_type == "MatMul":
        return rank - 1
    return None


def _check_qdq_node(n, g: _Graph, version: str, table: str) -> list[Violation]:
    out = []
    v = lambda rule, msg: out.append(Violation(rule, n.name, n.op_type, msg))  # noqa: E731
    scale = n.input[1] if len(n.input) > 1 else ""
    zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if scale not in g.consts:
        v("qdq-scale", f"scale '{scale}' is computed at run time; TensorRT needs a constant scale")
        return out
    s = g.array(scale)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        v("qdq-scale", f"scale must be finite and > 0, got min {float(np.min(s)):.3g}")
    if zp is None:
        qtype = "uint8" if n.op_type == "QuantizeLinear" else g.elem_type(n.input[0]) or "int8"
    elif zp not in g.consts:
        v("qdq-zero-point", "zero-point is computed at run time; TensorRT needs a constant 0")
        qtype = None
    else:
        qtype = g.elem_type(zp)
        z = g.array(zp)
        if np.any(z != 0):
            v("qdq-zero-point", f"zero-point must be 0 (symmetric quantization), got {z.ravel()[:4].tolist()}")
    if qtype is not None and qtype not in ops_table.DQ_TYPES[table]:
        v("qdq-type", f"quantized type {qtype} is not one TensorRT {version} runs "
                      f"({', '.join(sorted(ops_table.DQ_TYPES[table]))}); use signed int8")
    data = n.input[0]
    if s.size > 1:  # per-channel
        if data not in g.consts and not (n.op_type == "DequantizeLinear" and _fed_by_const_q(data, g)):
            v("qdq-axis", f"per-channel scale ({s.size} values) on activation '{data}': TensorRT quantizes "
                          f"activations per tensor")
        else:
            rank = _rank(data, g)
            axis = _attr(n, "axis", 1) % rank
            for c in _weight_consumers(n, g):
                want = _weight_axis(c, rank)
                if want is not None and axis != want:
                    v("qdq-axis", f"weight scale axis {axis}, but {c.op_type} '{c.name}' needs the output "
                                  f"channel axis {want}")
    if n.op_type == "DequantizeLinear" and data in g.consts and table == "8.5":
        v("qdq-weights", f"'{data}' is an int8 initializer: TensorRT {version} cannot import int8 weights; "
                         f"keep weights in float behind a QuantizeLinear -> DequantizeLinear pair")
    if n.op_type == "QuantizeLinear":
        for c in g.consumers.get(n.output[0], []):
            if c.op_type != "DequantizeLinear":
                v("qdq-pair", f"QuantizeLinear output feeds {c.op_type} '{c.name}'; TensorRT needs it to feed a "
                              f"DequantizeLinear")
            elif len(c.input) > 1 and c.input[1] in g.consts and not np.array_equal(g.array(c.input[1]), s):
                v("qdq-pair", f"DequantizeLinear '{c.name}' uses another scale than this QuantizeLinear")
    return out


def _rank(name: str, g: _Graph) -> int:
    if name in g.consts:
        return len(g.consts[name].dims)
    q = g.producer.get(name)
    return len(g.consts[q.input[0]].dims) if q is not None and q.input[0] in g.consts else 2


def _fed_by_const_q(name: str, g: _Graph) -> bool:
    q = g.producer.get(name)
    return q is not None and q.op_type == "QuantizeLinear" and q.input[0] in g.consts


def _weight_consumers(n, g: _Graph) -> list:
    """The layers reading the dequantized weight (through the DQ when ``n`` is a Q)."""
    outs = [n.output[0]]
    if n.op_type == "QuantizeLinear":
        outs = [d.output[0] for d in g.consumers.get(n.output[0], []) if d.op_type == "DequantizeLinear"]
    return [c for o in outs for c in g.consumers.get(o, []) if len(c.input) > 1 and c.input[1] == o]


def _check_profiles(model, profiles: Mapping[str, Mapping[str, list[int]]],
                    data_shapes: Mapping[str, tuple]) -> list[Violation]:
    out = []
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        prof = profiles.get(inp.name)
        if prof is None:
            out.append(Violation("profile", inp.name, "input", "no optimisation profile for this input"))
            continue
        lo, opt, hi = (list(prof[k]) for k in ("min", "opt", "max"))
        if not len(lo) == len(opt) == len(hi) == len(dims):
            out.append(Violation("profile", inp.name, "input", f"profile ranks {len(lo)}/{len(opt)}/{len(hi)} "
                                                               f"differ from the input's rank {len(dims)}"))
            continue
        for ax, (d, a, b, c) in enumerate(zip(dims, lo, opt, hi)):
            if not 1 <= a <= b <= c:
                out.append(Violation("profile", inp.name, "input", f"axis {ax}: need 1 <= min <= opt <= max, "
                                                                   f"got {a}/{b}/{c}"))
            elif d and d > 0 and not a == b == c == d:
                out.append(Violation("profile", inp.name, "input", f"axis {ax} is fixed at {d} in the model, "
                                                                   f"but the profile says {a}/{b}/{c}"))
        shape = data_shapes.get(inp.name)
        if shape is not None and len(shape) == len(hi):
            # axis 0 is the batch, which the Predictor splits to fit the profile
            bad = [ax for ax in range(1, len(shape)) if not lo[ax] <= shape[ax] <= hi[ax]]
            if bad:
                out.append(Violation("profile", inp.name, "input", f"eval data shape {list(shape)} is outside the "
                                                                   f"profile min {lo} / max {hi} on axes {bad}"))
    return out


def check_model(model, tensorrt_version: str, profiles: Optional[Mapping[str, Any]] = None,
                data_shapes: Optional[Mapping[str, tuple]] = None) -> list[Violation]:
    """Every violation of TensorRT ``tensorrt_version``'s rules in ``model`` (an onnx.ModelProto)."""
    table = ops_table.table_for(tensorrt_version)
    found = _check_opset(model, tensorrt_version, table) + _check_ops(model, tensorrt_version, table)
    g = _Graph(model)
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in ONNX_DOMAINS:
            found += _check_qdq_node(n, g, tensorrt_version, table)
    if table == "8.5":
        for inp in model.graph.input:
            if inp.type.tensor_type.elem_type == 7 and inp.name not in g.consts:
                found.append(Violation("input-type", inp.name, "input", f"int64 input: TensorRT {tensorrt_version}"
                                       f" casts it to int32 (values beyond 2**31 would be clipped)", "warning"))
    if profiles is not None:
        found += _check_profiles(model, profiles, data_shapes or {})
    return found


def _target_violations(build: Mapping[str, Any], target) -> list[Violation]:
    """Build settings the target's hardware cannot honour."""
    out = []
    hw = target.hardware
    cc = hw.get("compute_capability")
    if build.get("flags", {}).get("sparse_weights") and cc and float(cc) < 8.0:
        out.append(Violation("target", "", "", f"2:4 sparsity needs compute capability 8.0+, "
                                               f"'{target.name}' is {cc}"))
    core = (build.get("dla") or {}).get("core")
    if core is not None and core >= int(hw.get("dla_cores", 0) or 0):
        out.append(Violation("target", "", "", f"DLA core {core} requested, '{target.name}' has "
                                               f"{hw.get('dla_cores', 0)} DLA core(s)"))
    return out


def verify_bundle(bundle, target_name: str, target=None) -> list[Violation]:
    """Check a bundle's TensorRT ONNX and build settings against the rules of ``target_name``'s TensorRT.

    The bundle's target of that name is checked; when the bundle has no target of that name, its first
    TensorRT target is checked against that target file (e.g. a bundle made for Orin, checked for Xavier)."""
    import json
    from pathlib import Path

    import onnx

    from edgefm.backends.tensorrt import tensorrt_version
    from edgefm.bundle import read_manifest
    from edgefm.errors import BundleError
    from edgefm.targets import get_target

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    target = target or get_target(target_name)
    trt_targets = [n for n, e in manifest.targets.items() if e.backend == "tensorrt"]
    if not trt_targets:
        raise BundleError(f"bundle {bundle} has no TensorRT target to verify (it has: "
                          f"{', '.join(manifest.targets) or 'none'})")
    name = target.name if target.name in trt_targets else trt_targets[0]
    entry = manifest.targets[name]
    model = onnx.load(str(bundle / entry.options["onnx"]))
    build = json.loads((bundle / entry.options["build"]).read_text())
    shapes: dict[str, tuple] = {}
    if manifest.eval_data and (bundle / manifest.eval_data).is_file():
        from edgefm.bundle import read_npz

        data = read_npz(bundle / manifest.eval_data, "bundle eval data")
        shapes = {k[3:]: v.shape for k, v in data.items() if k.startswith("in/")}
    return (_target_violations(build, target)
            + check_model(model, tensorrt_version(target), build.get("profiles"), shapes))
