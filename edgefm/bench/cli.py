"""What ``edgefm bench`` and ``edgefm report`` do, as plain functions of a config (edgefm/cli.py only
parses flags into ``BenchConfig`` / ``ReportConfig`` and calls these)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from edgefm.bench.config import BenchConfig, ReportConfig
from edgefm.bench.schema import BenchResult, read_result


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench(cfg: BenchConfig, echo: Callable[[str], None] = print, progress: Optional[Callable[[str], None]] = _say
          ) -> BenchResult:
    """Measure the bundle, print the table (and what was skipped), write --json / --md / plots."""
    from edgefm.bench import report
    from edgefm.bench.machine import busy_warning
    from edgefm.bench.runner import run_bench

    result = run_bench(cfg, progress)
    table = report.rows([result])
    m = result.machine
    echo(f"{result.bundle.model if result.bundle else ''} on {m.id} ({m.cpu_model}; {m.logical_cores} cores; "
         f"flags {' '.join(m.cpu_flags) or '-'}); threads {cfg.threads or 'runtime default'}; "
         f"eval {result.settings.eval_samples} samples; {result.wall_s:.1f} s")
    echo(report.markdown(table))
    busy = busy_warning(m)
    if busy:
        echo(busy)
    for name, note in dict.fromkeys((m.name, n) for m in result.measurements for n in m.notes):
        echo(f"note {name}: {note}")
    for name, note in _host_notes(m.name for m in result.measurements).items():
        echo(f"note {name}: {note}: these figures are this machine's, not the target device's")
    for s in result.skipped:
        echo(f"skipped {s.name}: {s.reason}")
    if cfg.json_out:
        _write(cfg.json_out, result.to_json())
    if cfg.md_out:
        _write(cfg.md_out, report.markdown(table))
    if cfg.plots:
        report.plot_pareto(table, Path(cfg.plots) / "pareto.png")
        report.plot_latency([result], Path(cfg.plots) / "latency.png")
    _fail_if_no_target_ran(cfg, result)
    return result


def _fail_if_no_target_ran(cfg: BenchConfig, result: BenchResult) -> None:
    """A bench where every target of the bundle failed is a failed bench (exit code 2), not a table of baselines:
    scripts check the exit code. The reasons were printed above and are in --json."""
    from edgefm.errors import BundleError

    if any(m.role == "target" for m in result.measurements):
        return
    targets = [s for s in result.skipped if s.name not in ("fp32-onnx", "torch-eager")]
    if targets:
        why = "; ".join(f"{s.name}: {s.reason}" for s in targets)[:600]
        raise BundleError(f"bundle {cfg.bundle}: no target could be measured here ({why})")


def _host_notes(names) -> dict[str, str]:
    """For each measured target whose profile this host does not match (another architecture, or a CPU without
    what the profile ``requires``): why. Baselines and targets without a known profile are left out."""
    from edgefm.errors import TargetError
    from edgefm.targets import get_target, host_note

    out = {}
    for name in dict.fromkeys(names):
        try:
            note = host_note(get_target(name))
        except TargetError:
            continue
        if note:
            out[name] = note
    return out


def report(cfg: ReportConfig, echo: Callable[[str], None] = print) -> list[Path]:
    """Merge result JSONs into OUT/report.md, OUT/results.csv and (with plots) OUT/pareto.png, OUT/latency.png."""
    from edgefm.bench import report as rep

    results = [read_result(p) for p in cfg.results]
    table = rep.rows(results)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.md", out / "results.csv"]
    machines = "\n".join(f"- {f'device `{r.device_name}`, ' if r.device_name else ''}`{r.machine.id}`: "
                         f"{r.machine.cpu_model}, {r.machine.logical_cores} cores, "
                         f"{r.machine.os}; {r.created}" for r in results)
    md = f"# edgefm benchmark report\n\n{machines}\n\n{rep.markdown(table)}"
    if cfg.plots:
        plots = (rep.plot_pareto(table, out / "pareto.png", cfg.batch), rep.plot_latency(results, out / "latency.png"))
        for p in plots:
            if p is not None:
                written.append(p)
                md += f"\n![{p.stem}]({p.name})\n"
    (out / "report.md").write_text(md)
    rep.write_csv(table, out / "results.csv")
    echo(rep.markdown(table))
    echo("wrote " + ", ".join(str(p) for p in written))
    return written


def _write(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
