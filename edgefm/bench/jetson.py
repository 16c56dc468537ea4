"""NVIDIA Jetson facts for bench results: model, L4T release, power mode and clock state, and the energy
per inference from board power sampled during the timed runs. The parsing lives in
``edgefm.bench.tegrastats`` (every Jetson generation's format); this module turns it into the result
schema. Off a Jetson everything is None and nothing is started."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

from edgefm.bench import tegrastats
from edgefm.bench.schema import Energy, JetsonInfo
from edgefm.errors import ConfigError


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return None


def is_jetson() -> bool:
    model = _read("/proc/device-tree/model") or ""
    return Path("/etc/nv_tegra_release").exists() or "jetson" in model.lower()


def info() -> Optional[JetsonInfo]:
    """Jetson facts, or None off a Jetson."""
    if not is_jetson():
        return None
    try:
        mode = tegrastats.power_mode()
    except ConfigError:
        mode = None
    clocks = tegrastats.clock_state()
    mhz = {c["cpu"]: float(c["mhz"]) for c in clocks["cpus"]}
    if clocks["gpu"]:
        mhz["gpu"] = float(clocks["gpu"]["mhz"])
    rel = _read("/etc/nv_tegra_release")
    return JetsonInfo(model=_read("/proc/device-tree/model"), l4t=rel.splitlines()[0] if rel else None,
                      power_mode=str(mode["name"]) if mode else None, clocks_mhz=mhz,
                      clocks_locked=bool(clocks["locked"]))


class Window:
    """What the timed runs report back to ``power_window``: how many calls ran, at which batch."""

    def __init__(self) -> None:
        self.calls = 0
        self.batch = 1
        self.energy: Optional[Energy] = None
        self.note: Optional[str] = None


@contextlib.contextmanager
def power_window(interval_ms: int = 50) -> Iterator[Window]:
    """Sample board power with tegrastats around the block (where tegrastats exists); afterwards
    ``window.energy`` holds the energy per call over the block, or ``window.note`` says why not."""
    w = Window()
    if shutil.which("tegrastats") is None:
        yield w
        return
    with tegrastats.TegrastatsMonitor(interval_ms) as mon:
        t0 = time.monotonic()
        yield w
        t1 = time.monotonic()
    w.energy, w.note = energy_from(mon.samples, t0, t1, w.calls, w.batch)


def energy_from(samples, t0: float, t1: float, calls: int, batch: int) -> tuple[Optional[Energy], Optional[str]]:
    """Energy per call and per sample from tegrastats samples over [t0, t1] (time-weighted mean power)."""
    try:
        e = tegrastats.energy_per_inference(samples, t0, t1, max(calls, 1))
    except ConfigError as err:
        return None, f"no energy figure: {err}"
    return Energy(source=e.rail, mean_power_w=e.mean_power_mw / 1000, energy_per_inference_mj=e.energy_mj_per_inference,
                  energy_per_sample_mj=e.energy_mj_per_inference / batch, samples=e.samples), None
