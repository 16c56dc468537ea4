"""Engine build and run with TensorRT. These need TensorRT's Python bindings, cuda-python and an NVIDIA GPU
(a Jetson with JetPack, or an x86 machine with `pip install tensorrt cuda-python`); elsewhere they skip."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import edgefm
from edgefm.backends import tensorrt as trt_backend
from edgefm.bundle import finalize, read_manifest
from edgefm.errors import DeviceMismatchError

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.skipif(
    not trt_backend.engine_available(), reason="TensorRT / cuda-python not importable: engines are built on the device")]


@pytest.fixture()
def engine_bundle(cnn_bundle, tmp_path):
    b = tmp_path / "cnn-engine"
    shutil.copytree(cnn_bundle, b)
    trt_backend.compile_engine(b, allow_other_device=True)  # the fixture bundle is made for Orin (sm 8.7)
    return b


def test_engine_builds_records_the_device_and_runs(cnn, engine_bundle):
    from edgefm.backends import tensorrt_engine as te

    m = read_manifest(engine_bundle)
    entry = m.targets["jetson-orin-nano"]
    here = te.device_info()
    assert entry.options["engine"] == "jetson-orin-nano/model.engine" and entry.hardware["engine"] == here
    assert entry.runtime_versions["tensorrt"] == here["tensorrt"]
    assert any(s.name == "engine" for s in m.stages)
    p = edgefm.load(engine_bundle)
    assert p.executes == "tensorrt"
    x, labels = cnn.eval.inputs["x"], cnn.eval.labels
    got = p({"x": x})["logits"]  # 539 samples: split into chunks of the profile's max batch (16)
    fp32 = cnn.reference["logits"]
    assert (got.argmax(1) == labels).mean() >= (fp32.argmax(1) == labels).mean() - 0.01
    np.testing.assert_allclose(p({"x": x[:3]})["logits"], got[:3], rtol=1e-3, atol=1e-3)


def test_engine_from_another_tensorrt_is_refused(engine_bundle):
    m = read_manifest(engine_bundle)
    m.targets["jetson-orin-nano"].hardware["engine"]["tensorrt"] = "8.5.2"
    finalize(engine_bundle, m)
    with pytest.raises(DeviceMismatchError, match="TensorRT 8.5.2 vs this machine's"):
        edgefm.load(engine_bundle)


def test_target_for_another_gpu_is_refused_without_permission(cnn_bundle, tmp_path):
    from edgefm.backends import tensorrt_engine as te

    if te.device_info()["compute_capability"] == "8.7":
        pytest.skip("this GPU is the Orin the bundle was made for")
    b = tmp_path / "other"
    shutil.copytree(cnn_bundle, b)
    with pytest.raises(DeviceMismatchError, match="compute capability 8.7"):
        trt_backend.compile_engine(b)
    assert read_manifest(b).targets["jetson-orin-nano"].options["engine"] is None  # bundle untouched
