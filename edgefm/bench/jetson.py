"""NVIDIA Jetson specifics: model, L4T release, power mode (nvpmodel), current clocks, and board power
sampled from ``tegrastats`` during the timed runs (energy per inference). Everything degrades to None
off a Jetson; nothing here needs root."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Optional

from edgefm.bench.schema import Energy, JetsonInfo

#: Board input rails, newest naming first (Orin: VDD_IN; Xavier/Nano: POM_5V_IN; some carriers: VIN_SYS_5V0).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VIN")
_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?")


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return None


def is_jetson() -> bool:
    model = _read("/proc/device-tree/model") or ""
    return Path("/etc/nv_tegra_release").exists() or "jetson" in model.lower()


def parse_nvpmodel(text: str) -> Optional[str]:
    """The mode name from ``nvpmodel -q`` output ("NV Power Mode: MAXN" …)."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    return m.group(1) if m else None


def clocks_mhz() -> dict[str, float]:
    """Current CPU (per core), GPU and EMC clocks from sysfs where readable."""
    out: dict[str, float] = {}
    for p in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        v = _read(str(p))
        if v and v.isdigit():
            out[p.parts[-3]] = int(v) / 1000  # kHz
    for p in Path("/sys/class/devfreq").glob("*"):
        v = _read(str(p / "cur_freq"))
        name = p.name.lower()
        if v and v.isdigit() and ("gpu" in name or "gv11b" in name or "ga10b" in name or "gp10b" in name):
            out["gpu"] = int(v) / 1e6  # Hz
    emc = _read("/sys/kernel/debug/clk/emc/clk_rate")
    if emc and emc.isdigit():
        out["emc"] = int(emc) / 1e6
    return out


def info() -> Optional[JetsonInfo]:
    """Jetson facts, or None off a Jetson."""
    if not is_jetson():
        return None
    mode = None
    if shutil.which("nvpmodel"):
        try:
            mode = parse_nvpmodel(subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True,
                                                 timeout=10).stdout)
        except (OSError, subprocess.SubprocessError):
            mode = None
    rel = _read("/etc/nv_tegra_release")
    return JetsonInfo(model=_read("/proc/device-tree/model"), l4t=rel.splitlines()[0] if rel else None,
                      power_mode=mode, clocks_mhz=clocks_mhz())


def parse_power_mw(line: str) -> Optional[tuple[str, float]]:
    """(rail, instantaneous mW) of the board input rail in one tegrastats line, or None."""
    rails = {name: float(now) for name, now, _avg in _RAIL_RE.findall(line)}
    for rail in INPUT_RAILS:
        if rail in rails:
            return rail, rails[rail]
    return None


class PowerSampler:
    """Context manager: runs ``tegrastats --interval MS`` and collects board input power meanwhile.
    ``available`` is False (and it does nothing) where tegrastats is not installed."""

    def __init__(self, interval_ms: int = 50):
        self.interval_ms = interval_ms
        self.available = shutil.which("tegrastats") is not None
        self.readings: list[float] = []
        self.rail: Optional[str] = None
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "PowerSampler":
        if self.available:
            try:
                self._proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self.available = False
                return self
            self._thread = threading.Thread(target=self._collect, daemon=True)
            self._thread.start()
        return self

    def _collect(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            got = parse_power_mw(line)
            if got:
                self.rail, mw = got
                self.readings.append(mw)

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            if self._thread is not None:
                self._thread.join(timeout=5)

    def energy(self, mean_latency_ms: float, batch: int) -> Optional[Energy]:
        """Energy per inference from the mean power while timing; None without readings."""
        if not self.readings:
            return None
        watts = sum(self.readings) / len(self.readings) / 1000
        per_call = watts * mean_latency_ms  # W x ms = mJ
        return Energy(source=self.rail or "?", mean_power_w=watts, energy_per_inference_mj=per_call,
                      energy_per_sample_mj=per_call / batch, samples=len(self.readings))
