"""Sensitivity analysis: how much each prunable layer alone costs at each pruning ratio.

Each layer is pruned alone (a copy of the model, torch-pruning's dependency graph removing whatever is
coupled to it) at each ratio of ``PruneConfig.sensitivity_ratios``, and the model is scored on the eval
data: top-1 with labels, else top-1 agreement / cosine to the unpruned model (points). The table and
its plot show which layers are robust; ``choose_ratios`` turns it into per-layer ratios."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgefm.samples import Samples
from edgefm.models.spec import ModelSpec


@dataclass
class SensitivityTable:
    """``score[layer][ratio]`` (points) and the unpruned ``base`` score; drop = base - score."""

    base: float
    ratios: list[float]
    score: dict[str, dict[float, float]] = field(default_factory=dict)
    metric: str = "score"

    def drop(self, layer: str, ratio: float) -> float:
        return self.base - self.score[layer][ratio]

    def as_dict(self) -> dict:
        return {"metric": self.metric, "base": round(self.base, 3), "ratios": self.ratios,
                "score": {k: {str(r): round(v, 3) for r, v in row.items()} for k, row in self.score.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "SensitivityTable":
        """The inverse of ``as_dict`` (the form kept in the manifest)."""
        ratios = [float(r) for r in d["ratios"]]
        return cls(base=float(d["base"]), ratios=ratios, metric=d.get("metric", "score"),
                   score={k: {float(r): float(v) for r, v in row.items()} for k, row in d["score"].items()})

    def markdown(self) -> str:
        """The table: one row per layer, the score at each ratio."""
        head = f"| layer ({self.metric}, unpruned {self.base:.2f}) | " + " | ".join(f"{r:g}" for r in self.ratios) + " |"
        rows = [head, "|---" * (len(self.ratios) + 1) + "|"]
        for name, row in self.score.items():
            rows.append(f"| {name} | " + " | ".join(f"{row[r]:.2f}" for r in self.ratios) + " |")
        return "\n".join(rows)

    def plot(self, path: Path) -> Path:
        """Score against ratio, one line per layer, written to ``path`` (png/svg/pdf)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, row in self.score.items():
            ax.plot([0.0] + self.ratios, [self.base] + [row[r] for r in self.ratios], marker="o", label=name)
        ax.set_xlabel("pruning ratio of the layer alone")
        ax.set_ylabel(self.metric + " (points)")
        ax.set_title("Per-layer pruning sensitivity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower left")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def analyze(model, spec: ModelSpec, cfg, data: Samples, max_samples: int = 512) -> SensitivityTable:
    """Prune each layer alone at each ratio and score it (``cfg``: a PruneConfig)."""
    from edgefm.stages.prune import outputs, prunable_layers, pruned_copy, quality, to_args

    data = data.take(slice(0, min(len(data), max_samples)))
    args = to_args(spec, data.take(slice(0, 2)).inputs)
    ref = outputs(model, spec, data)
    base = quality(spec, ref, ref, data.labels)
    metric = "top1" if "top1" in base else "top1_agreement" if "top1_agreement" in base else "cosine"
    table = SensitivityTable(base=base["score"], ratios=sorted(cfg.sensitivity_ratios), metric=metric)
    for name in prunable_layers(model, args, cfg):
        row = {}
        for r in table.ratios:
            m = pruned_copy(model, args, cfg, 0.0, {name: r})
            row[r] = quality(spec, ref, outputs(m, spec, data), data.labels)["score"]
        table.score[name] = row
    return table


def ratios_within(table: SensitivityTable, tolerance: float) -> dict[str, float]:
    """Per layer, the largest tried ratio whose drop is within ``tolerance`` points (0 if none)."""
    out = {}
    for name in table.score:
        ok = [r for r in table.ratios if table.drop(name, r) <= tolerance + 1e-9]
        out[name] = max(ok) if ok else 0.0
    return out


def choose_ratios(table: SensitivityTable, cfg, macs_of: Optional[Callable[[dict[str, float]], float]] = None
                  ) -> dict[str, float]:
    """Per-layer ratios. Without ``cfg.macs_target``: every layer within ``cfg.max_drop``. With it: the
    smallest tolerance whose ratios bring the MACs share (``macs_of(ratios)``) under the target — the
    robust layers are pruned hardest; if even the largest tried ratios miss it, those are returned."""
    if not cfg.macs_target or macs_of is None:
        return ratios_within(table, cfg.max_drop)
    candidates = sorted({max(0.0, table.drop(n, r)) for n in table.score for r in table.ratios})
    lo, hi = 0, len(candidates) - 1
    if macs_of(ratios_within(table, candidates[hi])) > cfg.macs_target:
        return ratios_within(table, candidates[hi])
    while lo < hi:  # MACs fall as the tolerance grows: find the first tolerance that fits
        mid = (lo + hi) // 2
        if macs_of(ratios_within(table, candidates[mid])) <= cfg.macs_target:
            hi = mid
        else:
            lo = mid + 1
    chosen = ratios_within(table, candidates[lo])
    # The tried ratios are a coarse grid, so the chosen ones usually undershoot the budget: scale them
    # all back (same proportions) to the smallest factor that still meets it.
    lo_f, hi_f = 0.0, 1.0
    for _ in range(5):
        mid = (lo_f + hi_f) / 2
        if macs_of({k: v * mid for k, v in chosen.items()}) <= cfg.macs_target:
            hi_f = mid
        else:
            lo_f = mid
    return {k: round(v * hi_f, 4) for k, v in chosen.items()}
