"""The digits bundles' .tflite run by the arm64 build of LiteRT under qemu, against the x86 run."""

from __future__ import annotations

import json
import shutil

import pytest

from edgefm.emulate import verify_emulated
from edgefm.errors import BundleError, ConfigError

pytestmark = [pytest.mark.emulation,
              pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None,
                                 reason="needs qemu-user-static (.ci/emulation.sh installs it)")]


@pytest.mark.parametrize("which,cpu", [("cnn", None), ("cnn", "cortex-a76"), ("lstm", None)])
def test_emulated_arm64_gives_the_x86_top1(which, cpu, request):
    out, _ = request.getfixturevalue(f"{which}_bundle")
    report = verify_emulated(out, cpu=cpu)
    print(report.summary())
    assert report.cpu == (cpu or "cortex-a72")  # None: the target profile's cpu_core
    assert report.samples == 539 and report.versions["arm64"]["ai-edge-litert"]
    assert report.accuracy["arm64_top1"] == report.accuracy["x86_top1"]
    assert report.outputs["logits"]["top1_agreement"] == 1.0 and report.ok
    assert report.outputs["logits"]["max_abs"] < 1e-3  # int8 kernels: expected bit-identical


def test_cli_entry_point_json(lstm_bundle, capsys):
    from edgefm.emulate.__main__ import main

    out, _ = lstm_bundle
    assert main([str(out), "--cpu", "neoverse-n1", "--max-samples", "40", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["samples"] == 40 and report["cpu"] == "neoverse-n1"


def test_bad_requests_are_typed(cnn_bundle, tmp_path):
    out, _ = cnn_bundle
    with pytest.raises(ConfigError, match="cortex-a72"):
        verify_emulated(out, cpu="cortex-a57")
    with pytest.raises(ConfigError, match="arm64"):
        verify_emulated(out, arch="riscv64")
    with pytest.raises(BundleError, match="no target 'rpi5'"):
        verify_emulated(out, target="rpi5")
    with pytest.raises(BundleError, match="manifest"):
        verify_emulated(tmp_path)


def test_edgefm_verify_emulate_arm64(pipeline_bundle):
    """The lead's ``edgefm verify --emulate arm64`` path: the backend hook, on the rpi5 target's core."""
    from edgefm.verify import verify_bundle

    (report,) = verify_bundle(pipeline_bundle, ["rpi5"], emulate="arm64")
    emu = report.checks[-1]
    assert emu.name == "emulate arm64" and emu.ok, emu.detail
    assert "cortex-a76" in emu.detail and "top-1 agreement 1.0000" in emu.detail
