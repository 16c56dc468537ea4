"""MobileNetV2-224 as LiteRT: full-integer int8 vs fp32 latency at batch 1 on this machine (XNNPACK).

    PYTHONPATH=. python benchmarks/tflite_mobilenet_int8.py [--threads 1 2] [--runs 200]

Random weights (no model hub here) and random calibration images: this measures speed and size only.
Both models are timed in alternating rounds in one process, because shared machines drift."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def build(tmp: Path):
    import torch

    from edgefm.backends import tflite
    from edgefm.backends.base import CompileJob, Samples
    from edgefm.config import CompressConfig
    from edgefm.contract import Contract
    from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec
    from edgefm.targets import get_target
    from edgefm.zoo import MobileNetV2

    torch.manual_seed(0)
    model = MobileNetV2().eval()
    spec = ModelSpec(family="cnn", task="image-classification", num_classes=1000,
                     inputs=[InputSpec(name="pixel_values", shape=["batch", 3, 224, 224])],
                     outputs=[OutputSpec(name="logits", kind="logits")])
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
    ev = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = {"logits": model(torch.from_numpy(ev)).numpy()}
    paths = {}
    for precision in ("fp32", "int8"):
        target = get_target("tflite-arm64").model_copy(update={"precision": precision, "name": f"mnv2-{precision}"})
        out = tmp / target.name
        job = CompileJob(onnx_path=tmp / "unused.onnx", spec=spec, target=target, precision=precision,
                         calib=Samples({"pixel_values": calib}), eval=Samples({"pixel_values": ev}), reference=ref,
                         out_dir=out, bundle_dir=tmp, config=CompressConfig(source=tmp, output=tmp), model=model,
                         contract=Contract(precision="int8"))  # random weights: no gates, fidelity is not the point
        t = time.time()
        tflite.compile(job)
        paths[precision] = out / "model.tflite"
        print(f"compiled {precision} in {time.time() - t:.0f} s: {paths[precision].stat().st_size / 1e6:.2f} MB")
    return paths


def bench(paths: dict[str, Path], threads: int, runs: int) -> dict[str, float]:
    from edgefm.backends.tflite_run import Runner

    x = {"pixel_values": np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    runners = {k: Runner(str(p), threads) for k, p in paths.items()}
    for r in runners.values():
        for _ in range(10):
            r.run(x)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(runs):  # interleaved, so load changes hit both alike
        for k, r in runners.items():
            t = time.perf_counter()
            r.run(x)
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = build(Path(tmp))
        rows = []
        for th in args.threads:
            ms = bench(paths, th, args.runs)
            rows.append({"threads": th, "fp32_ms": round(ms["fp32"], 2), "int8_ms": round(ms["int8"], 2),
                         "int8_over_fp32": round(ms["int8"] / ms["fp32"], 3),
                         "fp32_mb": round(paths["fp32"].stat().st_size / 1e6, 2),
                         "int8_mb": round(paths["int8"].stat().st_size / 1e6, 2)})
            print(json.dumps(rows[-1]))


if __name__ == "__main__":
    main()
