"""One trial: a real ``edgefm.compress`` with the accuracy contract enforced, then batch-1 latency and top-1
on the local machine. Runs inside a Ray task (or in-process); everything it writes lies under its own
folder of the storage path, and ``result.json`` is written last, so its presence marks a finished trial."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import edgefm

RESULT = "result.json"


def sha256_path(path: Path) -> str:
    """Content hash of a file, or of a folder (relative names and contents, in order)."""
    h = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if f != path else f.name).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def trial_key(base: dict[str, Any], params: dict[str, Any], input_hashes: dict[str, str]) -> str:
    """Content key of a trial: the inputs' sha256, the base config (bar its output), the trial's params and
    the edgefm version. Same key, same bundle: the trial is not run again."""
    cfg = {k: v for k, v in base.items() if k not in ("output", "force", "verbose", "dry_run", "cache_dir")}
    blob = json.dumps({"inputs": input_hashes, "config": cfg, "params": params, "edgefm": edgefm.__version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def read_result(folder: Path) -> dict[str, Any] | None:
    p = Path(folder) / RESULT
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):  # a torn write cannot happen (rename), but a foreign file could
        return None


def _config(base: dict[str, Any], params: dict[str, Any], out: Path):
    from edgefm.config import CompressConfig

    data = dict(base)
    data.update(output=out, force=True, targets=[params["target"]], quantize=params["quantize"],
                keep_fp32=list(params.get("keep_fp32") or []), prune=None, distill=None)
    if params.get("macs_target"):
        data["prune"] = {"macs_target": params["macs_target"]}
    elif params.get("prune"):
        data["prune"] = {"ratio": params["prune"]}
    if data["prune"] and params.get("distill_epochs"):
        data["distill"] = {"epochs": int(params["distill_epochs"])}
    return CompressConfig(**data)


def run_trial(base: dict[str, Any], params: dict[str, Any], folder: str, timing_runs: int = 300) -> dict[str, Any]:
    """Compress with ``params`` into ``folder/bundle`` and measure it; returns (and writes) the result.

    A compress the contract refuses (an ``EdgefmError``) is a finished, infeasible trial, not a failure."""
    import numpy as np

    from edgefm.errors import EdgefmError

    folder_p = Path(folder)
    folder_p.mkdir(parents=True, exist_ok=True)
    node = _node_id()
    # one line per attempt: a trial retried after its worker or node died shows two
    with open(folder_p / "attempts.log", "a") as fh:
        fh.write(json.dumps({"node": node, "host": socket.gethostname(), "pid": os.getpid(),
                             "start": time.time()}) + "\n")
    try:
        import torch

        torch.set_num_threads(1)  # a trial holds one CPU of the Ray node
    except ImportError:
        pass
    result: dict[str, Any] = {"params": params, "node": node, "host": socket.gethostname(),
                              "edgefm_version": edgefm.__version__}
    t0 = time.perf_counter()
    bundle = folder_p / "bundle"
    try:
        edgefm.compress(_config(base, params, bundle), progress=lambda msg: None)
    except EdgefmError as e:
        result.update(status="refused", error=type(e).__name__, reason=str(e).splitlines()[0][:400])
    result["compress_s"] = round(time.perf_counter() - t0, 3)
    if "status" not in result:
        result.update(status="ok", **_measure(bundle, params["target"], timing_runs, np))
    result["attempts"] = [json.loads(line) for line in (folder_p / "attempts.log").read_text().splitlines()]
    tmp = folder_p / (RESULT + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, folder_p / RESULT)
    return result


def _measure(bundle: Path, target: str, runs: int, np) -> dict[str, Any]:
    """Top-1 on the bundle's eval set and batch-1 latency of ``target`` on this machine."""
    from edgefm.bench.latency import TimingPlan, summarize, time_calls
    from edgefm.bundle import read_manifest

    manifest = read_manifest(bundle)
    entry = manifest.targets[target]
    pred = edgefm.load(bundle, target, threads=1)
    data = np.load(bundle / "eval.npz")
    names = [k[3:] for k in data.files if k.startswith("in/")]
    n = len(data[f"in/{names[0]}"])
    out_name = pred.output_names[0]
    logits = [pred({k: data[f"in/{k}"][i:i + 1] for k in names})[out_name] for i in range(n)]
    logits = np.concatenate(logits)
    top1 = float((logits.argmax(-1) == data["labels"]).mean()) if "labels" in data.files else None
    one = {k: data[f"in/{k}"][:1] for k in names}
    timed = time_calls(lambda: pred(one), TimingPlan(warmup=20, runs=runs, seconds=None))
    stats = summarize(timed.samples_ms, batch=1, warmup=20)
    size = sum((bundle / f).stat().st_size for f in entry.files)
    return {"top1": top1, "latency_p50_ms": stats.p50, "latency_p90_ms": stats.p90,
            "size_mb": size / 1e6, "precision": entry.precision, "eval_samples": n,
            "measured_on": socket.gethostname(), "loadavg": _loadavg()}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray there is no node
        pass
    return "local"
