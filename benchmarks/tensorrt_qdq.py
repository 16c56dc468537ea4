"""TensorRT-ready Q/DQ ONNX on the workstation: fidelity to fp32 (in ONNX Runtime), size, how many layers are
int8 / fp16, and TensorRT rule violations for each Jetson target, for the digits CNN, the digits LSTM and
all-MiniLM-L6-v2, through ``edgefm.pipeline.compress`` exactly as ``edgefm compress --target ...`` runs.

    python benchmarks/tensorrt_qdq.py            # writes benchmarks/results/tensorrt_qdq.{csv,md}

No engine is built here (that needs the device: ``edgefm compile BUNDLE`` on the Jetson)."""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALIB = ROOT / "calibration"
CHECK_ON = ("jetson-orin-nano", "jetson-xavier-nx")


def _digits_checkpoint(tmp: Path, sequence: bool) -> Path:
    import torch

    from edgefm import zoo

    torch.manual_seed(0)
    model = zoo.digits_lstm() if sequence else zoo.digits_cnn()
    zoo.train_digits(model, sequence=sequence, epochs=40 if sequence else 15)
    path = tmp / ("lstm.pt" if sequence else "cnn.pt")
    torch.save(model.state_dict(), path)
    return path


def _row(name: str, bundle: Path, target: str) -> dict:
    import onnx

    from edgefm.backends import tensorrt_rules as rules
    from edgefm.bundle import read_manifest
    from edgefm.quantize import tensorrt as q
    from edgefm.targets import get_target

    m = read_manifest(bundle)
    entry = m.targets[target]
    build = json.loads((bundle / entry.options["build"]).read_text())
    model = onnx.load(str(bundle / entry.options["onnx"]))
    out = next(k for k in entry.metrics if not k.startswith("_"))
    met, acc = entry.metrics[out], entry.metrics.get("_accuracy")
    row = {"model": name, "target": target, "calibration": build["quantization"]["calibration"],
           "cosine": round(met["cosine"], 4), "min_cosine": round(met["min_cosine"], 4),
           "top1_int8": round(100 * acc["top1"], 2) if acc else "", "top1_fp32": round(100 * acc["fp32_top1"], 2)
           if acc else "", "eval_samples": len(next(iter(_eval_inputs(bundle, m).values()))),
           "int8_layers": len(q.int8_layers(model)), "fp16_layers": len(build["fp16_layers"]),
           "qdq_onnx_mb": round((bundle / entry.options["onnx"]).stat().st_size / 1e6, 2),
           "fp32_onnx_mb": round((bundle / m.reference).stat().st_size / 1e6, 2),
           "seconds": next(s.seconds for s in m.stages if s.target == target)}
    for other in CHECK_ON:
        found = [v for v in rules.verify_bundle(bundle, other, get_target(other)) if v.severity == "error"]
        row[f"violations_{other}"] = len(found)
        row[f"rules_{other}"] = "; ".join(sorted({f"{v.rule}:{v.op}" for v in found}))
    return row


def _eval_inputs(bundle: Path, m) -> dict:
    from edgefm.verify import read_eval

    return read_eval(bundle, m)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    from edgefm.config import CompressConfig
    from edgefm.pipeline import compress
    from edgefm.zoo import minilm_path

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefm-bench-trt-") as tmp:
        tmp = Path(tmp)
        runs = [
            ("digits CNN", dict(source=_digits_checkpoint(tmp, False), arch="edgefm.zoo:digits_cnn",
                                inputs=["x:1,1,8,8"], calib=CALIB / "digits_calib.npz", eval=CALIB / "digits_eval.npz")),
            ("digits LSTM", dict(source=_digits_checkpoint(tmp, True), arch="edgefm.zoo:digits_lstm",
                                 inputs=["x:1,8,8"], calib=CALIB / "digits_seq_calib.npz",
                                 eval=CALIB / "digits_seq_eval.npz")),
            ("all-MiniLM-L6-v2 (seq 128)", dict(source=minilm_path(), calib=CALIB / "sentences.txt")),
        ]
        for name, kw in runs:
            out = tmp / name.split()[0]
            target = "jetson-agx-orin"
            compress(CompressConfig(output=out, targets=[target], force=True, **kw))
            rows.append(_row(name, out, target))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "tensorrt_qdq.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = list(rows[0])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    (args.out / "tensorrt_qdq.md").write_text(
        "# TensorRT Q/DQ ONNX (workstation side), measured in ONNX Runtime against fp32\n\n"
        "Written by `python benchmarks/tensorrt_qdq.py`. Fidelity is on the bundle's eval split; int8/fp16 layer\n"
        "counts are what TensorRT will run in each precision; violations are TensorRT rule errors of the same\n"
        "bundle checked for each target (Xavier NX runs TensorRT 8.5: no LayerNormalization, no int8 weights).\n\n"
        + "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
