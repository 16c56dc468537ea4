"""Jetson power and utilisation from ``tegrastats``, the power mode from ``nvpmodel`` and the clocks from sysfs.

``tegrastats`` prints one line per interval. The documented statistics (Jetson Linux developer guide,
"tegrastats utility") are ``RAM used/totalMB (lfb NxSMB)``, ``SWAP used/totalMB (cached NMB)``,
``CPU [load%@MHz,...|off]``, ``EMC_FREQ load%[@MHz]``, ``GR3D_FREQ load%[@MHz | @[MHz,MHz]]``, named
temperatures ``NAME@degC`` and power rails ``NAME current/average`` in milliwatts, written bare
(``VDD_IN 1679/1679``, TX1/TX2/Nano/Xavier, JetPack 4) or with units (``VDD_IN 5000mW/5000mW``, Orin,
JetPack 5+). JetPack 5+ also starts each line with ``MM-DD-YYYY HH:MM:SS``. The rail that measures the
module's input differs by generation: ``VDD_IN`` (TX2, Xavier NX, Orin Nano/NX), ``POM_5V_IN`` (Nano,
TX1); AGX Xavier and AGX Orin have no input rail, there the rails are summed (and the result says so)."""

from __future__ import annotations

import datetime as _dt
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from edgefm.errors import ConfigError

#: Rails that measure the whole module's input power, in order of preference.
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")

_STAMP = re.compile(r"^(\d{2})-(\d{2})-(\d{4}) (\d{2}):(\d{2}):(\d{2})\s+")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)([kMG])B")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)([kMG])B")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D(?:_FREQ)? (\d+)%(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC(?:_FREQ)? (\d+)%(?:@(\d+))?")
#: Other engines: "NVDEC off", "VIC_FREQ 0%@115", "NVENC 12%@1036" (accelerators that are powered print a load)
_ENGINE = re.compile(r"\b([A-Z][A-Z0-9]*(?:_FREQ)?) (off|(\d+)%@\[?\d+)")
_TEMP = re.compile(r"\b([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
_UNIT = {"k": 1 / 1024, "M": 1.0, "G": 1024.0}


@dataclass
class TegraSample:
    """One tegrastats line. Power in mW; ``t`` in seconds (the line's own clock, or the caller's)."""

    t: Optional[float]
    ram_used_mb: Optional[float] = None
    ram_total_mb: Optional[float] = None
    swap_used_mb: Optional[float] = None
    cpu: list[Optional[tuple[int, Optional[int]]]] = field(default_factory=list)  # (load %, MHz) or None = off
    gpu_load: Optional[int] = None
    gpu_mhz: list[int] = field(default_factory=list)
    emc_load: Optional[int] = None
    temps: dict[str, float] = field(default_factory=dict)
    rails: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (current mW, average mW)
    engines: dict[str, Optional[int]] = field(default_factory=dict)  # NVDEC, VIC, NVDLA0 ... -> load % (None: off)

    @property
    def power_rail(self) -> str:
        """Name of the rail behind ``power_mw`` ('sum of rails' where the module has no input rail)."""
        return next((r for r in INPUT_RAILS if r in self.rails), "sum of rails")

    @property
    def power_mw(self) -> Optional[float]:
        """The module's power now (input rail, else the sum of all rails); None without rails."""
        if not self.rails:
            return None
        rail = self.power_rail
        return float(self.rails[rail][0]) if rail in self.rails else float(sum(c for c, _ in self.rails.values()))


def _timestamp(line: str) -> tuple[Optional[float], str]:
    m = _STAMP.match(line)
    if not m:
        return None, line
    mo, d, y, hh, mm, ss = (int(g) for g in m.groups())
    return _dt.datetime(y, mo, d, hh, mm, ss).timestamp(), line[m.end():]


def parse_line(line: str, t: Optional[float] = None) -> TegraSample:
    """Parse one tegrastats line of any Jetson generation; ``t`` overrides the line's timestamp."""
    stamp, body = _timestamp(line.strip())
    if "RAM " not in body and not _RAIL.search(body):
        raise ConfigError(f"not a tegrastats line: {line.strip()[:80]!r}")
    s = TegraSample(t if t is not None else stamp)
    if m := _RAM.search(body):
        s.ram_used_mb, s.ram_total_mb = (int(m[i]) * _UNIT[m[3]] for i in (1, 2))
    if m := _SWAP.search(body):
        s.swap_used_mb = int(m[1]) * _UNIT[m[3]]
    if m := _CPU.search(body):
        shared = int(m[2]) if m[2] else None  # old form: CPU [a%,b%,off]@MHz
        for core in m[1].split(","):
            c = re.match(r"\s*(\d+)%(?:@(\d+))?", core)
            s.cpu.append((int(c[1]), int(c[2]) if c[2] else shared) if c else None)
    if m := _GR3D.search(body):
        s.gpu_load = int(m[1])
        s.gpu_mhz = [int(x) for x in m[2].split(",")] if m[2] else []
    if m := _EMC.search(body):
        s.emc_load = int(m[1])
    s.engines = {n: None if st == "off" else int(load) for n, st, load in _ENGINE.findall(body)
                 if n not in ("EMC_FREQ", "GR3D_FREQ", "EMC", "GR3D", "CPU")}
    s.temps = {k: float(v) for k, v in _TEMP.findall(body)}
    # rails come after the temperatures; RAM/SWAP/IRAM also look like "NAME a/b" but carry a unit suffix
    s.rails = {n: (int(c), int(a)) for n, c, a in _RAIL.findall(body) if n not in ("RAM", "SWAP", "IRAM")}
    return s


def parse_log(text: str, interval_ms: Optional[int] = None) -> list[TegraSample]:
    """All lines of a tegrastats log. Lines without a clock get ``t = index * interval_ms / 1000``."""
    out = []
    for i, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
        s = parse_line(line)
        if s.t is None and interval_ms:
            s.t = i * interval_ms / 1000.0
        out.append(s)
    return out


@dataclass
class Energy:
    mean_power_mw: float
    energy_mj_per_inference: float
    seconds: float
    samples: int
    rail: str
    idle_mw: Optional[float] = None


def energy_per_inference(samples: Sequence[TegraSample], start: float, end: float, inferences: int,
                         idle_mw: Optional[float] = None) -> Energy:
    """Mean power over [start, end] (time-weighted between samples) and energy per inference in mJ;
    with ``idle_mw`` only the power above idle is charged to the inferences."""
    if inferences < 1 or end <= start:
        raise ConfigError(f"energy per inference needs inferences >= 1 and end > start, got {inferences}, "
                          f"[{start}, {end}]")
    pts = sorted((s.t, s.power_mw) for s in samples if s.t is not None and s.power_mw is not None
                 and start <= s.t <= end)
    if len(pts) < 2:
        raise ConfigError(f"only {len(pts)} tegrastats sample(s) with power fall in the {end - start:.2f} s "
                          f"window; run the benchmark longer or sample faster (tegrastats --interval)")
    area = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:]))
    mean = area / (pts[-1][0] - pts[0][0]) if pts[-1][0] > pts[0][0] else pts[0][1]
    charged = max(mean - (idle_mw or 0.0), 0.0)
    rail = next(s.power_rail for s in samples if s.power_mw is not None)
    return Energy(round(mean, 3), round(charged * (end - start) / inferences, 6), round(end - start, 6),
                  len(pts), rail, idle_mw)


def parse_nvpmodel(text: str) -> dict[str, object]:
    """``nvpmodel -q`` output ('NV Power Mode: MAXN\\n0') -> {'name': 'MAXN', 'id': 0}."""
    m = re.search(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)", text)
    if not m:
        raise ConfigError(f"not nvpmodel -q output: {text.strip()[:80]!r}")
    return {"name": m[1], "id": int(m[2])}


def power_mode() -> Optional[dict[str, object]]:
    """The Jetson's current nvpmodel mode, or None off a Jetson."""
    if not shutil.which("nvpmodel"):
        return None
    r = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, check=False)
    return parse_nvpmodel(r.stdout) if r.returncode == 0 else None


def _read_int(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def clock_state(root: Path = Path("/")) -> dict[str, object]:
    """CPU and GPU clocks from sysfs (no root needed): current/min/max MHz, and ``locked`` when every clock
    sits at its maximum (what ``jetson_clocks`` does; benchmarks are only comparable in that state)."""
    root = Path(root)
    cpus = []
    for d in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"), key=lambda p: int(p.parent.name[3:])):
        cur, lo, hi = (_read_int(d / f"scaling_{k}_freq") for k in ("cur", "min", "max"))
        if cur is not None:
            cpus.append({"cpu": d.parent.name, "mhz": cur // 1000, "min_mhz": (lo or 0) // 1000,
                         "max_mhz": (hi or 0) // 1000})
    gpu = None
    # the integrated GPU's devfreq node: 17000000.ga10b / .gpu (Orin), 17000000.gv11b (Xavier), 57000000.gpu (Nano)
    for d in sorted((root / "sys/class/devfreq").glob("*")):
        if any(k in d.name for k in ("gpu", "gv11b", "ga10b", "gp10b")):
            cur, lo, hi = (_read_int(d / f"{k}_freq") for k in ("cur", "min", "max"))
            if cur is not None:
                gpu = {"device": d.name, "mhz": cur // 1_000_000, "min_mhz": (lo or 0) // 1_000_000,
                       "max_mhz": (hi or 0) // 1_000_000}
                break
    clocks = cpus + ([gpu] if gpu else [])
    locked = bool(clocks) and all(c["mhz"] == c["max_mhz"] and c["min_mhz"] == c["max_mhz"] for c in clocks)
    return {"cpus": cpus, "gpu": gpu, "locked": locked}


class TegrastatsMonitor:
    """Runs ``tegrastats --interval MS`` while a benchmark runs; samples carry this process's
    ``time.monotonic()`` so they line up with the benchmark's own clock::

        with TegrastatsMonitor(100) as mon:
            t0 = time.monotonic(); run(n); t1 = time.monotonic()
        energy = mon.energy(t0, t1, n)
    """

    def __init__(self, interval_ms: int = 100, command: str = "tegrastats"):
        self.interval_ms, self.command = interval_ms, command
        self.samples: list[TegraSample] = []
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "TegrastatsMonitor":
        exe = shutil.which(self.command)
        if exe is None:
            raise ConfigError(f"'{self.command}' was not found: power is measured on a Jetson (JetPack ships it)")
        self._proc = subprocess.Popen([exe, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                try:
                    self.samples.append(parse_line(line, t=time.monotonic()))
                except ConfigError:
                    continue

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def energy(self, start: float, end: float, inferences: int, idle_mw: Optional[float] = None) -> Energy:
        return energy_per_inference(self.samples, start, end, inferences, idle_mw)

    def gpu_load(self, start: float, end: float) -> Optional[float]:
        """Mean GR3D (GPU) load in % over the window."""
        vals = [s.gpu_load for s in self.samples if s.t is not None and start <= s.t <= end
                and s.gpu_load is not None]
        return sum(vals) / len(vals) if vals else None
