"""Host capabilities: the in-process cpuid agrees with NumPy's own CPU dispatch detection and with the kernel's
/proc/cpuinfo; profiles declare what they need and `edgefm targets` says what this CPU lacks; recipes follow."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import pytest

from edgefm import hostcaps
from edgefm.errors import TargetError
from edgefm.hostcaps import HostCaps
from edgefm.targets import get_target, host_note, load_target_file

X86 = platform.machine().lower() in ("x86_64", "amd64")
ZEN3 = HostCaps("x86_64", "AMD EPYC", frozenset({"avx2", "fma"}))  # family 25 model 1: AVX2, FMA, F16C only
ZEN4 = HostCaps("x86_64", "AMD EPYC", frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "vnni",
                                                 "bf16"}))
# NumPy's names for the capabilities both detect (numpy runs cpuid itself, for its dispatch)
NUMPY_NAMES = {"avx2": "AVX2", "fma": "FMA3", "avx512f": "AVX512F", "avx512_vnni": "AVX512VNNI", "bf16": "AVX512BF16"}


@pytest.mark.avx2emu
@pytest.mark.skipif(not X86, reason="x86-64 cpuid")
def test_cpuid_agrees_with_numpy_and_the_kernel():
    from numpy._core._multiarray_umath import __cpu_features__ as np_caps

    host = hostcaps.detect()
    assert host.source == "cpuid+cpuinfo"
    for ours, theirs in NUMPY_NAMES.items():
        assert host.has(ours) == np_caps[theirs], ours
    assert host.has("vnni") == (host.has("avx512_vnni") or host.has("avx_vnni"))
    flags = set(re.search(r"^flags\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    # never more than the kernel enabled (under qemu-user cpuinfo is the host's, a superset of the emulated CPU)
    assert {"avx512_vnni", "avx_vnni", "amx_int8"} & host.caps <= flags
    assert host.isa in ("amx", "avx512vnni", "avxvnni", "avx512", "avx2", "base")


def test_isa_names_the_best_int8_instructions():
    assert ZEN3.isa == "avx2" and ZEN4.isa == "avx512vnni"
    assert HostCaps("x86_64", "Xeon", frozenset({"avx2", "avx512f", "avx512_vnni", "amx_int8"})).isa == "amx"
    assert HostCaps("aarch64", "Cortex-A76", frozenset({"dotprod", "fp16"})).isa == "dotprod"
    assert HostCaps("aarch64", "Cortex-A72", frozenset()).isa == "neon"


def test_profiles_say_what_a_cpu_without_vnni_lacks():
    ov = get_target("openvino-cpu")
    assert ov.requires == ["vnni"]
    assert "lacks vnni" in host_note(ov, ZEN3) and host_note(ov, ZEN4) is None
    assert "amx_int8" in host_note(get_target("openvino-cpu-amx"), ZEN4)
    assert host_note(get_target("onnxruntime-cpu"), ZEN3) is None  # any CPU
    assert "aarch64 target" in host_note(get_target("rpi5"), ZEN4)  # another architecture: not this host's caps


def test_unknown_capability_in_a_profile_is_a_one_line_error(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("backend: openvino\nrequires: [vnni, avx9000]\n")
    with pytest.raises(TargetError) as e:
        load_target_file(bad)
    assert str(bad) in str(e.value) and "requires" in str(e.value) and "\n" not in str(e.value)


def test_ort_weights_get_7_bits_only_without_int8_dot_products():
    from edgefm.quantize.onnxruntime import reduce_range

    assert reduce_range(ZEN3) is True  # VPMADDUBSW's saturating int16 sums
    assert reduce_range(ZEN4) is False
    assert reduce_range(HostCaps("aarch64", "Cortex-A76", frozenset({"dotprod"}))) is False


def test_int8_slower_than_f32_is_said_with_its_cause(monkeypatch):
    from edgefm.backends.openvino import _int8_slower_than_f32

    monkeypatch.setattr(hostcaps, "detect", lambda: ZEN3)
    got = _int8_slower_than_f32({"f32": {"latency_ms": 47.7}, "int8": {"latency_ms": 48.7}})
    assert got["ratio"] == pytest.approx(48.7 / 47.7, abs=1e-3)
    assert got["note"].startswith("int8 is 1.02x slower than fp32 on this CPU (no VNNI)")
    assert _int8_slower_than_f32({"f32": {"latency_ms": 47.7}, "int8": {"latency_ms": 20.0}}) is None
    assert _int8_slower_than_f32({"f32": {"latency_ms": 47.7}}) is None  # not measured: nothing to say


def test_onednn_cap_below_bf16(monkeypatch):
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for cap, ok in (("AVX2", False), ("avx512_core_vnni", False), ("AVX512_CORE_BF16", True),
                    ("AVX512_CORE_AMX", True), ("", True)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert hostcaps.onednn_bf16_allowed() is ok, cap


@pytest.mark.avx2emu
@pytest.mark.skipif(os.environ.get("EDGEFM_AVX2EMU") != "qemu", reason="only in the AVX2 emulation's child process")
def test_this_process_runs_on_an_avx2_only_cpu():
    """Inside tests/integration/test_avx2_emulation.py's qemu child: what the tests beside this one ran on."""
    from numpy._core._multiarray_umath import __cpu_features__ as np_caps

    host = hostcaps.detect()
    assert host.isa == "avx2" and not host.has("vnni") and not host.has("bf16")
    assert np_caps["AVX2"] and not np_caps["AVX512F"] and not np_caps["AVX512VNNI"]


def test_bench_and_targets_say_what_the_host_lacks(monkeypatch):
    from typer.testing import CliRunner

    from edgefm.bench.cli import _host_notes
    from edgefm.cli import app

    monkeypatch.setattr(hostcaps, "detect", lambda: ZEN3)
    notes = _host_notes(["openvino-cpu", "fp32-onnx", "onnxruntime-cpu", "my-own-target"])
    assert list(notes) == ["openvino-cpu"] and "lacks vnni" in notes["openvino-cpu"]
    monkeypatch.setenv("COLUMNS", "300")
    out = CliRunner().invoke(app, ["targets"]).output
    row = next(line for line in out.splitlines() if "openvino-cpu " in line)
    assert "runs; this CPU lacks vnni" in row and "yes" not in row.split("│")[4]
