"""Concurrency: one Predictor per target shared by N threads, each making M calls on random held-out samples; every
answer must equal the single-threaded answer for that sample (bit for bit). Writes a Markdown table.

    python benchmarks/concurrency.py [--threads 8] [--calls 1000] [--out benchmarks/results/<machine-id>/concurrency.md]

The model is the digits CNN (trained here in ~20 s), compressed once for every runtime target; the Jetson target's
Q/DQ ONNX runs in ONNX Runtime on this machine."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["onnxruntime-cpu", "openvino-cpu", "tflite-arm64", "jetson-orin-nano"]


def _bundle(work: Path) -> Path:
    import torch

    import edgefm
    from edgefm import zoo
    from edgefm.config import build_config

    torch.manual_seed(0)
    m = zoo.digits_cnn()
    zoo.train_digits(m, epochs=15)
    ckpt = work / "digits_cnn.pt"
    torch.save(m.state_dict(), ckpt)
    cfg = build_config(source=ckpt, output=work / "bundle", targets=TARGETS, arch="edgefm.zoo:digits_cnn",
                       inputs=["x:1,1,8,8"], calib=ROOT / "calibration" / "digits_calib.npz",
                       eval=ROOT / "calibration" / "digits_eval.npz")
    edgefm.compress(cfg)
    return work / "bundle"


def _hammer(pred, x: np.ndarray, ref: list[np.ndarray], threads: int, calls: int, seed: int) -> tuple[int, float]:
    """(mismatches, seconds) of ``threads`` x ``calls`` single-sample calls on random samples."""
    out = pred.output_names[0]

    def worker(t: int) -> int:
        rng = np.random.default_rng(seed + t)
        bad = 0
        for i in rng.integers(0, len(x), calls):
            got = pred({"x": x[i:i + 1]})[out]
            bad += int(not np.array_equal(got, ref[i]))
        return bad

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        bad = sum(pool.map(worker, range(threads)))
    return bad, time.perf_counter() - t0


def main() -> None:
    import edgefm
    from edgefm.bench.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    x = np.load(ROOT / "calibration" / "digits_eval.npz")["x"].astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgefm-concurrency-") as tmp:
        bundle = _bundle(Path(tmp))
        for target in TARGETS:
            pred = edgefm.load(bundle, target)
            out = pred.output_names[0]
            ref = [pred({"x": x[i:i + 1]})[out] for i in range(len(x))]
            bad, secs = _hammer(pred, x, ref, args.threads, args.calls, seed=len(rows))
            rows.append((target, pred.executes, args.threads * args.calls, bad, secs))
            print(f"{target}: {args.threads} threads x {args.calls} calls, {bad} mismatches, {secs:.1f} s", flush=True)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    info = machine_info()
    lines = [f"# Concurrency: {args.threads} threads x {args.calls} calls per target, one shared Predictor", "",
             f"Machine `{info.id} ({info.cpu_model})`, load average {load}; digits CNN int8, batch 1; a mismatch is an answer that "
             f"differs (bit for bit) from the single-threaded answer for the same sample.", "",
             "| target | runs in | calls | mismatches | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {e} | {n} | {b} | {s:.1f} |" for t, e, n, b, s in rows]
    out_path = args.out or ROOT / "benchmarks" / "results" / info.id / "concurrency.md"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    print(out_path)
    if any(r[3] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
