"""The ``edgefm`` command. Each verb only fills a config and calls the API; errors print as one line
(``--verbose`` shows the traceback). Heavy modules are imported inside the commands."""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer
import typer.core
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from edgefm.errors import BundleError, EdgefmError, describe_write_error

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress pretrained PyTorch models into verified int8 bundles for edge runtimes.")
# Progress and logs go to stderr, results to stdout. Piped (not a terminal), stdout gets a wide console so
# that tables never wrap or cut values to an 80-column guess; in a terminal, columns fold instead of "…".
console = Console(stderr=True, log_path=False)
out = Console() if sys.stdout.isatty() else Console(width=400)

# Loggers of the libraries edgefm drives: quiet (ERROR) unless --verbose.
_THIRD_PARTY = ("torch", "torchao", "nncf", "transformers", "onnxruntime", "onnxscript", "openvino", "absl",
                "tensorflow", "ai_edge_litert", "ai_edge_quantizer", "litert_torch", "matplotlib", "PIL",
                "huggingface_hub", "urllib3", "timm", "py.warnings")


def print_error(message: str) -> None:
    """``error: MESSAGE`` on one line of stderr. The message is printed as plain text: rich markup would eat
    anything that looks like a tag (``[min, opt, max]``, ``[/x]``), and a newline would split it."""
    one_line = re.sub(r"\s*\n\s*", " | ", str(message).strip())
    console.print(Text.assemble(("error:", "bold red"), " ", one_line), soft_wrap=True, highlight=False)


# typer >= 0.25 vendors click as typer._click; older typers use click itself
_click = getattr(typer.core, "_click", None) or __import__("click")
_NoArgsIsHelp = getattr(_click.exceptions, "NoArgsIsHelpError", ())


class _OneLineErrors(TyperGroup):
    """Click's usage errors (unknown flag, a value that is not a number …) as one ``error:`` line with exit
    code 2, like edgefm's own errors, instead of a usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp:  # `edgefm` alone: the help, as click prints it
            return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
        except _click.exceptions.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            print_error(f"{e.format_message()}{where}")
            sys.exit(e.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_OneLineErrors,
                  help="Compress pretrained PyTorch models into verified int8 bundles for edge runtimes.")


def _setup_logging(verbose: bool) -> None:
    """Default: edgefm's own warnings only, as ``level name: message`` lines on stderr. Third-party logs,
    Python warnings (torch.onnx's TracerWarnings...), NNCF's progress bars and LiteRT's delegate banner are
    dropped; ``--verbose`` shows all of them and edgefm's debug log."""
    import os

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger, filtered like the rest
    if verbose:
        return
    # Libraries that log through the root logger (ONNX Runtime's quantizer: "Please consider to run
    # pre-processing...") are cut there; edgefm's own loggers keep WARNING.
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("edgefm").setLevel(logging.WARNING)
    # Before torch is imported (it resets its loggers on import); inherited by the converter subprocess.
    os.environ.setdefault("TORCH_LOGS", "-torch")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("EDGEFM_QUIET", "1")  # tflite_run: silence LiteRT's once-per-process delegate banner
    for name in _THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    import rich

    rich.reconfigure(quiet=True)  # rich's global console: NNCF draws its progress bars on it (stdout)
    # ONNX Runtime's C++ warnings (e.g. on unused initializers) go to stderr unless told otherwise. Set once it is
    # imported: importing it here would cost a mistake that needs no model a second of start-up.
    _after_import("onnxruntime", lambda ort: ort.set_default_logger_severity(3))


def _after_import(name: str, hook) -> None:
    """Run ``hook(module)`` when ``name`` is imported (now, if it already is)."""
    import importlib.abc
    import importlib.util

    if name in sys.modules:
        hook(sys.modules[name])
        return

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                try:
                    hook(module)
                except Exception:  # quieting a library must never break a command
                    pass

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())


class _Steps:
    """Progress for long commands, on stderr. Each step prints one line with the seconds since the command
    started (``[  12.3 s] compiling openvino-cpu``); in a terminal a spinner also shows how long the current
    step has been running."""

    def __init__(self, con: Console):
        import time

        self._time, self._con = time.perf_counter, con
        self._t0 = self._time()
        self._live = None
        if con.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._live = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                                  console=con, transient=True)
            self._task = self._live.add_task("starting", total=None)

    def __enter__(self):
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.stop()
        return False

    def __call__(self, msg: str) -> None:
        line = f"[{self._time() - self._t0:7.1f} s] {msg}"
        if self._live is not None:
            self._live.reset(self._task, description=msg)  # the spinner's clock restarts with each step
            self._live.console.print(line, highlight=False, markup=False)
        else:
            self._con.print(line, highlight=False, markup=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        from edgefm import __version__

        print(f"edgefm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print edgefm's version and exit")) -> None:
    """Compress pretrained PyTorch models into verified int8 bundles for edge runtimes."""


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
            print_error(str(e))
            raise typer.Exit(2) from None
        except OSError as e:
            # Disk full or a folder edgefm may not write: the user's environment, not a bug. Stages that know
            # what they were writing say so themselves; this is the net under the rest.
            why = describe_write_error(e)
            if why is None:
                raise
            if verbose:
                console.print_exception()
            print_error(why)
            raise typer.Exit(2) from None
        except MemoryError:
            print_error("out of memory: the model, the declared --input shapes or the data are too large for "
                        "this machine")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print_error("interrupted (nothing was written)")
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
    submodule: Optional[str] = typer.Option(None, "--submodule", help="Compress this submodule (dotted path) of a "
                                            "TorchScript or --arch model, e.g. the inner model that takes its state "
                                            "explicitly"),
    input: Optional[List[str]] = typer.Option(None, "--input", help="NAME:DIMS[:DTYPE][=VALUE], e.g. x:1,1,8,8:float32, "
                                              "state:2,batch,128 (batch axis 1), sr:scalar:int64=16000 (constant)"),
    state: Optional[List[str]] = typer.Option(None, "--state", help="STATE_IN:STATE_OUT: a recurrent state fed back "
                                              "call to call; data are then streams (streams, chunks, ...)"),
    calib: Optional[Path] = typer.Option(None, help="Calibration data: .npz, .txt or image folder"),
    eval: Optional[Path] = typer.Option(None, "--eval", help="Evaluation data (same formats; .npz may hold labels)"),
    quantize: Optional[str] = typer.Option(None, help="int8, fp16 or fp32 for every target (default: the target's)"),
    keep_fp32: Optional[List[str]] = typer.Option(None, "--keep-fp32", help="Node name or op type kept in float"),
    max_accuracy_drop: Optional[float] = typer.Option(
        None, help="Allowed top-1 drop in points on labeled eval data (without labels: cosine drop in points)"),
    fallback: bool = typer.Option(True, "--fallback/--no-fallback", help="When int8 misses the accuracy contract, "
                                  "keep the most damaged parts in higher precision until it holds (listed in the "
                                  "manifest); --no-fallback refuses instead"),
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
    _setup_logging(verbose)
    from edgefm.config import build_config
    from edgefm.contract import parse_output_decl
    from edgefm.pipeline import compress as run, plan

    decls = dict(parse_output_decl(d) for d in output_kind or [])
    cfg = build_config(recipe, source=source, output=output, targets=target, arch=arch, submodule=submodule,
                       inputs=input, state=state, calib=calib,
                       eval=eval, quantize=quantize, keep_fp32=keep_fp32, max_accuracy_drop=max_accuracy_drop,
                       fallback=None if fallback else False,
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

    with sigterm_as_interrupt(), _Steps(console) as steps:  # SIGTERM cleans up like Ctrl-C
        manifest = run(cfg, progress=steps)
    _print_targets(manifest, cfg.output)
    if manifest.failed:  # the others were written and verify; the run as a whole did not do all it was asked
        print_error(f"{len(manifest.failed)} of {len(manifest.failed) + len(manifest.targets)} targets failed "
                    f"({', '.join(manifest.failed)}); the bundle holds the others")
        raise typer.Exit(1)


def _section(**fields) -> Optional[dict]:
    """The given (non-None) fields of a config section, {} for a bare switch, None when nothing was given."""
    given = {k: v for k, v in fields.items() if v is not None}
    return given or None


def _print_targets(manifest, bundle: Optional[Path] = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="targets")
    for col in ("target", "backend", "precision"):
        t.add_column(col, no_wrap=True)
    t.add_column("artifact", overflow="fold")
    if bundle is not None:
        t.add_column("size (fp32 ONNX)", overflow="fold")
    t.add_column("fidelity to fp32", overflow="fold")
    fp32 = _fp32_bytes(manifest, bundle) if bundle is not None else None
    for name, e in manifest.targets.items():
        size = [_size_text(_files_bytes(bundle, e.files), fp32)] if bundle is not None else []
        kept_in = (e.fallback or {}).get("kept_precision", "float")
        prec = e.precision + (f" ({len(e.kept_in_float)} kept in {kept_in})" if e.kept_in_float else "")
        t.add_row(escape(name), e.backend, prec, escape(e.artifact), *size, escape(_fidelity_text(e.metrics)))
    for name, f in manifest.failed.items():
        size = [""] if bundle is not None else []
        t.add_row(escape(name), f.backend, f.precision, "[red]FAILED[/]", *size, f"[red]{escape(f.error)}[/]")
    out.print(t)
    for name, e in manifest.targets.items():  # whole lines, so they can be read (and grepped) unwrapped
        if e.kept_in_float:
            out.print(f"[yellow]note[/] {escape(name)}: the accuracy fallback kept {len(e.kept_in_float)} part(s) out of "
                      f"{e.precision} ({(e.fallback or {}).get('kept_precision', 'float')}) so that the contract holds: {escape(', '.join(e.kept_in_float[:6]))}"
                      + (" ..." if len(e.kept_in_float) > 6 else ""), soft_wrap=True, highlight=False)
        for n in e.notes:
            out.print(f"[yellow]note[/] {escape(name)}: {escape(n)}", soft_wrap=True, highlight=False)
    for name, f in manifest.failed.items():
        out.print(f"[red]FAILED[/] {escape(name)}: {escape(f.reason)}", soft_wrap=True, highlight=False)


def _files_bytes(bundle: Path, files: list[str]) -> Optional[int]:
    """Bytes of the files that are there (a TensorRT engine is built on the device: None until then)."""
    sizes = [(Path(bundle) / f).stat().st_size for f in files if (Path(bundle) / f).is_file()]
    return sum(sizes) if sizes else None


def _fp32_bytes(manifest, bundle: Path) -> Optional[int]:
    """The verified fp32 ONNX with its external-data files (everything in its folder)."""
    if not manifest.reference:
        return None
    folder = Path(manifest.reference).parent.as_posix()
    return _files_bytes(bundle, [f for f in manifest.files if Path(f).parent.as_posix() == folder]
                        or [manifest.reference])


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _size_text(n: Optional[int], fp32: Optional[int]) -> str:
    if n is None:
        return "built on the device"
    if not fp32:
        return _mb(n)
    return f"{_mb(n)} ({_mb(fp32)}, {n / fp32:.2f}x)"


def _fidelity_text(metrics: dict) -> str:
    from edgefm.contract import summarize

    return summarize(metrics)


@app.command()
@handles_errors
def inspect(bundle: Path = typer.Argument(..., help="Bundle folder"),
            json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON"),
            verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Show a bundle's whole manifest as tables (``--json``: the manifest itself)."""
    from rich.markup import escape
    from rich.table import Table

    from edgefm.bundle import MANIFEST, read_manifest, verify_files

    if bundle.is_file():
        if bundle.name != MANIFEST:
            raise BundleError(f"{bundle} is a file; inspect takes a bundle folder (the one holding {MANIFEST})")
        bundle = bundle.parent  # a bundle's manifest.json: inspect its folder
    m = read_manifest(bundle)  # refuses paths leading out of the bundle, unlisted artifacts and tokenizer files
    try:
        verify_files(bundle, m)
        integrity, intact = f"[green]all files match their sha256[/] ({len(m.files)} files)", True
    except EdgefmError as e:
        integrity, intact = f"[red]{escape(str(e))}[/]", False
        print_error(str(e))
    if json_out:
        out.print_json(m.model_dump_json())
        if not intact:
            raise typer.Exit(1)
        return
    out.print(f"[bold]{escape(str(bundle))}[/]  edgefm {escape(m.edgefm_version)}, format {m.format_version}, "
              f"created {escape(m.created)}")
    out.print(escape(f"source: {m.source.path} ({m.source.kind}, sha256 {m.source.sha256})"), soft_wrap=True)
    out.print(escape(f"model: {m.spec.family} / {m.spec.task}"
                     + (f", {m.spec.num_classes} classes" if getattr(m.spec, "num_classes", None) else "")
                     + f"; reference {m.reference}; eval data {m.eval_data}; ") + f"integrity: {integrity}",
              soft_wrap=True)
    io = Table(title="inputs / outputs")
    for c in ("name", "shape", "dtype / kind"):
        io.add_column(c, overflow="fold")
    for i in m.spec.inputs:
        io.add_row(escape(f"in: {i.name}"), escape(str(i.shape)), escape(i.dtype))
    for o in m.spec.outputs:
        why = "declared" if o.declared else f"guessed: {o.reason}" if o.reason else ""
        io.add_row(escape(f"out: {o.name}"), "", escape(f"{o.kind} ({why})" if why else o.kind))
    out.print(io)
    if m.config:
        cfg = Table(title="configuration")
        cfg.add_column("field", no_wrap=True)
        cfg.add_column("value", overflow="fold")
        for k, v in m.config.items():
            if v not in (None, [], {}, ""):
                cfg.add_row(escape(k), escape(_value_text(v)))
        out.print(cfg)
    _print_targets(m, bundle)
    det = Table(title="target details")
    for c in ("target", "field", "value"):
        det.add_column(c, overflow="fold")
    shown = {"backend", "precision", "artifact", "metrics"}  # in the targets table above
    for name, e in list(m.targets.items()) + list(m.failed.items()):
        for k, v in e.model_dump(mode="json").items():  # every field, so new ones show without a change here
            if k not in shown and v not in (None, [], {}, ""):
                det.add_row(escape(name), escape(k), escape(_value_text(v)))
    out.print(det)
    st = Table(title="stages")
    for c in ("stage", "target", "seconds", "settings", "metrics", "notes"):
        st.add_column(c, overflow="fold")
    for s in m.stages:
        st.add_row(s.name, escape(s.target or ""), f"{s.seconds:.1f}", escape(_value_text(s.settings)),
                   escape(_fidelity_text(s.metrics) or ""), escape("\n".join(s.notes)))
    out.print(st)
    if not intact:  # a modified bundle is shown, but not as if it were fine
        raise typer.Exit(1)


def _value_text(v) -> str:
    """A config or settings value on one line: dicts as k=v pairs, everything else as JSON."""
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value_text(x)}" for k, x in v.items())
    return v if isinstance(v, str) else json.dumps(v, default=str)


@app.command()
@handles_errors
def targets(verbose: bool = typer.Option(False, "--verbose", "-v")):
    """List the device profiles (targets/*.yaml) and whether their runtime is installed here."""
    from rich.table import Table

    from edgefm.backends import get_backend
    from edgefm.backends.base import has
    from edgefm.targets import host_note, list_targets

    t = Table(title="targets")
    for c in ("name", "backend", "precision"):
        t.add_column(c, no_wrap=True)
    t.add_column("here")
    t.add_column("description")
    for name, spec in sorted(list_targets().items()):
        try:
            mod = get_backend(spec.backend, need_runtime=False)
            here = mod.availability(spec) if has(mod, "availability") else ("yes" if mod.is_available() else "no")
        except EdgefmError:
            here = "no"
        note = host_note(spec)  # another architecture, or a CPU without what the recipe counts on (not "yes")
        if note and here != "no":
            here = f"{'runs' if here == 'yes' else here}; {note}"
        t.add_row(name, spec.backend, spec.precision, here, spec.description)
    out.print(t)


@app.command()
@handles_errors
def verify(bundle: Path = typer.Argument(..., help="Bundle folder"),
           target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Target(s) to check (default all)"),
           emulate: Optional[str] = typer.Option(None, help="Also run under emulation of this CPU arch (arm64)"),
           cpu: Optional[str] = typer.Option(None, help="CPU core to emulate (default: the target's cpu_core)"),
           device: Optional[List[str]] = typer.Option(None, "--device", "-d", help="Verify on this board of the "
                                                                                   "inventory over SSH (repeatable)"),
           fleet: bool = typer.Option(False, "--fleet", help="Verify on every board of the inventory, in parallel"),
           inventory: Optional[Path] = typer.Option(None, "--inventory", help="Device inventory YAML"),
           verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Check a bundle where it will run: integrity, fidelity on its eval data, the target's rules, emulation."""
    from rich.table import Table

    from rich.markup import escape

    from edgefm.verify import verify_bundle

    _setup_logging(verbose)
    if device or fleet:
        _verify_on_devices(bundle, device, fleet, inventory, target, emulate, cpu)
        return
    reports = verify_bundle(bundle, target, emulate=emulate, cpu=cpu)
    t = Table(title=f"verify {bundle}")
    for c in ("target", "check", "result"):
        t.add_column(c, no_wrap=c != "result")
    for r in reports:
        for c in r.checks:
            mark = "[yellow]skipped[/]" if c.skipped else "[green]ok[/]" if c.ok else "[red]FAIL[/]"
            # details quote shapes such as [min, opt, max]: not markup
            t.add_row(escape(r.target), c.name, f"{mark} {escape(str(c.detail))}")
    out.print(t)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


def _verify_on_devices(bundle, device, fleet, inventory, target, emulate, cpu) -> None:
    from rich.table import Table

    from edgefm.devices import fleet as fl
    from edgefm.devices.cli import selected

    args = [a for t in target or [] for a in ("--target", t)]
    args += (["--emulate", emulate] if emulate else []) + (["--cpu", cpu] if cpu else [])
    inv, devs = selected(inventory, device, fleet)
    outs = fl.verify(bundle, inv, devs, args, progress=lambda msg: console.log(msg))
    t = Table(title=f"verify {bundle} on {len(devs)} device(s)")
    for c in ("device", "target", "check", "result"):
        t.add_column(c, no_wrap=c != "result")
    bad = 0
    for o in outs:
        if not o.ok:
            t.add_row(o.device, "", "reach / run", f"[red]FAIL[/] {o.error}")
            bad += 1
            continue
        for r in o.value:
            bad += not r["ok"]
            for c in r["checks"]:
                mark = "[green]ok[/] " if c["ok"] else "[red]FAIL[/] "
                t.add_row(o.device, r["target"], c["name"], mark + c["detail"])
    out.print(t)
    if bad:
        raise typer.Exit(1)


@app.command()
@handles_errors
def bench(
    bundle: Path = typer.Argument(..., help="Bundle folder"),
    device: Optional[List[str]] = typer.Option(None, "--device", "-d", help="Run on this board of the inventory "
                                                                            "over SSH (repeatable)"),
    fleet: bool = typer.Option(False, "--fleet", help="Run on every board of the inventory, in parallel"),
    inventory: Optional[Path] = typer.Option(None, "--inventory", help="Device inventory YAML (devices.yaml)"),
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
    _setup_logging(verbose)
    from edgefm.bench.cli import bench as run
    from edgefm.bench.config import BenchConfig, build

    if device or fleet:
        if torch_source is not None:
            from edgefm.errors import ConfigError

            raise ConfigError("--torch-source is a file on this machine; a bench on --device/--fleet measures the "
                              "bundle with the board's own runtimes only")
        _bench_on_devices(bundle, device, fleet, inventory, target=target, eval=eval, batch=batch, threads=threads,
                          warmup=warmup, runs=runs, seconds=seconds, no_baselines=no_baselines, json_out=json_out,
                          md=md, plots=plots)
        return
    cfg = build(BenchConfig, bundle=bundle, targets=target or None, eval=eval, batches=batch or None,
                threads=threads, warmup=warmup, runs=runs, seconds=seconds, baselines=False if no_baselines else None,
                torch_source=torch_source, arch=arch, trust_source=trust_source or None, json_out=json_out,
                md_out=md, plots=plots, verbose=verbose or None)
    with _Steps(console) as steps:
        run(cfg, echo=print, progress=steps)


def _bench_on_devices(bundle, device, fleet, inventory, *, target, eval, batch, threads, warmup, runs, seconds,
                      no_baselines, json_out, md, plots) -> None:
    from edgefm.devices import fleet as fl
    from edgefm.devices.cli import selected
    from edgefm.errors import ConfigError

    if eval is not None:
        raise ConfigError("--eval is a file on this machine; with --device the bench uses the bundle's own eval data")
    args = [a for t in target or [] for a in ("--target", t)] + [a for b in batch or [] for a in ("--batch", b)]
    for flag, value in (("--threads", threads), ("--warmup", warmup), ("--runs", runs), ("--seconds", seconds)):
        args += [flag, str(value)] if value is not None else []
    args += ["--no-baselines"] if no_baselines else []
    inv, devs = selected(inventory, device, fleet)
    outs = fl.bench(bundle, inv, devs, args, json_out=json_out, md_out=md, plots=plots, echo=print,
                    progress=lambda msg: console.log(msg))
    if fl.failed_count(outs):
        console.print(f"[bold red]error:[/] {fl.failed_count(outs)} of {len(outs)} devices failed (see the table)")
        raise typer.Exit(1)


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
             device: Optional[str] = typer.Option(None, "--device", "-d", help="Build on this board of the inventory "
                                                                               "over SSH and pull the result back"),
             output: Optional[Path] = typer.Option(None, "-o", "--output", help="With --device: the new bundle "
                                                                                "revision (default BUNDLE@DEVICE)"),
             inventory: Optional[Path] = typer.Option(None, "--inventory", help="Device inventory YAML"),
             verbose: bool = typer.Option(False, "--verbose", "-v")):
    """On the device: build what can only be built there (TensorRT engines), verify it, record it in the bundle."""
    from edgefm.backends.tensorrt import compile_engine

    _setup_logging(verbose)
    if device:
        from edgefm.bundle import read_manifest
        from edgefm.devices import fleet as fl
        from edgefm.devices.cli import selected

        args = ([] if target is None else ["--target", target]) + (
            [] if workspace_mib is None else ["--workspace-mib", str(workspace_mib)]) + (
            [] if dla_core is None else ["--dla-core", str(dla_core)]) + (
            ["--allow-other-device"] if allow_other_device else [])
        inv, devs = selected(inventory, [device], False)
        with console.status(f"building on {device}"):
            path = fl.compile_on(bundle, inv, devs[0], output, args)
        console.print(f"wrote the new bundle revision {path}")
        _print_targets(read_manifest(path))
        return
    with console.status("building TensorRT engine(s)"):
        manifest = compile_engine(bundle, target, allow_other_device=allow_other_device,
                                  workspace_mib=workspace_mib, dla_core=dla_core)
    _print_targets(manifest)


def _floats(text: Optional[str], flag: str) -> Optional[list]:
    """'none,0.25,0.5' -> [None, 0.25, 0.5] (one clear line on a bad value)."""
    if text is None:
        return None
    vals = []
    for part in text.split(","):
        part = part.strip()
        if part.lower() in ("none", "0", ""):
            vals.append(None)
            continue
        try:
            vals.append(float(part))
        except ValueError:
            from edgefm.errors import ConfigError

            raise ConfigError(f"{flag} {text!r}: {part!r} is not a number or 'none'") from None
    return vals


@app.command()
@handles_errors
def search(
    source: Path = typer.Argument(..., help="Checkpoint, as for compress"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the best bundle that meets the "
                                                                        "budget here"),
    target: Optional[List[str]] = typer.Option(None, "--target", "-t", help="Targets searched over (repeatable)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="latency_ms=..,accuracy_drop=..,size_mb=.."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Trials (default 12)"),
    storage: Optional[Path] = typer.Option(None, "--storage", help="Shared folder for trials, bundles and the "
                                                                    "report (default ./edgefm-search)"),
    ray: Optional[str] = typer.Option(None, "--ray", help="Address of an existing Ray cluster (default: an "
                                                          "embedded local Ray)"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="Embedded Ray: CPUs (default all)"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="nsga2 (default), tpe, grid or random"),
    prune_choices: Optional[str] = typer.Option(None, "--prune-choices", help="Prune ratios, e.g. none,0.25,0.5"),
    quantize_choices: Optional[str] = typer.Option(None, "--quantize-choices", help="e.g. int8,fp32"),
    distill_choices: Optional[str] = typer.Option(None, "--distill-choices", help="Distill epochs, e.g. 0,5"),
    arch: Optional[str] = typer.Option(None, help="module.path:factory, file.py:factory or timm:NAME"),
    input: Optional[List[str]] = typer.Option(None, "--input", help="NAME:DIMS[:DTYPE]"),
    calib: Optional[Path] = typer.Option(None, help="Calibration data"),
    eval: Optional[Path] = typer.Option(None, "--eval", help="Evaluation data (labels give the accuracy drop)"),
    recipe: Optional[Path] = typer.Option(None, help="Recipe YAML; its search: section sets space/budget/trials"),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it is an edgefm bundle"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs and tracebacks"),
):
    """Search prune ratio x precision x target (Optuna, trials on Ray) for the Pareto front of latency,
    accuracy drop and size; write the best bundle that meets --budget."""
    from edgefm.search.driver import search as run
    from edgefm.search.space import from_recipe, parse_budget

    _setup_logging(verbose)
    space = {"targets": target, "prune": _floats(prune_choices, "--prune-choices"),
             "quantize": quantize_choices.split(",") if quantize_choices else None,
             "distill_epochs": [int(v or 0) for v in _floats(distill_choices, "--distill-choices")]
             if distill_choices else None}
    overrides = {"space": space, "trials": trials, "storage": storage, "ray_address": ray, "num_cpus": num_cpus,
                 "sampler": sampler}
    if budget:
        overrides["budget"] = parse_budget(budget).model_dump(exclude_none=True)
    base, cfg = from_recipe(recipe, dict(source=source, output=output or Path("unused"), arch=arch, inputs=input,
                                         calib=calib, eval=eval), overrides)
    s = run(base, cfg, out=output, force=force, progress=lambda m: console.log(m))
    st = Path(cfg.storage)
    out.print(f"{s['trials_asked']} trials ({s['trials_run']} compressed, the rest from the cache) in "
              f"{s['wall_s']} s; report {st / 'search.md'}, plot {st / 'pareto.png'}")
    if s["chosen"] is None:
        console.print(f"[bold red]error:[/] no trial meets the budget ({s['budget_text']}); see {st / 'search.md'}")
        raise typer.Exit(1)
    ch = s["chosen"]
    out.print(f"chosen: trial {ch['number']} {ch['params']}: p50 {ch['latency_p50_ms']:.3f} ms, "
              f"drop {ch['accuracy_drop']:.2f} points, {ch['size_mb']:.3f} MB"
              + (f" -> {s['output']}" if s["output"] else ""))


@app.command("compress-zoo")
@handles_errors
def compress_zoo(
    zoo: Path = typer.Argument(..., help="Zoo YAML: models: [{name, source, <compress fields>}], optional defaults:"),
    output: Path = typer.Option(..., "-o", "--output", help="Folder: one bundle per model and report.md"),
    ray: Optional[str] = typer.Option(None, "--ray", help="Address of an existing Ray cluster (default embedded)"),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="Embedded Ray: CPUs (default all)"),
    force: bool = typer.Option(False, "--force", help="Replace bundles already there"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logs and tracebacks"),
):
    """Compress every model of a zoo file in parallel on Ray: one bundle each and one report."""
    from edgefm.search.zoo import compress_zoo as run

    _setup_logging(verbose)
    rep = run(zoo, output, ray_address=ray, num_cpus=num_cpus, force=force, progress=lambda m: console.log(m))
    out.print(f"{rep['ok']} of {len(rep['models'])} models compressed in {rep['wall_s']} s; report {output / 'report.md'}")
    if rep["ok"] < len(rep["models"]):
        raise typer.Exit(1)


def _add_devices() -> None:
    from edgefm.devices.cli import app as devices_app

    app.add_typer(devices_app, name="devices")


_add_devices()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
