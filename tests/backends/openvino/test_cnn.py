"""Digits CNN through the OpenVINO backend: int8 accuracy, what the manifest records, and the Predictor
(any batch size, threads, device fallback)."""

import concurrent.futures as cf
import warnings

import numpy as np
import pytest

import edgefm
from edgefm.errors import BackendUnavailableError, ConfigError

from .conftest import build_bundle, make_job, stage, target, top1


@pytest.fixture(scope="module")
def int8_bundle(digits_cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "cnn"
    manifest, result = build_bundle(digits_cnn, target("openvino-cpu"), out)
    return out, manifest, result


def test_int8_top1_within_half_a_point(int8_bundle, digits_cnn):
    out, manifest, result = int8_bundle
    pred = edgefm.load(out)
    got = pred({"x": digits_cnn.eval.inputs["x"]})["logits"]
    labels = digits_cnn.eval.labels
    fp32 = top1(digits_cnn.reference["logits"], labels)
    assert fp32 > 0.95
    assert top1(got, labels) >= fp32 - 0.005
    # the manifest's figures are the loaded model's figures
    assert manifest.targets["openvino-cpu"].metrics["_accuracy"]["top1"] == pytest.approx(top1(got, labels))


def test_manifest_records_precisions_and_comparison(int8_bundle):
    out, manifest, result = int8_bundle
    entry = manifest.targets["openvino-cpu"]
    assert entry.backend == "openvino" and entry.precision == "int8"
    assert entry.artifact == "openvino-cpu/model.xml" and "openvino-cpu/model.bin" in entry.files
    assert (out / entry.artifact).is_file()
    compile_ = stage(result, "compile")
    assert compile_.settings["ir_weights"] == "fp32"
    # the execution precision is read back, not assumed
    pred = edgefm.load(out)
    assert entry.hardware["execution"]["inference_precision"] == pred.execution["inference_precision"]
    q = stage(result, "quantize")
    assert q.metrics["_int8_layers"]["by_type"]["Convolution"] == 3
    cmp = q.metrics["_compare"]
    assert {"f32", "bf16", "int8"} <= set(cmp)
    assert cmp["f32"]["cosine"] > 0.99999 and cmp["f32"]["latency_ms"] > 0
    assert cmp["int8"]["top1"] == pytest.approx(entry.metrics["_accuracy"]["top1"])
    assert [s.name for s in result.stages] == ["convert", "quantize", "compile"]
    assert stage(result, "convert").metrics["logits"]["max_abs"] < 1e-4


def test_any_batch_size_and_threads(int8_bundle, digits_cnn):
    out, _, _ = int8_bundle
    pred = edgefm.load(out)
    x = digits_cnn.eval.inputs["x"]
    whole = pred({"x": x[:40]})["logits"]
    for n in (1, 3, 17):
        np.testing.assert_allclose(pred({"x": x[:n]})["logits"], whole[:n], rtol=1e-4, atol=1e-4)
    # 8 threads, 64 calls of different sizes: each result equals the sequential one
    jobs = [(i % 40, 1 + i % 7) for i in range(64)]
    with cf.ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda j: pred({"x": x[j[0]:j[0] + j[1]]})["logits"], jobs))
    for (s, n), r in zip(jobs, results):
        np.testing.assert_allclose(r, whole[s:s + n] if s + n <= 40 else pred({"x": x[s:s + n]})["logits"],
                                   rtol=1e-4, atol=1e-4)


def test_missing_device_falls_back_or_fails_when_strict(int8_bundle, digits_cnn):
    out, _, _ = int8_bundle
    with pytest.warns(RuntimeWarning, match="'NPU' is not available.*falling back to CPU"):
        pred = edgefm.load(out, device="npu")
    assert pred.device == "CPU"
    assert pred({"x": digits_cnn.eval.inputs["x"][:2]})["logits"].shape == (2, 10)
    with pytest.raises(BackendUnavailableError, match="'NPU' is not available"):
        edgefm.load(out, device="npu", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert edgefm.load(out, device="CPU").device == "CPU"


def test_fp32_is_f32_and_fp16_writes_half_weights(digits_cnn, tmp_path):
    _, r32 = build_bundle(digits_cnn, target("openvino-cpu"), tmp_path / "fp32", precision="fp32")
    c32 = stage(r32, "compile")
    assert c32.settings["inference_precision"] == "f32"
    assert c32.metrics["_execution"]["inference_precision"] == "f32"
    assert c32.metrics["logits"]["max_abs"] < 1e-4
    _, r16 = build_bundle(digits_cnn, target("openvino-cpu"), tmp_path / "fp16", precision="fp16")
    c16 = stage(r16, "compile")
    assert c16.settings["ir_weights"] == "fp16"
    size32 = (tmp_path / "fp32/openvino-cpu/model.bin").stat().st_size
    size16 = (tmp_path / "fp16/openvino-cpu/model.bin").stat().st_size
    assert size16 < 0.6 * size32
    # what ran is recorded; where it differs from what was asked, a note says so
    ran = c16.metrics["_execution"]["inference_precision"]
    assert ran in ("f16", "bf16", "f32")
    if ran != "f16":
        assert any("asked f16" in n for n in c16.notes)


def test_static_shapes_compile_per_batch(digits_cnn, tmp_path):
    """dynamic_shapes: false (the NPU recipe) reshapes per call shape; checked here on CPU."""
    tgt = target("openvino-cpu", dynamic_shapes=False, compare_precisions=False)
    build_bundle(digits_cnn, tgt, tmp_path / "b", precision="fp32")
    pred = edgefm.load(tmp_path / "b")
    x = digits_cnn.eval.inputs["x"]
    for n in (1, 5, 1):
        np.testing.assert_allclose(pred({"x": x[:n]})["logits"], digits_cnn.reference["logits"][:n], atol=1e-4)


def test_torch_conversion_path_matches(digits_cnn, tmp_path):
    _, r = build_bundle(digits_cnn, target("openvino-cpu", convert_from="torch", compare_precisions=False),
                        tmp_path / "t", precision="fp32", model=digits_cnn.module)
    assert stage(r, "convert").settings["convert_from"] == "torch"
    assert stage(r, "compile").metrics["logits"]["max_abs"] < 1e-4
    pred = edgefm.load(tmp_path / "t")
    np.testing.assert_allclose(pred({"x": digits_cnn.eval.inputs["x"][:4]})["logits"],
                               digits_cnn.reference["logits"][:4], atol=1e-4)


def test_bad_inputs_give_typed_errors(digits_cnn, tmp_path):
    from edgefm.backends import openvino as ovb

    with pytest.raises(ConfigError, match="--keep-fp32 'NoSuchLayer' matches no node"):
        ovb.compile(make_job(digits_cnn, target("openvino-cpu"), tmp_path, keep_fp32=["NoSuchLayer"]))
    with pytest.raises(ConfigError, match="convert_from: torch needs the torch model"):
        ovb.compile(make_job(digits_cnn, target("openvino-cpu", convert_from="torch"), tmp_path))
