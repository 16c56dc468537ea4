"""Issue #14: never ship an int8 artifact that measured slower than the same target's fp32 on the machine that
measured it without saying so. ONNX Runtime times the chosen recipe and the fp32 ONNX at batch 1 while it
picks a recipe; OpenVINO times the int8 and f32 IRs in one run. On a tiny MLP the quantize/dequantize steps
often cost more than the int8 arithmetic saves, so the note is plausible here; either way it must appear in
the compress summary, the target's manifest notes and its quantize stage exactly when the recorded int8
figure is above the recorded fp32 one. (LiteRT and TensorRT Q/DQ targets time nothing at compile time, so
they claim nothing.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgefm.bundle import read_manifest
from edgefm.cli import app


def _figures(man, target: str) -> tuple[float, float]:
    """(int8 ms, fp32 ms) as the target recorded them."""
    (q,) = [s for s in man.stages if s.name == "quantize" and s.target == target]
    if man.targets[target].backend == "onnxruntime":
        return q.settings["latency_ms_batch1"], q.settings["fp32_latency_ms_batch1"]
    cmp = q.metrics["_compare"]
    return cmp["int8"]["latency_ms"], cmp["f32"]["latency_ms"]


@pytest.mark.parametrize("repeat", [0, 1])  # the same model twice: the timings move, the rule must hold both times
def test_slower_int8_is_said_exactly_when_it_measured_slower(tmp_path, repeat):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    torch.onnx.export(model, (torch.zeros(2, 16),), str(tmp_path / "mlp.onnx"), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["compress", str(tmp_path / "mlp.onnx"), "-o", str(out), "--calib",
                                 str(tmp_path / "calib.npz"), "--output-kind", "y:regression:rel_error=0.3",
                                 "--target", "onnxruntime-cpu", "--target", "openvino-cpu"])
    assert r.exit_code == 0, r.output
    man = read_manifest(out)
    summary = " ".join(r.output.split())
    for target, entry in man.targets.items():
        int8_ms, f32_ms = _figures(man, target)
        (q,) = [s for s in man.stages if s.name == "quantize" and s.target == target]
        said = [n for n in entry.notes if "slower than fp32" in n]
        slower = int8_ms > f32_ms
        assert bool(said) == slower, (target, int8_ms, f32_ms, entry.notes)
        assert ("_speed_vs_fp32" in entry.metrics) == slower
        if slower:
            (note,) = said
            assert f"{int8_ms:.3g} vs {f32_ms:.3g} ms at batch 1" in note and note in q.notes
            assert f"note {target}: {note}" in summary, summary
            assert entry.metrics["_speed_vs_fp32"]["ratio"] == pytest.approx(int8_ms / f32_ms, abs=1e-3)
        else:
            assert f"note {target}: int8 is" not in summary


def test_the_onnxruntime_note_reads_the_recorded_figures():
    """The rule on the figures ORT records for the chosen recipe (both sides of the comparison, and a tie)."""
    from edgefm.backends.onnxruntime import _note_speed
    from edgefm.bundle import TargetEntry

    for int8_ms, f32_ms, expect in ((0.0177, 0.0164, True), (0.0150, 0.0164, False), (0.0164, 0.0164, False)):
        entry = TargetEntry(backend="onnxruntime", precision="int8", device="cpu", artifact="a.onnx")
        notes: list[str] = []

        class Job:  # what _note_speed reads of a CompileJob: the target's name and the progress callback
            class target:
                name = "onnxruntime-cpu"
            progress = staticmethod(notes.append)

        _note_speed(Job, entry, [], {"latency_ms_batch1": int8_ms, "fp32_latency_ms_batch1": f32_ms})
        assert bool(entry.notes) == expect and bool(notes) == expect
        if expect:
            assert entry.notes[0].startswith(f"int8 is {int8_ms / f32_ms:.2f}x slower than fp32 on this CPU")
