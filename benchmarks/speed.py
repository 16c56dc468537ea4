"""Speed suite: MobileNetV2-224 (random weights), the real all-MiniLM-L6-v2 at sequence 128, and an LSTM
(2 layers, hidden 256, 50 steps) — every installed target × fp32/int8, batch 1 and 8, against torch eager
and the fp32 ONNX in ONNX Runtime, each measurement in its own process.

    python benchmarks/speed.py [--models minilm] [--targets onnxruntime-cpu] [--batch 1,8] [--seconds 2]

Prints the table and writes benchmarks/results/<machine-id>/speed.{csv,md}, speed-<model>.json and plots."""

from __future__ import annotations

import time

import suite


def main() -> None:
    args = suite.arguments(__doc__.splitlines()[0], ["mobilenet_v2", "minilm", "lstm_256"], ["fp32", "int8"],
                           "1,8", seconds=2.0)
    t0 = time.perf_counter()
    timing = suite.timing_from(args)
    targets = suite.suite_targets(suite.split(args.targets))
    results = []
    for name in suite.split(args.models):
        c = suite.case(name)
        made, skipped = suite.bundles(c, targets, suite.split(args.precisions), args.rebuild)
        # speed only: a small eval set keeps the accuracy pass short (the accuracy suite does it properly)
        r = suite.measure(c, made, timing, skipped=skipped)
        if r is not None:
            results.append(r)
    suite.write("speed", results, plots=not args.no_plots)
    print(f"speed suite: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
