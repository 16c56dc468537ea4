"""The CPU-sensitive tests (marker ``avx2emu``) rerun on an AVX2-only x86-64 CPU, whatever CPU runs the suite.

- ONNX Runtime, NumPy, torch: the tests run under ``qemu-x86_64-static -cpu max`` (Debian's qemu-user 7.2
  emulates AVX2/FMA but no AVX-512 and no VNNI), so every library picks the kernels it picks on a Zen 3 or a
  Haswell. qemu-user does not follow ``exec`` without binfmt_misc, so the child's ``sys.executable`` is a
  wrapper that starts Python under qemu again: subprocesses (the bench workers) are emulated too.
- OpenVINO: emulating its MiniLM/LSTM compiles would take far too long, so its tests run natively with oneDNN
  capped to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``); the runtime graph is checked to hold AVX2 kernels only.

Each child also checks that it really lacks what it must lack (cpuid, NumPy's dispatch, OpenVINO's kernels).
Skipped where qemu-user is not installed (``apt-get install qemu-user-static``) or the host is not x86-64."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QEMU = shutil.which("qemu-x86_64-static")
X86 = platform.machine().lower() in ("x86_64", "amd64")
needs_qemu = pytest.mark.skipif(not (QEMU and X86), reason="needs qemu-x86_64-static (Debian qemu-user-static) "
                                                           "on an x86-64 host")

#: The CPU-sensitive tests that run under qemu (small models; OpenVINO ones run with the oneDNN cap instead).
EMULATED = ["tests/unit/test_hostcaps.py", "tests/integration/test_compress.py", "tests/integration/test_bench.py"]
CAPPED = ["tests/backends/openvino"]


def _probe(prefix: list[str], env: dict | None = None) -> str:
    code = ("from edgefm.hostcaps import detect; from numpy._core._multiarray_umath import __cpu_features__ as f; "
            "h = detect(); print(h.isa, sorted(h.caps), f['AVX2'], f['AVX512F'], f['AVX512VNNI'])")
    return subprocess.run([*prefix, sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=True, timeout=300).stdout.strip()


@needs_qemu
def test_qemu_cpu_max_is_avx2_without_avx512():
    isa, *rest = _probe([QEMU, "-cpu", "max"]).split(" ", 1)
    assert isa == "avx2", rest  # our cpuid: AVX2, no AVX-512, no VNNI ...
    assert rest[0].endswith("True False False")  # ... and NumPy's own detection agrees


def _run_child(cmd: list[str], env: dict, timeout: int) -> str:
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = (res.stdout + res.stderr)[-4000:]
    assert res.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail and "deselected" in tail, tail
    return tail


def _pytest_args(config, paths: list[str]) -> list[str]:
    return ["-m", "avx2emu", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
            f"--import-mode={config.option.importmode}", *paths]


@needs_qemu
@pytest.mark.slow
def test_cpu_sensitive_tests_pass_on_an_emulated_avx2_cpu(tmp_path, request, digits_cnn_ckpt):
    wrapper = tmp_path / "python-avx2"
    wrapper.write_text(f'#!/bin/sh\nexec {QEMU} -cpu max {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    boot = (f"import sys; sys.executable = {str(wrapper)!r}; import pytest; "
            f"sys.exit(pytest.main({_pytest_args(request.config, EMULATED)!r}))")
    # the digits CNN is trained here, natively: its int8 artifacts are what runs on the emulated CPU
    env = {**os.environ, "EDGEFM_AVX2EMU": "qemu", "OMP_NUM_THREADS": "1",
           "EDGEFM_TEST_DIGITS_CNN": f"{digits_cnn_ckpt[0]}:{digits_cnn_ckpt[1]}"}
    tail = _run_child([QEMU, "-cpu", "max", sys.executable, "-c", boot], env, timeout=1500)
    print(tail)


@pytest.mark.slow
@pytest.mark.skipif(not X86, reason="oneDNN's ISA cap is x86-only")
def test_openvino_tests_pass_with_onednn_capped_to_avx2(request):
    env = {**os.environ, "EDGEFM_AVX2EMU": "onednn", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    tail = _run_child([sys.executable, "-m", "pytest", *_pytest_args(request.config, CAPPED)], env, timeout=1500)
    print(tail)
