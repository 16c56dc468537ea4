"""Results → rows → Markdown table, CSV and plots (latency vs accuracy with the Pareto front marked;
latency distributions). Several result JSONs (machines, devices, suites) merge into one table and plot.
matplotlib is imported inside the plotting functions only (the ``[bench]`` extra)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from edgefm.bench.schema import BenchResult, Measurement

#: CSV/table columns, in order (the CSV header is this list; it is part of the documented output).
COLUMNS = ["device_name", "machine", "model", "name", "role", "backend", "precision", "device", "batch", "threads",
           "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "throughput_per_s", "cpu_ms",
           "cpu_util",
           "speedup_vs_fp32", "fp32_baseline", "speedup_vs_torch", "cold_ms", "load_s", "peak_rss_mb",
           "size_mb", "accuracy_metric", "accuracy", "fp32_top1", "top5", "min_cosine", "max_abs",
           "top1_agreement", "energy_mj", "ran_as"]


# Names that say nothing about the model: the folder or file a checkpoint happens to sit in.
_GENERIC = {"model", "models", "checkpoint", "checkpoints", "pytorch_model", "weights", "best", "last", "final",
            "export", "exports", "onnx", "snapshot", "snapshots", "main", "out", "output", "bundle", "tmp", "src"}


def _generic(name: str) -> bool:
    import re

    return (not name or name.lower() in _GENERIC or re.fullmatch(r"[0-9a-f]{32,}", name) is not None
            or re.fullmatch(r"(checkpoint|ckpt|epoch|step)[-_]?\d+", name.lower()) is not None)


def model_name(source: Optional[str], arch: Optional[str] = None, spec_arch: Optional[str] = None) -> str:
    """A model's name from its checkpoint: a Hugging Face folder's own name, else its model card's title, its
    config's ``_name_or_path`` or architecture; a file's stem; else the ``--arch`` factory or the spec's
    architecture. Never a generic folder name such as "model" (a package's weights folder)."""
    import json

    candidates: list[Optional[str]] = []
    if source:
        path = Path(source)
        if path.is_dir():
            candidates.append(path.name)
            readme = path / "README.md"
            if readme.is_file():  # a model card's first level-1 heading ("# all-MiniLM-L6-v2")
                title = next((ln[2:].strip() for ln in readme.read_text(errors="replace").splitlines()
                              if ln.startswith("# ")), None)
                candidates.append(title if title and len(title) <= 60 and " " not in title else None)
            try:
                cfg = json.loads((path / "config.json").read_text())
            except (OSError, ValueError):
                cfg = {}
            candidates.append(str(cfg.get("_name_or_path") or "").rstrip("/").rsplit("/", 1)[-1])
            candidates.append((cfg.get("architectures") or [None])[0])
        else:
            candidates.append(path.stem)
    if arch:  # module.path:factory, file.py:factory, timm:NAME
        candidates.append(arch.rsplit(":", 1)[-1])
    candidates += [spec_arch, Path(source).parent.name if source else None]
    return next((c for c in candidates if c and not _generic(c)), Path(source).name if source else "?")


def _model_label(result: BenchResult, m: Measurement) -> str:
    if not result.bundle:
        return "?"
    b = result.bundle
    # results written before model names came from the checkpoint may say "model": name it again
    return model_name(b.source, None, b.arch) if _generic(b.model) else b.model


def _ran_elsewhere(result: BenchResult, m: Measurement) -> Optional[str]:
    """How a target's figure was really measured when its backend fell back to another runtime, e.g. a Jetson
    target's Q/DQ ONNX run by ONNX Runtime on an x86 machine: "Q/DQ in ORT on x86, not TensorRT"."""
    import re

    for note in m.notes:
        hit = re.match(r"target backend (\w+), but it ran on (\w+)", note)
        if hit:
            want, ran = hit.groups()
            arch = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm64"}.get(result.machine.arch.lower(),
                                                                            result.machine.arch)
            names = {"tensorrt": "TensorRT", "onnxruntime": "ORT", "openvino": "OpenVINO", "tflite": "LiteRT"}
            what = "Q/DQ" if want == "tensorrt" else "model"
            return f"{what} in {names.get(ran, ran)} on {arch}, not {names.get(want, want)}"
    return None


def row(result: BenchResult, m: Measurement, model: Optional[str] = None) -> dict[str, Any]:
    """One flat row of figures for tables and CSV."""
    acc_name, acc = m.accuracy.headline() if m.accuracy else ("none", None)
    fid = list(m.accuracy.fidelity.values()) if m.accuracy else []
    lat = m.latency
    elsewhere = _ran_elsewhere(result, m)
    return {
        "device_name": result.device_name,
        "machine": result.machine.id, "model": model or _model_label(result, m), "name": m.name, "role": m.role,
        "label": f"{m.name} ({elsewhere})" if elsewhere else m.name,
        "backend": m.backend, "precision": m.precision, "device": m.device, "batch": m.batch, "threads": m.threads,
        "p50_ms": lat.p50, "p90_ms": lat.p90, "p99_ms": lat.p99, "mean_ms": lat.mean, "std_ms": lat.std,
        "min_ms": lat.min, "max_ms": lat.max, "throughput_per_s": lat.throughput, "cpu_ms": lat.cpu_ms,
        "cpu_util": lat.cpu_util,
        "speedup_vs_fp32": m.speedup_vs_fp32, "fp32_baseline": m.fp32_baseline, "speedup_vs_torch": m.speedup_vs_torch,
        "cold_ms": m.cold_ms, "load_s": m.load_s, "peak_rss_mb": m.memory.peak_rss_mb,
        "size_mb": m.size_bytes / 1e6 if m.size_bytes is not None else None,
        "accuracy_metric": acc_name, "accuracy": acc,
        "fp32_top1": m.accuracy.fp32_top1 if m.accuracy else None,
        "top5": m.accuracy.top5 if m.accuracy else None,
        "min_cosine": min((f["min_cosine"] for f in fid if "min_cosine" in f), default=None),
        "max_abs": max((f["max_abs"] for f in fid if "max_abs" in f), default=None),
        "top1_agreement": min((f["top1_agreement"] for f in fid if "top1_agreement" in f), default=None),
        "energy_mj": m.energy.energy_per_inference_mj if m.energy else None,
        "ran_as": elsewhere,  # set when the target's runtime fell back to another one here
    }


def rows(results: Iterable[BenchResult]) -> list[dict[str, Any]]:
    return [row(r, m) for r in results for m in r.measurements]


def write_csv(table: Sequence[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in table:
            w.writerow({k: _csv_value(r.get(k)) for k in COLUMNS})


def _csv_value(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)


def _fmt(v: Any, spec: str, suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def _acc_cell(r: dict[str, Any]) -> str:
    if r["accuracy"] is None:
        return "–"
    if r["accuracy_metric"] == "top1":
        show = r["fp32_top1"] is not None and r["role"] != "fp32-reference"
        ref = f" (fp32 {100 * r['fp32_top1']:.1f})" if show else ""
        return f"top1 {100 * r['accuracy']:.1f}{ref}"
    return f"cos {r['accuracy']:.4f}"


def _cpu_cell(r: dict[str, Any]) -> str:
    if r.get("cpu_ms") is None:
        return "–"
    return f"{r['cpu_ms']:.3f} ({r['cpu_util']:.1f} cores)" if r.get("cpu_util") is not None else f"{r['cpu_ms']:.3f}"


def markdown(table: Sequence[dict[str, Any]], with_machine: Optional[bool] = None) -> str:
    """A Markdown table, one line per measurement, each naming its machine and model (``with_machine=False``
    drops the machine column where the caller names the machine above the table)."""
    many_m = True if with_machine is None else with_machine
    many_models = True
    on_devices = any(r.get("device_name") for r in table)  # remote runs (--device/--fleet): name the board
    head = (["device"] if on_devices else []) + (["machine"] if many_m else []) + (
        ["model"] if many_models else []) + [
        "measured", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms", "CPU ms", "samples/s",
        "× fp32",
        "× torch", "cold ms", "load s", "peak RSS MiB", "size MB", "accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in table:
        cells = ([r.get("device_name") or "(here)"] if on_devices else []) + ([r["machine"]] if many_m else []) + (
            [r["model"]] if many_models else []) + [
            r.get("label", r["name"]), r["precision"], str(r["batch"]), _fmt(r["p50_ms"], ".3f"), _fmt(r["p90_ms"], ".3f"),
            _fmt(r["p99_ms"], ".3f"), f"{r['mean_ms']:.3f} ± {r['std_ms']:.3f}", _cpu_cell(r),
            _fmt(r["throughput_per_s"], ".1f"),
            _fmt(r["speedup_vs_fp32"], ".2f", "×"), _fmt(r["speedup_vs_torch"], ".2f", "×"),
            _fmt(r["cold_ms"], ".1f"), _fmt(r["load_s"], ".2f"), _fmt(r["peak_rss_mb"], ".0f"),
            _fmt(r["size_mb"], ".2f"), _acc_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower latency (x) and higher accuracy (y) are better.
    Returned in order of increasing latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(table: Sequence[dict[str, Any]], path: Path, batch: Optional[int] = None) -> Optional[Path]:
    """Latency (p50, log scale) vs accuracy, one panel per model, colours per machine, the Pareto front of
    each machine drawn as a step line with its points ringed. Returns None when nothing has accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in table if r["accuracy"] is not None]
    if batch is None and pts:
        batch = min(r["batch"] for r in pts)
    pts = [r for r in pts if r["batch"] == batch]
    if not pts:
        return None
    models = sorted({r["model"] for r in pts})
    machines = sorted({r["machine"] for r in pts})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(models), figsize=(6.2 * len(models), 4.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        for mi, machine in enumerate(machines):
            sel = [r for r in pts if r["model"] == model and r["machine"] == machine]
            if not sel:
                continue
            c = colors[mi % len(colors)]
            xy = [(r["p50_ms"], r["accuracy"]) for r in sel]
            ax.scatter(*zip(*xy), color=c, s=28, label=machine, zorder=3)
            for r, (x, y) in zip(sel, xy):
                name = r.get("label", r["name"])
                ax.annotate(f"{name} {r['precision']}" if r["precision"] not in r["name"] else name,
                            (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
            front = [xy[i] for i in pareto_front(xy)]
            ax.scatter(*zip(*front), s=110, facecolors="none", edgecolors=c, linewidths=1.4, zorder=4)
            ax.step(*zip(*front), where="post", color=c, alpha=0.6, linewidth=1.2)
        metric = sel[0]["accuracy_metric"] if sel else "accuracy"
        ax.set_xscale("log")
        ax.set_xlabel(f"p50 latency, ms (batch {batch}, log scale)")
        ax.set_ylabel("top-1 accuracy" if metric == "top1" else "cosine to fp32 (lowest output)")
        ax.set_title(f"{model}: ringed = Pareto front")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="machine", title_fontsize=8)  # every point's machine, even with one
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency(results: Sequence[BenchResult], path: Path) -> Optional[Path]:
    """Box plots of the per-run latencies of every measurement (log scale), one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, data = [], []
    for r in results:
        for m in r.measurements:
            if m.latencies_ms:  # every row names its machine and model
                elsewhere = _ran_elsewhere(r, m)
                name = f"{m.name} ({elsewhere})" if elsewhere else m.name
                labels.append(f"{r.machine.id} {_model_label(r, m)} {name} {m.precision} b{m.batch}")
                data.append(m.latencies_ms)
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(data) + 1.2))
    ax.boxplot(data, orientation="horizontal", showfliers=True, whis=(1, 99),
               flierprops={"markersize": 2, "alpha": 0.4})
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("latency per call, ms (box: p25–p75, line: p50, whiskers: p1–p99)")
    ax.invert_yaxis()
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
