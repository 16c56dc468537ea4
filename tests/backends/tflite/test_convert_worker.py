"""The converter worker: a second request in the same folder never returns the first one's result, and the
worker is stopped before a caller's folder is removed (the fused-LSTM -> unrolled fallback runs both)."""

from __future__ import annotations

import numpy as np
import pytest

from edgefm.backends import tflite_convert
from edgefm.errors import EdgefmError


@pytest.fixture(scope="module")
def python():
    return tflite_convert.converter_python()


def test_second_request_in_the_same_folder_gets_its_own_result(tmp_path, python):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    example = {"x": np.zeros((1, 4), np.float32)}
    np.savez(tmp_path / "example.npz", **example)
    req = {"program": str(tmp_path / "missing.pt2"), "example": str(tmp_path / "example.npz"),
           "fp32_out": str(tmp_path / "fp32.tflite"), "out": str(tmp_path / "quant.tflite")}
    with pytest.raises(EdgefmError):  # the first attempt fails in the worker and leaves result.json behind
        tflite_convert.convert(python, req, tmp_path)
    assert (tmp_path / "result.json").exists()
    tflite_convert.export_program(model, ["x"], ["y"], example, tmp_path / "model.pt2")
    result = tflite_convert.convert(python, {**req, "program": str(tmp_path / "model.pt2")}, tmp_path)
    assert result["ok"] and (tmp_path / "fp32.tflite").stat().st_size > 0


def test_interrupted_wait_stops_the_worker(tmp_path, python):
    w = tflite_convert._Worker(python)
    (tmp_path / "request.json").write_text("{}")
    with pytest.raises(EdgefmError, match="longer than"):
        w.ask(tmp_path / "request.json", tmp_path / "never.json", timeout=0.01)
    assert not w.alive()
