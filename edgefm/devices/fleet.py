"""What ``edgefm devices``, ``edgefm bench|verify|compile --device/--fleet`` do, as plain functions
(edgefm/cli.py only parses flags). Several devices run in parallel; one that fails is reported in its own
row and the exit status says so, the others' results are kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from edgefm.devices.inventory import Device, Inventory
from edgefm.devices.remote import Outcome, Remote, on_devices
from edgefm.errors import ConfigError

Echo = Callable[[str], None]


def probe_all(inv: Inventory, devices: Sequence[Device], progress: Optional[Echo] = None) -> list[Outcome]:
    """Probe each device (in parallel); an Outcome per device with the probe JSON or the reason it failed."""
    import edgefm

    outs = on_devices(devices, inv, lambda r: r.probe(), progress)
    for o, d in zip(outs, devices):
        if o.ok:
            o.extra["warnings"] = probe_warnings(d, o.value, edgefm.__version__)
    return outs


def probe_warnings(device: Device, probe: dict[str, Any], host_version: str) -> list[str]:
    """What differs from what the inventory and the host expect."""
    warn = []
    if probe.get("edgefm") != host_version:
        warn.append(f"edgefm {probe.get('edgefm')} on the device, {host_version} here: run edgefm devices setup "
                    f"{device.name} to match")
    if device.power_mode and probe.get("power_mode") != device.power_mode:
        warn.append(f"power mode is {probe.get('power_mode') or 'unknown'}, the inventory requires "
                    f"{device.power_mode} (sudo nvpmodel -m …)")
    return warn


def summary_row(device: Device, o: Outcome) -> dict[str, str]:
    """One line of the ``edgefm devices`` table."""
    if not o.ok:
        return {"device": device.name, "host": device.host, "target": device.target or "", "status": "FAILED",
                "detail": o.error or ""}
    p = o.value
    m = p.get("machine", {})
    rt = m.get("runtime_versions", {})
    runtimes = ", ".join(f"{k} {v}" for k, v in rt.items() if k not in ("edgefm", "numpy", "onnx"))
    parts = [f"edgefm {p.get('edgefm')}, python {p.get('python')}", f"{m.get('arch')} {m.get('cpu_model')} "
             f"({m.get('logical_cores')} cores; {' '.join(m.get('cpu_flags', [])) or '-'})", runtimes or "no runtime"]
    if p.get("gpu"):
        parts.append(f"GPU {p['gpu']}")
    if p.get("jetpack") or p.get("l4t"):
        parts.append(f"JetPack {p.get('jetpack')} (L4T {p.get('l4t')})")
    if p.get("tensorrt"):
        parts.append(f"TensorRT {p['tensorrt']}")
    if p.get("power_mode"):
        parts.append(f"nvpmodel {p['power_mode']}")
    parts.append(f"{p.get('disk_free_gb')} GB disk free, {p.get('memory_available_gb')} GB memory available")
    parts += [f"warning: {w}" for w in o.extra.get("warnings", [])]
    return {"device": device.name, "host": device.host, "target": device.target or "", "status": "ok",
            "detail": "; ".join(parts)}


def check_power_mode(remote: Remote) -> None:
    """Refuse to bench a Jetson whose nvpmodel mode is not the inventory's (results would not compare)."""
    d = remote.device
    if not d.power_mode:
        return
    mode = remote.probe().get("power_mode")
    if mode != d.power_mode:
        raise ConfigError(f"device {d.name}: power mode is {mode or 'unknown'}, the inventory requires "
                          f"{d.power_mode}; set it on the board (sudo nvpmodel -m …) or change devices.yaml")


def bench(bundle: Path, inv: Inventory, devices: Sequence[Device], args: Sequence[str],
          json_out: Optional[Path] = None, md_out: Optional[Path] = None, plots: Optional[Path] = None,
          echo: Echo = print, progress: Optional[Echo] = None) -> list[Outcome]:
    """Bench ``bundle`` on every device at once and print one table with a device column; failed devices get
    a row with their error. ``json_out``: one result JSON per device (``NAME.json`` in that folder, or the
    file itself for one device) which ``edgefm report`` merges."""
    from edgefm.bench import report

    def run(remote: Remote):
        check_power_mode(remote)
        if progress:
            progress(f"{remote.device.name}: pushing {bundle}")
        result, pushed = remote.bench(bundle, args)
        if progress:
            progress(f"{remote.device.name}: sent {pushed.sent_files} of {pushed.total_files} files "
                     f"({pushed.sent_bytes / 1e6:.2f} MB)")
        return result

    outs = on_devices(devices, inv, run, progress)
    results = [o.value for o in outs if o.ok]
    text = report.markdown(report.rows(results)) if results else ""
    failed = [f"| {o.device} | FAILED | {o.error} |" for o in outs if not o.ok]
    if failed:
        text += "\n| device | status | reason |\n|---|---|---|\n" + "\n".join(failed) + "\n"
    echo(text)
    if json_out:
        json_out = Path(json_out)
        if len(devices) == 1 and json_out.suffix == ".json":
            targets = {devices[0].name: json_out}
        else:
            json_out.mkdir(parents=True, exist_ok=True)
            targets = {d.name: json_out / f"{d.name}.json" for d in devices}
        for o in outs:
            if o.ok:
                targets[o.device].parent.mkdir(parents=True, exist_ok=True)
                targets[o.device].write_text(o.value.to_json())
    if md_out:
        Path(md_out).parent.mkdir(parents=True, exist_ok=True)
        Path(md_out).write_text(text)
    if plots and results:
        table = report.rows(results)
        report.plot_pareto(table, Path(plots) / "pareto.png")
        report.plot_latency(results, Path(plots) / "latency.png")
    return outs


def verify(bundle: Path, inv: Inventory, devices: Sequence[Device], args: Sequence[str],
           progress: Optional[Echo] = None) -> list[Outcome]:
    """``edgefm verify`` on every device at once: Outcome.value is the list of target reports."""
    return on_devices(devices, inv, lambda r: r.verify(bundle, args)[0], progress)


def compile_on(bundle: Path, inv: Inventory, device: Device, out: Optional[Path], args: Sequence[str]) -> Path:
    """Build on ``device`` and write the result as a new bundle revision (default ``BUNDLE@DEVICE``)."""
    out = Path(out) if out else Path(bundle).with_name(f"{Path(bundle).name}@{device.name}")
    if out.exists():
        raise ConfigError(f"{out} exists already: a bundle revision is never overwritten; pass another -o")
    path, _ = Remote(device, inv).compile(bundle, out, args)
    return path


def failed_count(outs: Sequence[Outcome]) -> int:
    return sum(not o.ok for o in outs)

