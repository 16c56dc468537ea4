"""``edgefm compress-zoo``: compress every model of a zoo file in parallel (Ray tasks), one bundle each in
the output folder and one ``report.md``. A model that fails is reported; the others still get bundles."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from edgefm.errors import ConfigError
from edgefm.search import raypool

PATH_FIELDS = ("source", "calib", "eval", "train_data", "metric")


def read_zoo(path: Path) -> list[dict[str, Any]]:
    """The zoo's models as CompressConfig field dicts (``defaults`` merged in, paths relative to the zoo
    file made absolute, every entry validated before anything runs)."""
    from edgefm.config import build_config

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"zoo {path}: cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"zoo {path}: not valid YAML ({e})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models:
        raise ConfigError(f"zoo {path}: expected 'models:' with a list of {{name, source, <compress fields>}}")
    defaults = data.get("defaults") or {}
    out, names = [], set()
    for i, m in enumerate(models):
        if not isinstance(m, dict) or "name" not in m or "source" not in m:
            raise ConfigError(f"zoo {path}: models[{i}] needs at least 'name' and 'source'")
        name = str(m["name"])
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or name in names:
            raise ConfigError(f"zoo {path}: models[{i}].name {name!r} must be unique and a plain folder name")
        names.add(name)
        fields = {**defaults, **{k: v for k, v in m.items() if k != "name"}}
        if "trust_source" in fields:
            raise ConfigError(f"zoo {path}: trust_source cannot be given in a zoo file")
        for k in PATH_FIELDS:
            if fields.get(k) and k != "metric" and not Path(fields[k]).is_absolute():
                fields[k] = str(path.parent / fields[k])
        try:
            build_config(None, output=Path("/unused"), **fields)
        except ConfigError as e:
            raise ConfigError(f"zoo {path}: model {name!r}: {e}") from None
        out.append({"name": name, **fields})
    return out


def compress_one(fields: dict[str, Any], output: str) -> dict[str, Any]:
    """Compress one zoo model (a Ray task); returns what the report shows."""
    import edgefm
    from edgefm.config import build_config
    from edgefm.errors import EdgefmError

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    name = fields["name"]
    t0 = time.perf_counter()
    row: dict[str, Any] = {"name": name, "host": socket.gethostname(), "node": _node(), "pid": os.getpid(),
                           "start": time.time()}
    try:
        cfg = build_config(None, output=Path(output), force=True, **{k: v for k, v in fields.items() if k != "name"})
        m = edgefm.compress(cfg, progress=lambda msg: None)
        row.update(status="ok", bundle=output, targets={
            t: {"precision": e.precision, "top1": (e.metrics.get("_accuracy") or {}).get("top1"),
                "fp32_top1": (e.metrics.get("_accuracy") or {}).get("fp32_top1"),
                "size_mb": sum((Path(output) / f).stat().st_size for f in e.files) / 1e6}
            for t, e in m.targets.items()}, failed={t: f.reason for t, f in m.failed.items()})
    except EdgefmError as e:
        row.update(status="failed", reason=str(e).splitlines()[0][:300])
    row["seconds"] = round(time.perf_counter() - t0, 2)
    row["end"] = time.time()
    return row


def _node() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001
        return "local"


def compress_zoo(zoo: Path, output: Path, ray_address: Optional[str] = None, num_cpus: Optional[int] = None,
                 force: bool = False, memory_gb: float = 2.0, max_retries: int = 2,
                 progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Compress every model of ``zoo`` into ``output/<name>`` in parallel; writes ``output/report.md`` and
    ``output/report.json`` and returns the latter's content."""
    say = progress or (lambda m: None)
    models = read_zoo(zoo)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for m in models:
        dst = output / m["name"]
        if dst.exists() and not force:
            raise ConfigError(f"-o {output}: {dst} already exists; --force replaces edgefm bundles")
        if dst.exists() and not (dst / "manifest.json").is_file():
            raise ConfigError(f"-o {output}: {dst} exists and is not an edgefm bundle; choose another folder")
    t0 = time.perf_counter()
    rows = []
    with raypool.session(ray_address, num_cpus) as ray:
        task = raypool.remote(ray, compress_one, memory_gb, max_retries, spread=True)
        pending = {task.remote(m, str((output / m["name"]).resolve())): m["name"] for m in models}
        while pending:
            ref, value = raypool.wait_one(ray, list(pending))
            if ref is None:
                raise ConfigError("no model finished within an hour: is the Ray cluster alive?")
            name = pending.pop(ref)
            if isinstance(value, Exception):
                value = {"name": name, "status": "failed", "reason": f"{type(value).__name__}: "
                         f"{str(value).strip().splitlines()[0][:300] if str(value).strip() else ''}"}
            say(f"{name}: {value['status']}" + (f" ({value.get('reason')})" if value["status"] != "ok" else ""))
            rows.append(value)
    order = {m["name"]: i for i, m in enumerate(models)}
    rows.sort(key=lambda r: order[r["name"]])
    rep = {"zoo": str(zoo), "wall_s": round(time.perf_counter() - t0, 2), "models": rows,
           "ok": sum(r["status"] == "ok" for r in rows), "nodes": sorted({r.get("node", "?") for r in rows})}
    (output / "report.json").write_text(json.dumps(rep, indent=1))
    (output / "report.md").write_text(_markdown(rep))
    return rep


def _markdown(rep: dict) -> str:
    lines = ["# edgefm compress-zoo", "", f"{rep['ok']} of {len(rep['models'])} models compressed in "
             f"{rep['wall_s']} s (wall, in parallel on {len(rep['nodes'])} Ray node(s)).", "",
             "| model | status | target | precision | top-1 % (fp32 %) | size MB | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rep["models"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | failed: {r.get('reason', '').replace('|', '/')} | | | | | "
                         f"{r.get('seconds', '')} |")
            continue
        for t, e in r["targets"].items():
            acc = (f"{100 * e['top1']:.2f} ({100 * e['fp32_top1']:.2f})" if e.get("top1") is not None else "n/a")
            lines.append(f"| {r['name']} | ok | {t} | {e['precision']} | {acc} | {e['size_mb']:.4f} | "
                         f"{r['seconds']} |")
        for t, reason in r.get("failed", {}).items():
            lines.append(f"| {r['name']} | target failed: {reason.replace('|', '/')[:160]} | {t} | | | | |")
    return "\n".join(lines) + "\n"
