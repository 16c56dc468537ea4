"""Peers suite: the same models through what a user would otherwise run, side by side with edgefm's int8
bundles, the fp32 ONNX and torch eager, in one run (one process per measurement):

- ``ort-dynamic (optimum-cli)``: ONNX Runtime dynamic quantization with the settings of
  ``optimum-cli onnxruntime quantize --avx512_vnni`` (``--arm64`` on Arm; the same ORT call): QOperator /
  IntegerOps, activations u8 asymmetric, weights s8 symmetric, per-tensor (the CLI's default), no reduce-range,
  every op of ORT's IntegerOps registry, MatMuls with non-constant B included (Optimum's ONNXQuantizer
  call does not set MatMulConstBOnly). Applied to the bundle's verified fp32 ONNX, so only the quantizer
  differs (Optimum would have exported with its own exporter).
- ``nncf-ptq→openvino (optimum-intel)``: ``ov.convert_model`` of the same ONNX, then ``nncf.quantize`` with
  optimum-intel's default ``OVQuantizationConfig``: preset MIXED (asymmetric activations), model_type
  TRANSFORMER (its default for every model), fast bias correction, 128 calibration samples, overflow fix
  off; run with the LATENCY hint.
- ``torch dynamic int8``: ``torch.ao.quantization.quantize_dynamic`` on Linear/LSTM/GRU of the source model.

    python benchmarks/peers.py [--models digits_cnn,minilm] [--batch 1,8]

Prints the table and writes benchmarks/results/<machine-id>/peers.{csv,md}, peers-<model>.json, plots."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import suite

from edgefm.bench.subjects import Subject
from edgefm.bundle import read_manifest


def optimum_ort_dynamic(src: Path, out: Path) -> Path:
    """``optimum-cli onnxruntime quantize --avx512_vnni`` (or ``--arm64``) without Optimum installed."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    graph = onnx.load(str(src), load_external_data=False).graph
    subgraphs = any(n.op_type in ("If", "Loop", "Scan", "SequenceMap") for n in graph.node)
    quantize_dynamic(str(src), str(out), op_types_to_quantize=list(IntegerOpsRegistry), per_channel=False,
                     reduce_range=False, weight_type=QuantType.QInt8,
                     extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, "EnableSubgraph": subgraphs,
                                    "ForceSymmetric": False, "MatMulConstBOnly": False})
    return out


def optimum_intel_ptq(src: Path, out: Path, calib: dict) -> Path:
    """optimum-intel's default full int8 quantization: OVQuantizationConfig() → nncf.quantize → IR."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(src))
    n = len(next(iter(calib.values())))
    items = [{k: v[i:i + 1] for k, v in calib.items()} for i in range(n)]
    q = nncf.quantize(model, nncf.Dataset(items), preset=nncf.QuantizationPreset.MIXED, subset_size=min(128, n),
                      fast_bias_correction=True, model_type=nncf.ModelType.TRANSFORMER,
                      advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.DISABLE))
    ov.save_model(q, str(out))
    return out


def calibration(c: suite.Case, spec) -> dict:
    """The same calibration samples edgefm got (edgefm.datasets reads .npz and .txt alike)."""
    from edgefm.datasets import load_samples
    from edgefm.zoo import minilm_path

    tok = minilm_path() if c.name == "minilm" else None
    return load_samples(c.calib, spec, tokenizer_dir=tok, max_length=128, limit=256).inputs


def peers_of(c: suite.Case, say=print):
    """The extra subjects for ``suite.measure``: built once per model under .cache/benchmarks/peers."""

    def build(first: Path) -> list[Subject]:
        m = read_manifest(first)
        src = first / m.reference
        d = suite.WORK / "peers" / c.name
        d.mkdir(parents=True, exist_ok=True)
        out: list[Subject] = []
        t0 = time.perf_counter()
        ort_path = d / "model.optimum-dynamic.onnx"
        if not ort_path.exists():
            optimum_ort_dynamic(src, ort_path)
        preset = "--arm64" if platform.machine() in ("aarch64", "arm64") else "--avx512_vnni"
        out.append(Subject(name=f"ort-dynamic (optimum-cli {preset})", role="peer", kind="onnx", spec=m.spec,
                           precision="int8", path=str(ort_path)))
        try:
            import nncf  # noqa: F401
            import openvino  # noqa: F401
        except ImportError:
            say("peers: openvino/nncf not installed, skipping the optimum-intel peer")
        else:
            xml = d / "model.nncf-int8.xml"
            if not xml.exists():
                optimum_intel_ptq(src, xml, calibration(c, m.spec))
            out.append(Subject(name="nncf-ptq→openvino (optimum-intel)", role="peer", kind="openvino", spec=m.spec,
                               precision="int8", path=str(xml), options={"hint": "LATENCY"}))
        cfg = m.config or {}
        out.append(Subject(name="torch dynamic int8", role="peer", kind="torch", spec=m.spec, precision="int8",
                           path=m.source.path, arch=cfg.get("arch"), inputs=list(cfg.get("inputs") or []),
                           torch_dynamic_int8=True))
        say(f"peers of {c.name} ready in {time.perf_counter() - t0:.0f} s")
        return out

    return build


def main() -> None:
    args = suite.arguments(__doc__.splitlines()[0], ["digits_cnn", "digits_lstm", "minilm", "mobilenet_v2"],
                           ["int8"], "1,8", seconds=2.0)
    suite.run("peers", args, extra=peers_of)


if __name__ == "__main__":
    main()
