"""Accuracy suite: the digits CNN and digits LSTM (trained here in seconds, real held-out labels) and the
real all-MiniLM-L6-v2 (cosine to the fp32 embeddings on held-back sentences) — fp32 against every
compressed variant of every installed target, with latency beside each figure.

    python benchmarks/accuracy.py [--models digits_cnn] [--targets onnxruntime-cpu] [--precisions int8,fp16]

Prints the table and writes benchmarks/results/<machine-id>/accuracy.{csv,md}, accuracy-<model>.json and
accuracy-pareto.png (latency vs accuracy, Pareto front ringed)."""

from __future__ import annotations


import suite


def main() -> None:
    args = suite.arguments(__doc__.splitlines()[0], ["digits_cnn", "digits_lstm", "minilm"], ["int8", "fp16"],
                           "1", seconds=1.0)
    suite.run("accuracy", args)


if __name__ == "__main__":
    main()
