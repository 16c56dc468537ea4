"""The search's outputs for people: the Pareto front (markdown) and a plot (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def pareto_front(rows: list[dict], objectives: Sequence[str]) -> list[dict]:
    """Rows no other row beats on every objective (all minimized); equal rows keep the first."""
    front = []
    for i, a in enumerate(rows):
        dominated = False
        for j, b in enumerate(rows):
            if i == j:
                continue
            le = all(b[o] <= a[o] for o in objectives)
            lt = any(b[o] < a[o] for o in objectives)
            if (le and lt) or (j < i and all(b[o] == a[o] for o in objectives)):
                dominated = True
                break
        if not dominated:
            front.append(a)
    return sorted(front, key=lambda r: r[objectives[0]])


def _recipe(p: dict) -> str:
    parts = [p["target"], p["quantize"]]
    if p.get("macs_target"):
        parts.append(f"macs-{p['macs_target']}")
    elif p.get("prune"):
        parts.append(f"prune {p['prune']}")
    if p.get("distill_epochs"):
        parts.append(f"distill {p['distill_epochs']} ep")
    if p.get("keep_fp32"):
        parts.append("keep " + "/".join(p["keep_fp32"]))
    return ", ".join(parts)


def _row(t: dict) -> str:
    return (f"| {t['number']} | {_recipe(t['params'])} | {t['latency_p50_ms']:.3f} | {t['latency_p90_ms']:.3f} "
            f"| {100 * t['top1']:.2f} | {t['accuracy_drop']:+.2f} | {t['size_mb']:.4f} |"
            if t.get("top1") is not None else
            f"| {t['number']} | {_recipe(t['params'])} | {t['latency_p50_ms']:.3f} | {t['latency_p90_ms']:.3f} "
            f"| n/a | n/a | {t['size_mb']:.4f} |")


HEAD = ("| trial | recipe | p50 ms | p90 ms | top-1 % | drop (points) | size MB |\n"
        "|---|---|---|---|---|---|---|")


def write_report(path: Path, s: dict, front: list[dict]) -> None:
    """search.md: how it ran, the Pareto front, the chosen bundle, and every trial."""
    ch = s["chosen"]
    lines = [
        "# edgefm search", "",
        f"Latency measured on {s['measured_on']} (batch 1, one thread, p50 of the timed calls; load average "
        f"{s['baseline'].get('loadavg', 'n/a')} at the baseline), not on the target hardware.", "",
        f"- trials asked: {s['trials_asked']}, compressed this run: {s['trials_run']}, "
        f"wall time {s['wall_s']} s, sampler {s['sampler']}",
        f"- budget: {s['budget_text']}",
        f"- baseline (unpruned fp32, onnxruntime-cpu): top-1 {100 * (s['baseline'].get('top1') or 0):.2f}%, "
        f"p50 {s['baseline'].get('latency_p50_ms', 0):.3f} ms",
        f"- Ray nodes that ran trials: {len(s['nodes'])}",
        "- chosen: " + (f"trial {ch['number']} ({_recipe(ch['params'])}) -> {s['output'] or '(no -o given)'}"
                        if ch else "none meets the budget"), "",
        "## Pareto front (latency p50, accuracy drop, size)", "", HEAD, *[_row(t) for t in front], "",
        "## All trials", "", HEAD.replace("| size MB |", "| size MB | status | node | cached |")
        .replace("|---|---|---|---|---|---|---|", "|---|---|---|---|---|---|---|---|---|---|")]
    for t in s["trials"]:
        if t["status"] == "ok":
            lines.append(_row(t) + f" ok | {str(t.get('node'))[:8]} | {bool(t.get('cached'))} |")
        else:
            lines.append(f"| {t['number']} | {_recipe(t['params'] or {})} | | | | | | {t['status']}: "
                         f"{(t.get('reason') or '').replace('|', '/')[:160]} | {str(t.get('node'))[:8]} "
                         f"| {bool(t.get('cached'))} |")
    Path(path).write_text("\n".join(lines) + "\n")


def write_plot(path: Path, ok: list[dict], front: list[dict], budget, chosen: Optional[dict]) -> None:
    """Latency p50 vs accuracy drop, one colour per target, the front joined, the budget drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    targets = sorted({t["params"]["target"] for t in ok})
    for name in targets:
        pts = [t for t in ok if t["params"]["target"] == name]
        ax.scatter([t["latency_p50_ms"] for t in pts], [t["accuracy_drop"] for t in pts], label=name, alpha=0.7)
    if front:
        ax.plot([t["latency_p50_ms"] for t in front], [t["accuracy_drop"] for t in front], "k--", lw=1,
                label="Pareto front")
    if budget.latency_ms is not None:
        ax.axvline(budget.latency_ms, color="r", lw=0.8, label="budget")
    if budget.accuracy_drop is not None:
        ax.axhline(budget.accuracy_drop, color="r", lw=0.8)
    if chosen:
        ax.scatter([chosen["latency_p50_ms"]], [chosen["accuracy_drop"]], s=200, facecolors="none",
                   edgecolors="g", lw=2, label="chosen")
    ax.set_xscale("log")  # runtimes differ by 10x and more; a budget line far off must not squash the points
    ax.set_xlabel("latency p50, batch 1 (ms, this machine, log scale)")
    ax.set_ylabel("top-1 drop vs fp32 (points)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
