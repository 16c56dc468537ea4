"""Cross-check of our own latency measurement against OpenVINO's benchmark_app on the same IR, with the same
settings and API (synchronous, one request), interleaved A/B/A/B so drift on a shared machine hits both alike.
Two settings: the LATENCY hint with OpenVINO's default threads, and (benchmark_app only takes -nthreads
without a hint) hint NONE, 1 stream, ``--threads`` threads. The IR is the bundle's fp32 ONNX converted
with ``ov.convert_model`` and reshaped to batch 1 (benchmark_app needs static shapes).

    python benchmarks/crosscheck_openvino.py [--models mobilenet_v2,lstm_256] [--threads 1] [--seconds 5]

Writes benchmarks/results/<machine-id>/crosscheck-openvino.{md,csv}."""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import suite

from edgefm.bench.machine import machine_info
from edgefm.bench.runner import Timing, prepare_eval, run_worker
from edgefm.bench.subjects import Subject
from edgefm.bundle import read_manifest


def static_ir(onnx_path: Path, spec, out: Path) -> Path:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    model.reshape({s.name: list(s.example_shape(batch=1, dynamic=128)) for s in spec.inputs})
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def benchmark_app_median_ms(xml: Path, threads: Optional[int], seconds: float) -> float:
    exe = shutil.which("benchmark_app")
    cmd = [exe] if exe else [sys.executable, "-m", "openvino.tools.benchmark.main"]
    cmd += ["-m", str(xml), "-d", "CPU", "-api", "sync", "-t", str(max(1, round(seconds)))]
    cmd += ["-hint", "latency"] if threads is None else ["-hint", "none", "-nthreads", str(threads), "-nstreams", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = re.search(r"Median:\s+([\d.]+)\s*ms", proc.stdout)
    if not m:
        raise RuntimeError(f"benchmark_app gave no median: {proc.stdout[-800:]} {proc.stderr[-800:]}")
    return float(m.group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mobilenet_v2,lstm_256")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3, help="A/B rounds; each figure is the median over rounds")
    args = p.parse_args()
    rows = []
    for name in suite.split(args.models):
        c = suite.case(name)
        b = suite.bundle(c, "onnxruntime-cpu", "fp32")
        m = read_manifest(b)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            xml = static_ir(b / m.reference, m.spec, work / "model.xml")
            prepare_eval(b / m.eval_data, m.spec, b, work / "eval.npz")
            for threads in (None, args.threads):
                options = {"hint": "LATENCY"} if threads is None else {"hint": "NONE", "streams": 1}
                subject = Subject(name=f"{name} ov-ir", role="peer", kind="openvino", spec=m.spec, path=str(xml),
                                  options=options)
                timing = Timing(batches=[1], threads=threads, warmup=20, seconds=args.seconds, min_runs=50)
                ours, theirs = [], []
                for _ in range(args.rounds):
                    ours.append(run_worker(subject, 1, timing, work / "eval.npz", work).latency.p50)
                    theirs.append(benchmark_app_median_ms(xml, threads, args.seconds))
                o, t = statistics.median(ours), statistics.median(theirs)
                rows.append({"model": name, "setting": "hint LATENCY, default threads" if threads is None else
                             f"hint NONE, 1 stream, {threads} thread(s)", "edgefm_p50_ms": round(o, 4),
                             "benchmark_app_median_ms": round(t, 4), "ratio": round(o / t, 4),
                             "edgefm_rounds": " ".join(f"{x:.3f}" for x in ours),
                             "benchmark_app_rounds": " ".join(f"{x:.3f}" for x in theirs)})
                print(rows[-1], flush=True)
    mi = machine_info()
    out = suite.RESULTS / mi.id
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "crosscheck-openvino.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| model | setting | edgefm p50 ms | benchmark_app median ms | ratio | rounds (edgefm / benchmark_app) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['setting']} | {r['edgefm_p50_ms']:.3f} | {r['benchmark_app_median_ms']:.3f} | "
              f"{r['ratio']:.3f} | {r['edgefm_rounds']} / {r['benchmark_app_rounds']} |" for r in rows]
    text = (f"# edgefm vs benchmark_app on `{mi.id}`\n\nOpenVINO {mi.runtime_versions.get('openvino')}, sync API, "
            f"batch 1, {args.seconds:.0f} s per run, {args.rounds} interleaved rounds (each figure: their median).\n\n"
            + "\n".join(lines) + "\n")
    (out / "crosscheck-openvino.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
