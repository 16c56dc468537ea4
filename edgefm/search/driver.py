"""``edgefm search``: a multi-objective Optuna search (latency p50, accuracy drop, size) over compress
recipes and targets, each trial a real compress + measurement run as a Ray task, trials cached by content
under the storage path so that a re-run resumes."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional

import edgefm
from edgefm.errors import ConfigError
from edgefm.search import raypool
from edgefm.search.report import pareto_front, write_plot, write_report
from edgefm.search.space import SearchConfig
from edgefm.search.trial import read_result, run_trial, sha256_path, trial_key

OBJECTIVES = ("latency_p50_ms", "accuracy_drop", "size_mb")
BASELINE = {"prune": None, "macs_target": None, "distill_epochs": 0, "quantize": "fp32", "keep_fp32": [],
            "target": "onnxruntime-cpu"}


def _input_hashes(base) -> dict[str, str]:
    out = {}
    for name in ("source", "calib", "eval", "train_data"):
        p = getattr(base, name)
        if p is not None:
            out[name] = sha256_path(Path(p))
    if base.arch and ":" in base.arch and Path(base.arch.split(":")[0]).is_file():
        out["arch"] = sha256_path(Path(base.arch.split(":")[0]))
    return out


def _suggest(trial, space) -> dict[str, Any]:
    """Trial params from Optuna (lists are chosen by index: Optuna's choices must be scalars)."""
    p = {"prune": trial.suggest_categorical("prune", space.prune),
         "macs_target": trial.suggest_categorical("macs_target", space.macs_target),
         "distill_epochs": trial.suggest_categorical("distill_epochs", space.distill_epochs),
         "quantize": trial.suggest_categorical("quantize", space.quantize),
         "keep_fp32": space.keep_fp32[trial.suggest_categorical("keep_fp32_set", list(range(len(space.keep_fp32))))],
         "target": trial.suggest_categorical("target", space.targets)}
    if not (p["prune"] or p["macs_target"]):
        p["distill_epochs"] = 0  # nothing to recover from: same bundle, same cache entry
    return p


def _sampler(cfg: SearchConfig):
    import optuna

    s = cfg.space
    if cfg.sampler == "grid":
        class _Grid(optuna.samplers.GridSampler):
            # GridSampler stops the study when the grid is exhausted, which only works inside optimize();
            # with ask/tell the driver counts trials itself
            def after_trial(self, study, trial, state, values):  # noqa: ANN001
                pass

        return _Grid(
            {"prune": s.prune, "macs_target": s.macs_target, "distill_epochs": s.distill_epochs,
             "quantize": s.quantize, "keep_fp32_set": list(range(len(s.keep_fp32))), "target": s.targets},
            seed=cfg.seed)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    return optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=max(4, min(20, cfg.trials)))


def search(base, cfg: SearchConfig, out: Optional[Path] = None, force: bool = False,
           progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Run the search; returns the summary also written to ``storage/search.json`` (with ``search.md`` and
    ``pareto.png``). ``base`` is the CompressConfig every trial starts from; with ``out`` the fastest
    trial that meets the budget is copied there as a normal bundle."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("Optuna is not installed: pip install 'edgefm[search]'") from None
    say = progress or (lambda m: None)
    t0 = time.perf_counter()
    storage = Path(cfg.storage).resolve()
    (storage / "trials").mkdir(parents=True, exist_ok=True)
    if out is not None:
        _check_out(Path(out), force)
    base_json = base.model_dump(mode="json")
    hashes = _input_hashes(base)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize"] * len(OBJECTIVES), sampler=_sampler(cfg))

    results: dict[str, dict] = {}  # key -> result
    records: list[dict] = []  # one per Optuna trial: number, key, cached
    executed = 0
    ray = None
    ctx = None
    fn = None
    pending: dict[Any, str] = {}  # ray ref -> key
    waiting: dict[str, list] = {}  # key -> Optuna trials told when it finishes

    def submit(key: str, params: dict) -> None:
        nonlocal ray, ctx, fn, executed
        if ray is None:  # Ray starts only when something is not cached: a full resume never starts it
            ctx = raypool.session(cfg.ray_address, cfg.num_cpus)
            ray = ctx.__enter__()
            fn = raypool.remote(ray, run_trial, cfg.memory_gb, cfg.max_retries, cfg.spread)
            say(f"Ray: {int(ray.cluster_resources().get('CPU', 0))} CPUs on {len(ray.nodes())} node(s)")
        pending[fn.remote(base_json, params, str(storage / "trials" / key), cfg.timing_runs)] = key
        executed += 1

    base_key = trial_key(base_json, BASELINE, hashes)
    told: list[tuple[Any, str]] = []  # Optuna trials whose result is known, told once the baseline is

    def finish(key: str, value) -> None:
        if isinstance(value, Exception):
            value = {"status": "failed", "error": type(value).__name__,
                     "reason": str(value).strip().splitlines()[0][:400] if str(value).strip() else ""}
        results[key] = value
        for tr in waiting.pop(key, []):
            told.append((tr, key))

    try:
        cached = read_result(storage / "trials" / base_key)
        if cached is not None:
            results[base_key] = {**cached, "cached": True}
        else:
            submit(base_key, BASELINE)
        asked = 0
        limit = None
        while asked < cfg.trials or pending or told:
            if ray is not None and limit is None:
                limit = raypool.parallelism(ray, cfg.memory_gb)
            while asked < cfg.trials and len(pending) < (limit or 2):
                tr = study.ask()
                params = _suggest(tr, cfg.space)
                key = trial_key(base_json, params, hashes)
                asked += 1
                records.append({"number": tr.number, "key": key})
                if key in results:
                    told.append((tr, key))
                    continue
                if key in waiting or key in pending.values():
                    waiting.setdefault(key, []).append(tr)
                    continue
                hit = read_result(storage / "trials" / key)
                if hit is not None:
                    results[key] = {**hit, "cached": True}
                    told.append((tr, key))
                    continue
                waiting[key] = [tr]
                submit(key, params)
                if limit is None and ray is not None:
                    limit = raypool.parallelism(ray, cfg.memory_gb)
            if base_key in results:
                _tell_all(study, told, results, results[base_key])
            if pending:
                ref, value = raypool.wait_one(ray, list(pending))
                if ref is None:
                    raise ConfigError("no trial finished within an hour: is the Ray cluster alive?")
                key = pending.pop(ref)
                finish(key, value)
                r = results[key]
                say(f"trial {key[:8]} {r.get('params', {})}: {r.get('status')}"
                    + (f", p50 {r['latency_p50_ms']:.3f} ms, top-1 {r['top1']}" if r.get("status") == "ok" else
                       f" ({r.get('reason', '')})"))
            elif told and base_key not in results:
                raise ConfigError("the baseline trial did not finish")
            elif not pending and asked >= cfg.trials:
                break
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)

    baseline = results[base_key]
    if baseline.get("status") != "ok":
        raise ConfigError(f"the baseline (unpruned fp32 on onnxruntime-cpu) failed: {baseline.get('reason')}")
    for r in results.values():
        _add_drop(r, baseline)
    trials = []
    for rec in records:
        r = results[rec["key"]]
        trials.append({**rec, **{k: r.get(k) for k in ("params", "status", "reason", "top1", "accuracy_drop",
                                                        "latency_p50_ms", "latency_p90_ms", "size_mb", "node",
                                                        "host", "compress_s", "cached", "attempts")}})
    ok = [t for t in trials if t["status"] == "ok"]
    front = pareto_front(ok, OBJECTIVES)
    meeting = sorted((t for t in ok if cfg.budget.met_by(t)),
                     key=lambda t: (t["latency_p50_ms"], t["accuracy_drop"], t["size_mb"]))
    chosen = meeting[0] if meeting else None
    if chosen is not None and out is not None:
        _copy_bundle(storage / "trials" / chosen["key"] / "bundle", Path(out))
    summary = {"edgefm_version": edgefm.__version__, "measured_on": socket.gethostname(),
               "budget": cfg.budget.model_dump(), "budget_text": cfg.budget.describe(), "sampler": cfg.sampler,
               "trials_asked": len(records), "trials_run": executed, "cache_hits": len(records) + 1 - executed,
               "wall_s": round(time.perf_counter() - t0, 2), "baseline": baseline, "trials": trials,
               "pareto": [t["number"] for t in front], "chosen": chosen,
               "output": str(out) if (chosen is not None and out is not None) else None,
               "nodes": sorted({a["node"] for t in trials for a in (t.get("attempts") or [])})}
    write_plot(storage / "pareto.png", ok, front, cfg.budget, chosen)
    write_report(storage / "search.md", summary, front)
    (storage / "search.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _add_drop(r: dict, baseline: dict) -> None:
    if r.get("status") == "ok":
        if r.get("top1") is not None and baseline.get("top1") is not None:
            r["accuracy_drop"] = round(100.0 * (baseline["top1"] - r["top1"]), 4)
        else:
            r["accuracy_drop"] = 0.0


def _tell_all(study, told: list, results: dict, baseline: dict) -> None:
    from optuna.trial import TrialState

    while told:
        tr, key = told.pop(0)
        r = results[key]
        if r.get("status") == "ok" and baseline.get("status") == "ok":
            _add_drop(r, baseline)
            study.tell(tr, [r[o] for o in OBJECTIVES])
        else:  # refused by the contract or failed: infeasible, the sampler learns nothing from it
            study.tell(tr, state=TrialState.FAIL)


def _check_out(out: Path, force: bool) -> None:
    if out.exists():
        if not (out / "manifest.json").is_file():
            raise ConfigError(f"-o {out}: exists and is not an edgefm bundle; choose another path")
        if not force:
            raise ConfigError(f"-o {out}: a bundle is already there; --force replaces it")


def _copy_bundle(src: Path, out: Path) -> None:
    """Copy the chosen trial's bundle to ``out`` (next to it first, then renamed: never half-written)."""
    tmp = out.with_name(out.name + ".edgefm-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
