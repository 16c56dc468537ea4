"""Machine description (this machine, against /proc/cpuinfo), and Jetson parsing on recorded outputs."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import pytest

from edgefm.bench import jetson, machine


def test_this_machine_is_described_from_proc_cpuinfo():
    info = machine.machine_info()
    assert info.arch == platform.machine() and info.logical_cores == os.cpu_count()
    text = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M).group(1).split())
    assert set(info.cpu_flags) == flags & set(machine.RELEVANT_FLAGS)
    assert info.cpu_model in text
    assert info.runtime_versions["onnxruntime"] and info.runtime_versions["numpy"]
    assert re.fullmatch(r"[a-z0-9_\-]+", info.id) and info.id.endswith(f"-{os.cpu_count()}c")
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
    monkeypatch.setenv("EDGEFM_MACHINE_ID", "Lab NUC #3")
    assert machine.machine_id("x86_64", "whatever", 4) == "lab-nuc-3"


@pytest.mark.parametrize("line, want", [
    # Orin (JetPack 5/6)
    ("11-22-2026 10:00:00 RAM 2100/7620MB (lfb 2x4MB) CPU [3%@729,1%@729] EMC_FREQ 0% GR3D_FREQ 0% "
     "cpu@47.5C VDD_IN 4811mW/4811mW VDD_CPU_GPU_CV 480mW/480mW VDD_SOC 1441mW/1441mW", ("VDD_IN", 4811.0)),
    # Xavier NX / Nano (JetPack 4)
    ("RAM 1500/3964MB (lfb 1x4MB) CPU [5%@102,off,off,off] EMC_FREQ 0% GR3D_FREQ 0% PLL@29C "
     "POM_5V_IN 2154/2154 POM_5V_GPU 0/0 POM_5V_CPU 166/166", ("POM_5V_IN", 2154.0)),
    ("RAM 1500/3964MB CPU [5%@102] GR3D_FREQ 0%", None),
])
def test_tegrastats_power_lines(line, want):
    assert jetson.parse_power_mw(line) == want


def test_nvpmodel_and_energy_arithmetic():
    assert jetson.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN"
    assert jetson.parse_nvpmodel("NV Power Mode: 15W\n2\n") == "15W"
    assert jetson.parse_nvpmodel("garbage") is None
    s = jetson.PowerSampler()
    s.readings, s.rail = [5000.0, 7000.0], "VDD_IN"
    e = s.energy(mean_latency_ms=10.0, batch=4)
    assert e.mean_power_w == 6.0 and e.energy_per_inference_mj == pytest.approx(60.0)
    assert e.energy_per_sample_mj == pytest.approx(15.0) and e.samples == 2
    assert jetson.PowerSampler().energy(1.0, 1) is None


def test_off_a_jetson_nothing_is_claimed():
    if jetson.is_jetson():
        pytest.skip("this is a Jetson")
    assert jetson.info() is None and machine.machine_info().jetson is None
    with jetson.PowerSampler() as s:  # no tegrastats here: a no-op, not an error
        pass
    assert s.readings == []


def test_a_busy_machine_is_called_out():
    info = machine.machine_info().model_copy(update={"load_avg_1m": 8.0, "logical_cores": 2})
    assert "busy (load average 8.0 on 2 cores)" in machine.busy_warning(info)
    assert machine.busy_warning(info.model_copy(update={"load_avg_1m": 0.4})) is None
    assert machine.busy_warning(info.model_copy(update={"load_avg_1m": None})) is None
    assert machine.load_average() == pytest.approx(os.getloadavg()[0], abs=5)
