"""tegrastats lines of several Jetson generations (the documented formats), power selection, energy per
inference over a window, and nvpmodel output."""

from __future__ import annotations

import datetime as dt

import pytest

from edgefm.bench import tegrastats as ts
from edgefm.errors import ConfigError

TX2 = ("RAM 2030/7854MB (lfb 1146x4MB) SWAP 0/3927MB (cached 0MB) CPU [2%@345,off,off,1%@345,0%@345,0%@345] "
       "EMC_FREQ 0% GR3D_FREQ 0% PLL@34C MCPU@34C PMIC@100C Tboard@30C GPU@32C BCPU@34C thermal@33C Tdiode@31.25C "
       "VDD_SYS_GPU 152/152 VDD_SYS_SOC 459/459 VDD_4V0_WIFI 0/0 VDD_IN 1679/1679 VDD_SYS_CPU 152/152 "
       "VDD_SYS_DDR 244/244")
NANO = ("RAM 1581/3956MB (lfb 105x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
        "CPU [9%@102,6%@102,0%@102,0%@102] EMC_FREQ 3%@1600 GR3D_FREQ 12%@76 APE 25 PLL@26C CPU@28.5C PMIC@100C "
        "GPU@27C AO@35C thermal@27.75C POM_5V_IN 1824/1824 POM_5V_GPU 0/0 POM_5V_CPU 253/253")
TX1_OLD_CPU = "RAM 1234/3995MB (lfb 477x4MB) CPU [36%,9%,off,off]@1224 EMC 8%@1600 AVP 0%@80 GR3D 0%@76"
XAVIER_NX = ("RAM 2448/7772MB (lfb 1x4MB) SWAP 0/3886MB (cached 0MB) CPU [3%@1190,2%@1190,1%@1190,2%@1190,off,off] "
             "EMC_FREQ 0% GR3D_FREQ 0% AUX@33C CPU@35.5C thermal@34.45C AO@33.5C GPU@33.5C PMIC@100C "
             "VDD_IN 4543/4543 VDD_CPU_GPU_CV 619/619 VDD_SOC 1238/1238")
AGX_XAVIER = ("RAM 1935/15825MB (lfb 3061x4MB) SWAP 0/7912MB (cached 0MB) CPU [1%@1190,0%@1190,0%@1190,0%@1190,"
              "0%@1190,0%@1190,0%@1190,0%@1190] EMC_FREQ 0% GR3D_FREQ 0% AO@38.5C GPU@39C Tdiode@41.25C PMIC@100C "
              "AUX@38C CPU@39.5C thermal@38.95C Tboard@38C GPU 0/0 CPU 155/155 SOC 1085/1085 CV 0/0 VDDRQ 155/155 "
              "SYS5V 1407/1407")
ORIN_NANO = ("11-22-2026 10:15:32 RAM 2236/7620MB (lfb 6x4MB) SWAP 0/3810MB (cached 0MB) "
             "CPU [1%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 45%@[305] NVDEC off "
             "NVJPG off VIC_FREQ 0%@115 APE 174 cpu@45.5C soc2@44.1C soc0@45.2C gpu@44.9C tj@46.5C soc1@44.8C "
             "VDD_IN 5000mW/4800mW VDD_CPU_GPU_CV 1000mW/990mW VDD_SOC 1500mW/1500mW")
AGX_ORIN = ("04-18-2023 09:23:49 RAM 2236/30536MB (lfb 6616x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@729,0%@729,"
            "0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,off,off,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305,305] "
            "VIC_FREQ 115 APE 174 CV0@-256C CPU@45.531C Tboard@34C SOC2@41.625C Tdiode@36.25C SOC0@42.5C CV1@-256C "
            "GPU@-256C tj@45.531C SOC1@41.5C CV2@-256C VDD_GPU_SOC 2786mW/2786mW VDD_CPU_CV 398mW/398mW "
            "VIN_SYS_5V0 2426mW/2426mW VDDQ_VDD2_1V8AO 302mW/302mW")


@pytest.mark.parametrize("line, rail, power, rails, cores, gpu", [
    (TX2, "VDD_IN", 1679, 6, 6, 0),
    (NANO, "POM_5V_IN", 1824, 3, 4, 12),
    (XAVIER_NX, "VDD_IN", 4543, 3, 6, 0),
    (AGX_XAVIER, "sum of rails", 0 + 155 + 1085 + 0 + 155 + 1407, 6, 8, 0),
    (ORIN_NANO, "VDD_IN", 5000, 3, 6, 45),
    (AGX_ORIN, "sum of rails", 2786 + 398 + 2426 + 302, 4, 12, 0),
])
def test_generations(line, rail, power, rails, cores, gpu):
    s = ts.parse_line(line)
    assert s.power_rail == rail and s.power_mw == power
    assert len(s.rails) == rails and "RAM" not in s.rails and "SWAP" not in s.rails
    assert len(s.cpu) == cores and s.gpu_load == gpu
    assert s.ram_used_mb is not None and s.ram_total_mb > s.ram_used_mb


def test_fields_of_one_line():
    s = ts.parse_line(AGX_ORIN)
    assert s.t == dt.datetime(2023, 4, 18, 9, 23, 49).timestamp()
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb) == (2236, 30536, 0)
    assert s.cpu[:2] == [(0, 729), (0, 729)] and s.cpu[-4:] == [None] * 4
    assert s.gpu_mhz == [305, 305] and s.emc_load == 0
    assert s.temps["tj"] == 45.531 and s.temps["CV0"] == -256.0
    assert s.rails["VDD_GPU_SOC"] == (2786, 2786)
    o = ts.parse_line(ORIN_NANO)
    assert o.rails["VDD_IN"] == (5000, 4800) and o.gpu_mhz == [305]
    assert o.engines == {"NVDEC": None, "NVJPG": None, "VIC_FREQ": 0}
    n = ts.parse_line(NANO)
    assert n.temps["thermal"] == 27.75 and n.cpu[0] == (9, 102) and "IRAM" not in n.rails
    old = ts.parse_line(TX1_OLD_CPU)
    assert old.cpu == [(36, 1224), (9, 1224), None, None] and old.power_mw is None
    assert (old.emc_load, old.gpu_load, old.gpu_mhz) == (8, 0, [76])


def test_energy_per_inference_over_a_window():
    # 100 ms samples: idle 3000 mW, then 5000 mW for one second of inference, then idle again
    lines = [f"RAM 1/2MB VDD_IN {3000 if i < 10 or i > 20 else 5000}mW/4000mW" for i in range(30)]
    samples = ts.parse_log("\n".join(lines), interval_ms=100)
    assert [s.t for s in samples[:3]] == [0.0, 0.1, 0.2]
    e = ts.energy_per_inference(samples, 1.0, 2.0, inferences=50)
    assert e.mean_power_mw == pytest.approx(5000) and e.samples == 11 and e.rail == "VDD_IN"
    assert e.energy_mj_per_inference == pytest.approx(5000 * 1.0 / 50)  # mW x s = mJ
    dyn = ts.energy_per_inference(samples, 1.0, 2.0, inferences=50, idle_mw=3000)
    assert dyn.energy_mj_per_inference == pytest.approx(2000 / 50)
    half = ts.energy_per_inference(samples, 0.5, 1.5, inferences=10)  # trapezoids across the 0.9 -> 1.0 step
    assert 3000 < half.mean_power_mw < 5000


def test_bad_input_is_a_clear_error():
    with pytest.raises(ConfigError, match="not a tegrastats line"):
        ts.parse_line("hello world")
    samples = ts.parse_log(ORIN_NANO)
    with pytest.raises(ConfigError, match="1 tegrastats sample"):
        ts.energy_per_inference(samples, samples[0].t - 1, samples[0].t + 1, 10)
    with pytest.raises(ConfigError, match="inferences >= 1"):
        ts.energy_per_inference(samples, 0, 1, 0)


def test_nvpmodel():
    assert ts.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert ts.parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: 15W\n1") == {"name": "15W", "id": 1}
    with pytest.raises(ConfigError):
        ts.parse_nvpmodel("nvpmodel: command not found")


def _sysfs(root, cpu_khz, gpu_hz, name="17000000.ga10b"):
    for i, (cur, lo, hi) in enumerate(cpu_khz):
        d = root / "sys/devices/system/cpu" / f"cpu{i}" / "cpufreq"
        d.mkdir(parents=True)
        for k, v in (("cur", cur), ("min", lo), ("max", hi)):
            (d / f"scaling_{k}_freq").write_text(f"{v}\n")
    g = root / "sys/class/devfreq" / name
    g.mkdir(parents=True)
    for k, v in zip(("cur", "min", "max"), gpu_hz):
        (g / f"{k}_freq").write_text(f"{v}\n")


def test_clock_state_from_sysfs(tmp_path):
    _sysfs(tmp_path / "dvfs", [(729600, 115200, 1510400)] * 2, (306000000, 306000000, 624750000))
    s = ts.clock_state(tmp_path / "dvfs")
    assert [c["mhz"] for c in s["cpus"]] == [729, 729] and s["gpu"]["max_mhz"] == 624 and not s["locked"]
    _sysfs(tmp_path / "locked", [(1510400, 1510400, 1510400)] * 6, (624750000,) * 3, "17000000.gv11b")
    s = ts.clock_state(tmp_path / "locked")
    assert len(s["cpus"]) == 6 and s["gpu"]["device"] == "17000000.gv11b" and s["locked"]
    assert ts.clock_state(tmp_path / "not-a-jetson") == {"cpus": [], "gpu": None, "locked": False}
