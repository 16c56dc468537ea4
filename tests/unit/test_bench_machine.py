"""Machine description (this machine, against /proc/cpuinfo), and Jetson parsing on recorded outputs."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import pytest

from edgefm.bench import jetson, machine
from edgefm.hostcaps import detect


def test_this_machine_is_described_from_proc_cpuinfo():
    info = machine.machine_info()
    assert info.arch == platform.machine() and info.logical_cores == os.cpu_count()
    text = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M).group(1).split())
    assert set(info.cpu_flags) == flags & set(machine.RELEVANT_FLAGS)
    assert info.cpu_model in text
    assert info.runtime_versions["onnxruntime"] and info.runtime_versions["numpy"]
    assert re.fullmatch(r"[a-z0-9_\-]+", info.id) and info.id.endswith(f"-{detect().isa}-{os.cpu_count()}c")
    assert info.memory_gb > 0.5


def test_cpuinfo_of_an_arm_board(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
                 "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n\n"
                 "Model\t: Raspberry Pi 5 Model B Rev 1.0\n")
    model, flags = machine.cpuinfo(p)
    assert model == "Raspberry Pi 5 Model B Rev 1.0" and {"asimd", "asimddp", "fphp"} <= flags
    assert machine.cpuinfo(tmp_path / "none") == (None, set())


def test_machine_id_is_a_short_slug(monkeypatch):
    monkeypatch.delenv("EDGEFM_MACHINE_ID", raising=False)
    assert machine.machine_id("x86_64", "Intel(R) Xeon(R) Platinum 8480C CPU @ 2.00GHz", 2) == \
        "x86_64-intel-xeon-platinum-8480c-2c"
    assert machine.machine_id("aarch64", "cpu", 6, "NVIDIA Jetson Orin Nano Developer Kit") == \
        "aarch64-nvidia-jetson-orin-nano-developer-kit-6c"
    # the int8 ISA separates CPUs that share a name (an AVX2-only Zen 3 and an AVX-512 VNNI Zen 4 "AMD EPYC")
    assert machine.machine_id("x86_64", "AMD EPYC", 2, isa="avx2") == "x86_64-amd-epyc-avx2-2c"
    assert machine.machine_id("x86_64", "AMD EPYC", 2, isa="avx512vnni") == "x86_64-amd-epyc-avx512vnni-2c"
    monkeypatch.setenv("EDGEFM_MACHINE_ID", "Lab NUC #3")
    assert machine.machine_id("x86_64", "whatever", 4) == "lab-nuc-3"


def test_energy_from_tegrastats_samples():
    from edgefm.bench.tegrastats import parse_line

    line = "RAM 2236/7620MB CPU [1%@729] VDD_IN {}mW/4800mW VDD_SOC 1500mW/1500mW"
    samples = [parse_line(line.format(p), t=t) for t, p in ((0.0, 5000), (1.0, 7000), (2.0, 7000))]
    e, note = jetson.energy_from(samples, 0.0, 2.0, calls=100, batch=4)
    assert note is None and e.source == "VDD_IN" and e.samples == 3
    assert e.mean_power_w == pytest.approx(6.5)  # time-weighted: (6 W for 1 s + 7 W for 1 s) / 2 s
    assert e.energy_per_inference_mj == pytest.approx(6.5 * 2.0 / 100 * 1000)
    assert e.energy_per_sample_mj == pytest.approx(e.energy_per_inference_mj / 4)
    e, note = jetson.energy_from(samples[:1], 0.0, 2.0, calls=100, batch=1)
    assert e is None and "sample" in note


def test_off_a_jetson_nothing_is_claimed():
    if jetson.is_jetson():
        pytest.skip("this is a Jetson")
    assert jetson.info() is None and machine.machine_info().jetson is None
    with jetson.power_window() as w:  # no tegrastats here: a no-op, not an error
        w.calls = 10
    assert w.energy is None and w.note is None


def test_a_busy_machine_is_called_out():
    info = machine.machine_info().model_copy(update={"load_avg_1m": 8.0, "logical_cores": 2})
    assert "busy (load average 8.0 on 2 cores)" in machine.busy_warning(info)
    assert machine.busy_warning(info.model_copy(update={"load_avg_1m": 0.4})) is None
    assert machine.busy_warning(info.model_copy(update={"load_avg_1m": None})) is None
    assert machine.load_average() == pytest.approx(os.getloadavg()[0], abs=5)


def test_power_window_runs_tegrastats_around_the_timed_block(tmp_path, monkeypatch):
    """The monitor path as on a Jetson: a stand-in ``tegrastats`` on PATH (this machine has none) prints
    Orin-format lines at the requested interval; the window turns them into energy per call."""
    import time

    fake = tmp_path / "tegrastats"
    fake.write_text("#!/bin/sh\n"
                    "ms=$2\n"
                    "while true; do\n"
                    "  echo \"RAM 2236/7620MB CPU [12%@1510] GR3D_FREQ 40% VDD_IN 6000mW/6000mW VDD_SOC 1500mW/1500mW\"\n"
                    "  sleep $(awk \"BEGIN{print $ms/1000}\")\n"
                    "done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with jetson.power_window(interval_ms=50) as w:
        time.sleep(0.6)
        w.calls, w.batch = 30, 2
    assert w.note is None and w.energy is not None, w.note
    assert w.energy.source == "VDD_IN" and w.energy.samples >= 5
    assert w.energy.mean_power_w == pytest.approx(6.0)
    # 6 W over ~0.6 s for 30 calls: ~120 mJ per call, ~60 mJ per sample
    assert 100 < w.energy.energy_per_inference_mj < 160
    assert w.energy.energy_per_sample_mj == pytest.approx(w.energy.energy_per_inference_mj / 2)
