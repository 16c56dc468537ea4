"""The ``edgefm`` command. Each verb only fills a config and calls the API; errors print as one line
(``--verbose`` shows the traceback). Heavy modules are imported inside the commands."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from edgefm.errors import EdgefmError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress pretrained PyTorch models into verified int8 bundles for edge runtimes.")
console = Console(stderr=True)
out = Console()


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # libraries' import-time chatter (torchao's missing CUDA kernels, torch's pytree notices)
        for name in ("torchao", "torch", "nncf", "transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)


def handles_errors(fn):
    """Turn EdgefmError into a one-line message and exit code 2 (traceback with --verbose)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        verbose = bool(kwargs.get("verbose"))
        try:
            return fn(*args, **kwargs)
        except EdgefmError as e:
            if verbose:
                console.print_exception()
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[red]interrupted[/] (nothing was written)")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@handles_errors
def compress(
    source: Path = typer.Argument(..., help="Checkpoint: HF folder, .pt/.pth/.safetensors (+--arch), TorchScript, "
                                            ".pt2, or .onnx"),
    output: Path = typer.Option(..., "-o", "--output", help="Bundle folder to write"),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Target name or YAML (repeatable); "
                                                                            "default onnxruntime-cpu"),
    arch: Optional[str] = typer.Option(None, help="module.path:factory, file.py:factory or timm:NAME"),
    input: Optional[List[str]] = typer.Option(None, "--input", help="NAME:DIMS[:DTYPE], e.g. x:1,1,8,8:float32"),
    calib: Optional[Path] = typer.Option(None, help="Calibration data: .npz, .txt or image folder"),
    eval: Optional[Path] = typer.Option(None, "--eval", help="Evaluation data (same formats; .npz may hold labels)"),
    quantize: Optional[str] = typer.Option(None, help="int8, fp16 or fp32 for every target (default: the target's)"),
    keep_fp32: Optional[List[str]] = typer.Option(None, "--keep-fp32", help="Node name or op type kept in float"),
    max_accuracy_drop: Optional[float] = typer.Option(
        None, help="Allowed top-1 drop in points on labeled eval data; also lets every target keep the int8 parts "
                   "that break the accuracy contract in higher precision until it holds (listed in the manifest)"),
    output_kind: Optional[List[str]] = typer.Option(
        None, "--output-kind", help="What an output means, NAME:KIND[:key=value,...] (repeatable), e.g. "
                                    "speaker:embedding, vad:binary:threshold=0.5, "
                                    "det:detections:boxes=0:4,scores=4:,layout=cxcywh,axis=1"),
    metric: Optional[str] = typer.Option(None, "--metric", help="Your task metric path/to/file.py:fn(ref, got, labels) "
                                                                "-> float or dict, higher is better (compress only)"),
    metric_drop: Optional[float] = typer.Option(None, "--metric-drop", help="Largest allowed drop of --metric below "
                                                                            "fp32 (its units; default 0.01)"),
    max_length: Optional[int] = typer.Option(None, help="Sequence length for text (default 128)"),
    prune: Optional[float] = typer.Option(None, "--prune", help="Share of channels / RNN hidden units / FFN neurons "
                                                                "to remove, e.g. 0.5 (recipe: prune section)"),
    prune_macs: Optional[float] = typer.Option(None, "--prune-macs", help="Prune until at most this share of the "
                                                                          "MACs is left, e.g. 0.5 (CNN/RNN)"),
    prune_layers: Optional[int] = typer.Option(None, "--prune-layers", help="Transformers: keep this many layers"),
    distill: bool = typer.Option(False, "--distill", help="Distill the pruned model from the original"),
    distill_epochs: Optional[int] = typer.Option(None, "--distill-epochs", help="Distillation epochs at most (default 20)"),
    train_data: Optional[Path] = typer.Option(None, "--train-data", help="Distillation data (.npz, .txt; labels "
                                                                         "optional); default --calib"),
    recipe: Optional[Path] = typer.Option(None, help="Recipe YAML with CompressConfig fields; flags override it"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved configuration and stop"),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it is an edgefm bundle"),
    trust_source: bool = typer.Option(False, "--trust-source", help="Load a torch.export program (.pt2): its "
                                                                    "loading unpickles and can run code"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs and tracebacks"),
):
    """Compress SOURCE into a verified bundle for one or more targets."""
    from edgefm.config import build_config
    from edgefm.contract import parse_output_decl
    from edgefm.pipeline import compress as run, plan

    _setup_logging(verbose)
    decls = dict(parse_output_decl(d) for d in output_kind or [])
    cfg = build_config(recipe, source=source, output=output, targets=target, arch=arch, inputs=input, calib=calib,
                       eval=eval, quantize=quantize, keep_fp32=keep_fp32, max_accuracy_drop=max_accuracy_drop,
                       outputs=decls or None, metric=metric, metric_drop=metric_drop,
                       max_length=max_length, force=force or None, trust_source=trust_source or None,
                       dry_run=dry_run or None, verbose=verbose or None,
                       prune=_section(ratio=prune, macs_target=prune_macs, num_layers=prune_layers),
                       distill=(_section(epochs=distill_epochs) or {}) if distill or distill_epochs else None,
                       train_data=train_data)
    if cfg.dry_run:
        out.print_json(json.dumps(plan(cfg).describe()))
        return
    from edgefm.bundle import sigterm_as_interrupt

    with sigterm_as_interrupt(), console.status("starting") as status:  # SIGTERM cleans up like Ctrl-C
        manifest = run(cfg, progress=lambda msg: (status.update(msg), console.log(msg)))
    _print_targets(manifest)
    if manifest.failed:  # the others were written and verify; the run as a whole did not do all it was asked
        console.print(f"[bold red]error:[/] {len(manifest.failed)} of {len(manifest.failed) + len(manifest.targets)} "
                      f"targets failed ({', '.join(manifest.failed)}); the bundle holds the others")
        raise typer.Exit(1)


def _section(**fields) -> Optional[dict]:
    """The given (non-None) fields of a config section, {} for a bare switch, None when nothing was given."""
    given = {k: v for k, v in fields.items() if v is not None}
    return given or None


def _print_targets(manifest) -> None:
    from rich.table import Table

    t = Table(title="targets")
    for col in ("target", "backend", "precision"):
        t.add_column(col, no_wrap=True)
    t.add_column("artifact")
    t.add_column("fidelity to fp32")
    for name, e in manifest.targets.items():
        text = _fidelity_text(e.metrics) + "".join(f"\n[yellow]note:[/] {n}" for n in e.notes)
        t.add_row(name, e.backend, e.precision, e.artifact, text)
    for name, f in manifest.failed.items():
        t.add_row(name, f.backend, f.precision, "[red]FAILED[/]", f"[red]{f.error}:[/] {f.reason}")
    out.print(t)


def _fidelity_text(metrics: dict) -> str:
    from edgefm.contract import summarize

    return summarize(metrics)


@app.command()
@handles_errors
def inspect(bundle: Path = typer.Argument(..., help="Bundle folder"),
            json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON"),
            verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Show a bundle's manifest as tables."""
    from rich.table import Table

    from edgefm.bundle import read_manifest, verify_files

    m = read_manifest(bundle)  # refuses paths leading out of the bundle, unlisted artifacts and tokenizer files
    try:
        verify_files(bundle, m)
        integrity, intact = "[green]all files match their sha256[/]", True
    except EdgefmError as e:
        integrity, intact = f"[red]{e}[/]", False
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    if json_out:
        out.print_json(m.model_dump_json())
        if not intact:
            raise typer.Exit(1)
        return
    out.print(f"[bold]{bundle}[/]  edgefm {m.edgefm_version}, created {m.created}")
    out.print(f"source: {m.source.path} ({m.source.kind}, sha256 {str(m.source.sha256)[:12]}…)")
    out.print(f"model: {m.spec.family} / {m.spec.task}; integrity: {integrity}")
    io = Table(title="inputs / outputs")
    for c in ("name", "shape", "dtype / kind"):
        io.add_column(c)
    for i in m.spec.inputs:
        io.add_row(f"in: {i.name}", str(i.shape), i.dtype)
    for o in m.spec.outputs:
        io.add_row(f"out: {o.name}", "", o.kind)
    out.print(io)
    _print_targets(m)
    st = Table(title="stages")
    for c in ("stage", "target", "seconds", "settings", "metrics"):
        st.add_column(c, overflow="fold")
    for s in m.stages:
        settings = ", ".join(f"{k}={v}" for k, v in s.settings.items() if k not in ("op_types", "limits"))
        st.add_row(s.name, s.target or "", f"{s.seconds:.1f}", settings[:160], _fidelity_text(s.metrics) or "")
    out.print(st)
    if not intact:  # a modified bundle is shown, but not as if it were fine
        raise typer.Exit(1)


@app.command()
@handles_errors
def targets(verbose: bool = typer.Option(False, "--verbose", "-v")):
    """List the device profiles (targets/*.yaml) and whether their runtime is installed here."""
    from rich.table import Table

    from edgefm.backends import get_backend
    from edgefm.backends.base import has
    from edgefm.targets import list_targets

    t = Table(title="targets")
    for c in ("name", "backend", "precision", "here"):
        t.add_column(c, no_wrap=True)
    t.add_column("description")
    for name, spec in sorted(list_targets().items()):
        try:
            mod = get_backend(spec.backend, need_runtime=False)
            here = mod.availability(spec) if has(mod, "availability") else ("yes" if mod.is_available() else "no")
        except EdgefmError:
            here = "no"
        t.add_row(name, spec.backend, spec.precision, here, spec.description)
    out.print(t)


@app.command()
@handles_errors
def verify(bundle: Path = typer.Argument(..., help="Bundle folder"),
           target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Target(s) to check (default all)"),
           emulate: Optional[str] = typer.Option(None, help="Also run under emulation of this CPU arch (arm64)"),
           cpu: Optional[str] = typer.Option(None, help="CPU core to emulate (default: the target's cpu_core)"),
           verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Check a bundle where it will run: integrity, fidelity on its eval data, the target's rules, emulation."""
    from rich.table import Table

    from edgefm.verify import verify_bundle

    _setup_logging(verbose)
    reports = verify_bundle(bundle, target, emulate=emulate, cpu=cpu)
    t = Table(title=f"verify {bundle}")
    for c in ("target", "check", "result"):
        t.add_column(c, no_wrap=c != "result")
    for r in reports:
        for c in r.checks:
            t.add_row(r.target, c.name, f"[green]ok[/] {c.detail}" if c.ok else f"[red]FAIL[/] {c.detail}")
    out.print(t)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


@app.command()
@handles_errors
def bench(
    bundle: Path = typer.Argument(..., help="Bundle folder"),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Target to measure (repeatable); "
                                                                            "default: every one installed here"),
    eval: Optional[Path] = typer.Option(None, "--eval", help="Eval data .npz (default: the bundle's eval.npz)"),
    batch: Optional[List[str]] = typer.Option(None, "--batch", help="Batch sizes, e.g. 1,8 (default 1)"),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads for every runtime (default: runtime's)"),
    warmup: Optional[int] = typer.Option(None, help="Untimed warm-up runs (default 10)"),
    runs: Optional[int] = typer.Option(None, help="Fixed number of timed runs (instead of --seconds)"),
    seconds: Optional[float] = typer.Option(None, help="Time budget of the timed runs per measurement (default 2)"),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Skip the fp32 ONNX and torch eager baselines"),
    torch_source: Optional[Path] = typer.Option(None, "--torch-source", help="The bundle's source checkpoint, for the "
                                                                             "torch eager baseline (never read from "
                                                                             "the bundle)"),
    arch: Optional[str] = typer.Option(None, help="--arch of --torch-source when it is a state_dict"),
    trust_source: bool = typer.Option(False, "--trust-source", help="--torch-source may be a .pt2 (its loading "
                                                                    "unpickles and can run code)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result JSON (edgefm.bench schema)"),
    md: Optional[Path] = typer.Option(None, "--md", help="Write the Markdown table"),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write pareto.png and latency.png into this folder"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs and tracebacks"),
):
    """Measure a bundle's targets on this machine: latency, memory, size, accuracy, against fp32 baselines."""
    from edgefm.bench.cli import bench as run
    from edgefm.bench.config import BenchConfig, build

    _setup_logging(verbose)
    cfg = build(BenchConfig, bundle=bundle, targets=target or None, eval=eval, batches=batch or None,
                threads=threads, warmup=warmup, runs=runs, seconds=seconds, baselines=False if no_baselines else None,
                torch_source=torch_source, arch=arch, trust_source=trust_source or None, json_out=json_out,
                md_out=md, plots=plots, verbose=verbose or None)
    run(cfg, echo=print, progress=lambda msg: console.log(msg))


@app.command()
@handles_errors
def report(
    results: List[Path] = typer.Argument(..., help="Result JSON files from edgefm bench or benchmarks/"),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for report.md, results.csv and plots"),
    batch: Optional[int] = typer.Option(None, help="Batch size the Pareto plot uses (default: smallest)"),
    no_plots: bool = typer.Option(False, "--no-plots", help="Tables only (no matplotlib needed)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
):
    """Merge benchmark results from several machines or devices into one table, CSV and plots."""
    from edgefm.bench.cli import report as run
    from edgefm.bench.config import ReportConfig, build

    _setup_logging(verbose)
    run(build(ReportConfig, results=results, out=output, batch=batch, plots=False if no_plots else None), echo=print)


@app.command("compile")
@handles_errors
def compile_(bundle: Path = typer.Argument(..., help="Bundle folder (copied to the device)"),
             target: Optional[str] = typer.Option(None, "--target", "-t", help="TensorRT target (default: all)"),
             workspace_mib: Optional[int] = typer.Option(None, help="Builder workspace limit in MiB"),
             dla_core: Optional[int] = typer.Option(None, help="Build for this DLA core, GPU fallback on"),
             allow_other_device: bool = typer.Option(False, help="Build even if the GPU differs from the target's"),
             verbose: bool = typer.Option(False, "--verbose", "-v")):
    """On the device: build what can only be built there (TensorRT engines), verify it, record it in the bundle."""
    from edgefm.backends.tensorrt import compile_engine

    _setup_logging(verbose)
    with console.status("building TensorRT engine(s)"):
        manifest = compile_engine(bundle, target, allow_other_device=allow_other_device,
                                  workspace_mib=workspace_mib, dla_core=dla_core)
    _print_targets(manifest)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
