"""The TensorRT backend through the backend contract: bundles, build settings, edgefm.load before an engine
exists, refusals of settings the device cannot honour, 2:4 sparsity, residual-Add placement and the
accuracy fallback."""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgefm
from tests.backends.tensorrt import helpers
from tests.backends.tensorrt.helpers import make_bundle
from edgefm.backends import tensorrt as trt_backend
from edgefm.backends import tensorrt_engine as te
from edgefm.backends import tensorrt_rules as rules
from edgefm.bundle import finalize, read_manifest
from edgefm.errors import (AccuracyError, BackendUnavailableError, ConfigError, DeviceMismatchError,
                           TargetError)
from edgefm.fidelity import Limits
from edgefm.quantize import sparsity
from edgefm.quantize import tensorrt as q
from edgefm.targets import get_target


def _variant(name, **options):
    t = get_target(name)
    return t.model_copy(update={"options": {**t.options, **options}})


def test_load_runs_the_qdq_onnx_until_an_engine_exists(cnn, cnn_bundle):
    p = edgefm.load(cnn_bundle)
    assert p.target == "jetson-orin-nano" and p.backend == "tensorrt" and p.executes == "onnxruntime"
    entry = read_manifest(cnn_bundle).targets["jetson-orin-nano"]
    x = cnn.eval.inputs["x"]
    want = helpers.ort_run(cnn_bundle / entry.options["onnx"], {"x": x})["logits"]
    np.testing.assert_array_equal(p({"x": x})["logits"], want)
    assert p({"x": x[:1]})["logits"].shape == (1, 10)
    with ThreadPoolExecutor(4) as pool:  # several threads at once, different batch sizes
        outs = list(pool.map(lambda s: p({"x": x[s:s + 37]})["logits"], range(0, 370, 37)))
    np.testing.assert_array_equal(np.concatenate(outs), want[:370])


def test_device_side_load_needs_no_torch(cnn_bundle):
    import subprocess
    import sys

    code = ("import sys, numpy as np, edgefm; p = edgefm.load(sys.argv[1]); "
            "y = p({'x': np.zeros((3, 1, 8, 8), np.float32)})['logits']; "
            "assert y.shape == (3, 10), y.shape; assert 'torch' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code, str(cnn_bundle)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_entry_and_build_settings(cnn_bundle):
    m = read_manifest(cnn_bundle)
    entry = m.targets["jetson-orin-nano"]
    assert entry.options["engine"] is None and entry.options["executes"].startswith("onnxruntime")
    assert sorted(entry.files) == ["jetson-orin-nano/build.json", "jetson-orin-nano/model.qdq.onnx"]
    build = json.loads((cnn_bundle / entry.options["build"]).read_text())
    assert build["flags"] == {"int8": True, "fp16": True, "sparse_weights": False, "strongly_typed": False}
    assert build["profiles"] == {"x": {"min": [1, 1, 8, 8], "opt": [1, 1, 8, 8], "max": [16, 1, 8, 8]}}
    assert build["expects"]["compute_capability"] == "8.7" and build["expects"]["tensorrt"] == "10.3"
    assert build["quantization"]["int8_layers"] >= 4 and build["dla"]["core"] is None
    stage = next(s for s in m.stages if s.name == "quantize")
    assert stage.target == "jetson-orin-nano" and stage.metrics["_accuracy"]["top1"] > 0.9


def test_fp16_target_keeps_the_fp32_onnx(cnn, work):
    b = make_bundle(cnn, "jetson-orin-nano", work / "cnn-fp16", precision="fp16")
    entry = read_manifest(b).targets["jetson-orin-nano"]
    build = json.loads((b / entry.options["build"]).read_text())
    assert entry.artifact == "fp32/model.onnx" and build["flags"]["fp16"] and not build["flags"]["int8"]
    assert build["quantization"] is None and {"Conv", "Gemm"} <= {f["op"] for f in build["fp16_layers"]}
    assert entry.metrics["logits"]["max_abs"] == 0.0


def test_engine_in_bundle_without_matching_tensorrt(cnn_bundle, tmp_path, caplog):
    b = tmp_path / "with-engine"
    shutil.copytree(cnn_bundle, b)
    m = read_manifest(b)
    entry = m.targets["jetson-orin-nano"]
    (b / "jetson-orin-nano" / "model.engine").write_bytes(b"not an engine built here")
    entry.options["engine"] = "jetson-orin-nano/model.engine"
    entry.files.append("jetson-orin-nano/model.engine")
    entry.hardware["engine"] = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt": "10.3.0"}
    finalize(b, m)
    if trt_backend.engine_available():  # a machine with TensorRT: the engine's GPU/version must match
        with pytest.raises(DeviceMismatchError, match="Orin"):
            edgefm.load(b)
        return
    with caplog.at_level(logging.WARNING):
        p = edgefm.load(b)
    assert p.executes == "onnxruntime" and "TensorRT is not importable" in caplog.text
    with pytest.raises(BackendUnavailableError, match=r"built for Orin \(nvgpu\), TensorRT 10.3.0"):
        edgefm.load(b, strict=True)
    assert edgefm.load(b, device="cpu", strict=True).executes == "onnxruntime"


def test_device_mismatch_names_both_sides(tmp_path):
    built = {"gpu": "Orin (nvgpu)", "compute_capability": "8.7", "tensorrt": "10.3.0"}
    te.check_compatible(built, dict(built), tmp_path / "e")
    with pytest.raises(DeviceMismatchError) as e:
        te.check_compatible(built, {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.3.0"},
                            tmp_path / "e")
    assert "Orin (nvgpu) (compute 8.7)" in str(e.value) and "NVIDIA H200 (compute 9.0)" in str(e.value)
    with pytest.raises(DeviceMismatchError, match="TensorRT 10.3.0 vs this machine's 10.7.0"):
        te.check_compatible(built, {**built, "tensorrt": "10.7.0"}, tmp_path / "e")


def test_jetson_release_files(tmp_path):
    assert te.parse_l4t("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64") == "36.4.3"
    assert te.parse_l4t("# R35 (release), REVISION: 6.0, GCID: 1") == "35.6.0"
    assert te.jetpack_for_l4t("36.4.3") == "6.2" and te.jetpack_for_l4t("36.4.0") == "6.1"
    assert te.jetpack_for_l4t("35.6.0") == "5.1.4" and te.jetpack_for_l4t("30.1") is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 3.0, GCID: 36191598\n")
    assert te.jetson_release(tmp_path) == {"l4t": "36.3.0", "jetpack": "6.0"}
    assert te.jetson_release(tmp_path / "nothing") == {}


@pytest.mark.parametrize("target, precision, error, match", [
    (_variant("jetson-orin-nano", dla_core=0), "int8", ConfigError, "has 0 DLA core"),
    (_variant("jetson-xavier-nx", sparsity=True), "int8", ConfigError, "compute capability 8.0"),
    (_variant("jetson-orin-nx", max_bach=8), "int8", TargetError, "options.max_bach"),
    (_variant("jetson-orin-nx", dims={"seq": [8, 4, 16]}), "int8", TargetError, "options.dims"),
    (_variant("jetson-orin-nx", min_batch=4, opt_batch=2), "int8", ConfigError, "min_batch <= opt_batch"),
    (get_target("jetson-orin-nx"), "bf16", ConfigError, "precision 'bf16'"),
])
def test_refusals_leave_nothing_behind(cnn, tmp_path, target, precision, error, match):
    with pytest.raises(error, match=match):
        make_bundle(cnn, target, tmp_path / "b", precision=precision)
    assert not (tmp_path / "b").exists()


def test_sparsity_prunes_large_layers_and_warns_on_small(cnn, work, caplog):
    from edgefm.config import Tolerances

    # 2:4 pruning without fine-tuning moves the logits (cosine ~0.97 here): looser limits for this test
    loose = Tolerances(quantize=Limits(cosine=0.9, top1_agreement=0.9, accuracy_drop=5.0))
    target = _variant("jetson-orin-nx", sparsity=True)
    with caplog.at_level(logging.WARNING, logger="edgefm.quantize.sparsity"):
        b = make_bundle(cnn, target, work / "cnn-sparse", tolerances=loose)
    entry = read_manifest(b).targets["jetson-orin-nx"]
    build = json.loads((b / entry.options["build"]).read_text())
    report = build["sparsity"]
    assert build["flags"]["sparse_weights"] and len(report["pruned"]) == 2
    assert {s["op"] for s in report["skipped"]} == {"Conv", "Gemm"} and "left dense" in caplog.text
    model = onnx.load(str(b / entry.options["onnx"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    prod = {o: n for n in model.graph.node for o in n.output}
    for name in {p["node"] for p in report["pruned"]}:
        conv = next(n for n in model.graph.node if n.name == name)
        dq = prod[conv.input[1]]  # TensorRT 10 target: int8 weights behind a DequantizeLinear; zeros stay zero
        w = inits[dq.input[0]]
        assert w.dtype == np.int8 and sparsity.is_2_4(np.moveaxis(w, 1, -1).reshape(-1, w.shape[1]))
    # measured, not assumed: the drop 2:4 pruning without fine-tuning costs on this small CNN
    acc = entry.metrics["_accuracy"]
    assert 0 <= 100 * (acc["fp32_top1"] - acc["top1"]) <= 5.0
    # the same bundle checked for Xavier NX: no sparse tensor cores, and TensorRT 8.5 reads no int8 weights
    assert {v.rule for v in rules.verify_bundle(b, "jetson-xavier-nx")} == {"target", "qdq-weights"}


def test_percentile_calibration_with_an_uneven_last_batch(cnn, tmp_path):
    # ONNX Runtime's histogram calibrators cannot stack batches of different sizes: the remainder is dropped
    calib = {"x": cnn.calib.inputs["x"][:37]}
    cfg = q.TrtQuantConfig(calibration="percentile")
    res = q.quantize_qdq(cnn.onnx_path, tmp_path / "p.onnx", calib, "cnn", cfg, ["x"])
    assert "calibrated on 32 samples (Percentile)" in res.notes and res.qdq_pairs > 0
    res = q.quantize_qdq(cnn.onnx_path, tmp_path / "m.onnx", calib, "cnn", q.TrtQuantConfig(), ["x"])
    assert "calibrated on 37 samples (MinMax)" in res.notes


def test_2_4_on_gemm_and_matmul_weights():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(64, 128)).astype(np.float32)
    p = sparsity.prune_2_4(rows)
    assert sparsity.is_2_4(p) and not sparsity.is_2_4(rows)
    kept = np.abs(p.reshape(-1, 4)).sum(1)  # the two largest magnitudes of each group survive
    top2 = np.sort(np.abs(rows.reshape(-1, 4)), axis=1)[:, 2:].sum(1)
    np.testing.assert_allclose(kept, top2, rtol=1e-6)


def test_residual_add_gets_qdq_on_the_residual_input_only(tmp_path):
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.conv = torch.nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            return torch.relu(self.conv(h) + h)

    torch.manual_seed(0)
    path = tmp_path / "res.onnx"
    x = torch.randn(8, 3, 8, 8)
    torch.onnx.export(Block().eval(), (x,), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    res = q.quantize_qdq(path, tmp_path / "res.qdq.onnx", {"x": x.numpy()}, "cnn", q.TrtQuantConfig(), ["x"])
    model = onnx.load(str(tmp_path / "res.qdq.onnx"))
    prod = {o: n for n in model.graph.node for o in n.output}
    add = next(n for n in model.graph.node if n.op_type == "Add")
    srcs = [prod[i].op_type for i in add.input]
    assert sorted(srcs) == ["Conv", "DequantizeLinear"], srcs  # conv side fused, residual side int8
    assert res.plan.residual_adds == {add.name: srcs.index("Conv")}
    assert rules.check_model(model, "10.3") == []
    ref = helpers.ort_run(path, {"x": x.numpy()})["y"]
    got = helpers.ort_run(tmp_path / "res.qdq.onnx", {"x": x.numpy()})["y"]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99


def test_accuracy_fallback_budget_and_never_all_fp16(cnn, tmp_path):
    """A cosine gate 1e-8 from exact, reachable only with every layer back in float: refused with --no-fallback
    (saying how), refused by the fallback at its share budget, and refused rather than shipped as an "int8"
    artifact with no int8 left when the budget allows every unit. Nothing is written."""
    from edgefm.config import Tolerances

    exact = Tolerances(quantize=Limits(cosine=1 - 1e-8))
    with pytest.raises(AccuracyError, match="drop --no-fallback"):
        make_bundle(cnn, "jetson-orin-nano", tmp_path / "fb0", tolerances=exact, fallback=False)
    with pytest.raises(AccuracyError, match=r"fp16 fallback \((share budget \((\d+) of (\d+) units\)|keeping more would "
                                            r"leave nothing in int8)\) did not reach it") as err:
        make_bundle(cnn, _variant("jetson-orin-nano", max_fallback_fraction=1.0), tmp_path / "fb",
                    tolerances=exact, max_accuracy_drop=100.0)
    import re
    got = re.search(r"share budget \((\d+) of (\d+) units\)", str(err.value))
    assert got is None or int(got.group(1)) < int(got.group(2)), str(err.value)  # never every unit
    with pytest.raises(AccuracyError, match=r"fp16 fallback \(share budget \(2 of \d+ units\)\) did not reach it"):
        make_bundle(cnn, _variant("jetson-orin-nano", max_fallback_fraction=0.25), tmp_path / "fb2",
                    tolerances=exact, max_accuracy_drop=100.0)
    assert not any((tmp_path / n).exists() for n in ("fb0", "fb", "fb2"))


def test_jetson_targets_are_valid():
    for name, dla, trt in (("jetson-orin-nano", 0, "10.3"), ("jetson-orin-nx", 2, "10.3"),
                           ("jetson-agx-orin", 2, "10.3"), ("jetson-xavier-nx", 2, "8.5"), ("tensorrt", 0, "10")):
        t = get_target(name)
        assert t.backend == "tensorrt" and t.hardware["dla_cores"] == dla
        assert trt_backend.tensorrt_version(t) == trt
        trt_backend.check_target(t, trt_backend.options_of(t))
