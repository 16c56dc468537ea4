"""Spec parsing, config, targets, bundle staging and integrity, fidelity figures."""

import json

import numpy as np
import pytest

from edgefm import bundle as B
from edgefm.config import build_config
from edgefm.errors import AccuracyError, BundleError, CalibrationError, ConfigError, TargetError
from edgefm.fidelity import Limits, accuracy, check, compare, evaluate
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec, parse_input_decl
from edgefm.targets import get_target, list_targets, load_target_file


def test_parse_input_decl_makes_batch_dynamic_and_names_axes():
    s = parse_input_decl("x:1,3,224,224:float32")
    assert s.shape == ["batch", 3, 224, 224] and s.dynamic_axes == {0: "batch"}
    s = parse_input_decl("ids:batch,seq:int64")
    assert s.shape == ["batch", "seq"] and s.dtype == "int64"
    assert parse_input_decl("x:!1,8").shape == [1, 8]
    for bad in ("x", "x:1,2:complex", "x:1,?,3", ":1,2"):
        with pytest.raises(ConfigError):
            parse_input_decl(bad)


def test_check_feed_names_the_problem():
    spec = ModelSpec(family="cnn", inputs=[InputSpec(name="x", shape=["batch", 1, 8, 8])])
    spec.check_feed({"x": np.zeros((3, 1, 8, 8), np.float32)}, "t")
    with pytest.raises(CalibrationError, match=r"axis 2 must be 8"):
        spec.check_feed({"x": np.zeros((3, 1, 7, 8), np.float32)}, "t")
    with pytest.raises(CalibrationError, match="missing"):
        spec.check_feed({"y": np.zeros((3, 1, 8, 8), np.float32)}, "t")
    with pytest.raises(CalibrationError, match="rank"):
        spec.check_feed({"x": np.zeros((3, 8, 8), np.float32)}, "t")


def test_recipe_and_flags_fill_one_config(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text("source: a.pt\noutput: out\nquantize: fp16\nmax_calib_samples: 10\n")
    cfg = build_config(r, output=tmp_path / "o2", quantize=None)
    assert cfg.quantize == "fp16" and cfg.max_calib_samples == 10 and cfg.output == tmp_path / "o2"
    r.write_text("source: a.pt\noutput: out\nquantise: int8\n")
    with pytest.raises(ConfigError, match="quantise"):
        build_config(r)
    with pytest.raises(ConfigError, match="quantize"):
        build_config(None, source="a", output="b", quantize="int4")


def test_targets_are_validated(tmp_path):
    assert "onnxruntime-cpu" in list_targets()
    assert get_target("onnxruntime-cpu").backend == "onnxruntime"
    with pytest.raises(TargetError, match="known targets"):
        get_target("no-such-board")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: onnxruntime\nprecisoin: int8\n")
    with pytest.raises(TargetError, match="precisoin"):
        load_target_file(bad)


def _manifest():
    return B.Manifest(edgefm_version="0", source=B.SourceInfo(path="x", kind="onnx"),
                      spec=ModelSpec(family="cnn", inputs=[InputSpec(name="x", shape=["batch", 2])]))


def test_staging_is_atomic_and_refuses_existing(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with B.staging(out) as tmp:
            (tmp / "a.bin").write_bytes(b"1")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with B.staging(out) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
        B.finalize(tmp, _manifest())
    assert json.loads((out / "manifest.json").read_text())["files"]["a.bin"] == B.sha256_file(out / "a.bin")
    with pytest.raises(BundleError, match="--force"):
        with B.staging(out):
            pass
    with B.staging(out, force=True) as tmp:
        (tmp / "c.bin").write_bytes(b"2")
        B.finalize(tmp, _manifest())
    assert sorted(p.name for p in out.iterdir()) == ["c.bin", "manifest.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_verify_files_detects_changes(tmp_path):
    out = tmp_path / "b"
    with B.staging(out) as tmp:
        (tmp / "a.bin").write_bytes(b"1")
        B.finalize(tmp, _manifest())
    m = B.read_manifest(out)
    B.verify_files(out, m)
    (out / "a.bin").write_bytes(b"2")
    with pytest.raises(BundleError, match="modified"):
        B.verify_files(out, m)
    (out / "a.bin").unlink()
    with pytest.raises(BundleError, match="missing"):
        B.verify_files(out, m)
    (out / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="not a valid manifest"):
        B.read_manifest(out)


def test_fidelity_figures():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 10))
    spec = ModelSpec(family="cnn", inputs=[InputSpec(name="x", shape=["batch", 2])],
                     outputs=[OutputSpec(name="y", kind="logits")])
    m = compare({"y": ref}, {"y": ref + 1e-3}, spec)["y"]
    assert m["max_abs"] == pytest.approx(1e-3) and m["cosine"] > 0.9999 and m["top1_agreement"] == 1.0
    flipped = -ref
    m = compare({"y": ref}, {"y": flipped}, spec)["y"]
    assert m["cosine"] == pytest.approx(-1) and m["top1_agreement"] < 0.2
    with pytest.raises(AccuracyError, match="cosine"):
        check("quantize", {"y": m}, Limits(cosine=0.9))
    labels = ref.argmax(1)
    assert accuracy(ref, labels) == {"top1": 1.0, "top5": 1.0}
    metrics = evaluate(spec, {"y": ref}, {"y": flipped}, labels)
    assert metrics["_accuracy"]["fp32_top1"] == 1.0 and metrics["_accuracy"]["top1"] < 0.2
    with pytest.raises(AccuracyError, match="accuracy_drop_points"):
        check("quantize", metrics, Limits(accuracy_drop=1.0))


def test_a_child_forked_under_the_sigterm_handler_gets_the_default_action():
    """A library forks workers while compress holds SIGTERM (OpenVINO's telemetry sender does): the child gets
    SIGTERM's default action, so terminate() ends it even when it is stuck in C code where a Python handler
    never runs (before: the child ran our handler and could hang its parent's join)."""
    import multiprocessing
    import signal
    import time

    from edgefm.bundle import sigterm_as_interrupt

    with sigterm_as_interrupt():
        p = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,), daemon=True)
        p.start()
        time.sleep(0.5)
        p.terminate()
        p.join(10)
    assert p.exitcode == -signal.SIGTERM, p.exitcode
