"""Speed suite: MobileNetV2-224 (random weights), the real all-MiniLM-L6-v2 at sequence 128, and an LSTM
(2 layers, hidden 256, 50 steps) — every installed target × fp32/int8, batch 1 and 8, against torch eager
and the fp32 ONNX in ONNX Runtime, each measurement in its own process.

    python benchmarks/speed.py [--models minilm] [--targets onnxruntime-cpu] [--batch 1,8] [--seconds 2]

Prints the table and writes benchmarks/results/<machine-id>/speed.{csv,md}, speed-<model>.json and plots."""

from __future__ import annotations

import suite


def main() -> None:
    args = suite.arguments(__doc__.splitlines()[0], ["mobilenet_v2", "minilm", "lstm_256"], ["fp32", "int8"],
                           "1,8", seconds=2.0)
    suite.run("speed", args)


if __name__ == "__main__":
    main()
