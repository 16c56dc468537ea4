"""The accuracy fallback means the same on every target: a digits CNN whose int8 build collapses (one outlier
layer) is refused with ``--no-fallback`` by an error that lists the figures; by default the shared accuracy fallback
(edgefm.quantize.fallback) keeps the most damaged parts in higher precision until the contract holds, the
manifest entry names them, the bundle's top-1 is within the bound, and ``edgefm verify`` passes on it.
The jetson-orin-nano target's Q/DQ ONNX is run in ONNX Runtime here."""

import json

import numpy as np
import pytest

import edgefm
from tests.conftest import CALIB
from tests.integration.test_compress import cli

BOUND = 0.5  # points of top-1
TARGETS = ["onnxruntime-cpu", "openvino-cpu", "tflite-arm64", "jetson-orin-nano"]


@pytest.fixture(scope="module")
def outlier_cnn(tmp_path_factory):
    """A trained digits CNN made int8-hostile without changing its function: four channels of the first
    block are scaled by 500 (BatchNorm affine) and the next conv divides them back."""
    import torch

    from edgefm import zoo

    torch.manual_seed(0)
    m = zoo.digits_cnn()
    acc = zoo.train_digits(m, epochs=15)
    bn, conv2 = m.features[1], m.features[3]
    with torch.no_grad():
        bn.weight[:4] *= 500
        bn.bias[:4] *= 500
        conv2.weight[:, :4] /= 500
    path = tmp_path_factory.mktemp("outlier") / "outlier.pt"
    torch.save(m.state_dict(), path)
    return path, acc


def _args(ckpt, target):
    return [ckpt, "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8", "--calib", CALIB / "digits_calib.npz",
            "--eval", CALIB / "digits_eval.npz", "--target", target, "--quantize", "int8"]


@pytest.mark.parametrize("target", TARGETS)
def test_outlier_int8_is_refused_then_the_fallback_meets_the_bound(outlier_cnn, tmp_path, target):
    ckpt, _ = outlier_cnn
    code, text = cli("compress", "-o", tmp_path / "strict", *_args(ckpt, target), "--no-fallback")
    flat = " ".join(text.split())
    # refused, with figures (the gate, its value and its limit) and the way out
    assert code == 2 and "but the limit is" in flat and "--no-fallback" in flat, text
    assert not (tmp_path / "strict").exists()

    out = tmp_path / "b"  # by default the fallback runs, to the default contract (top-1 drop <= 1 point)
    code, text = cli("compress", "-o", out, *_args(ckpt, target))
    assert code == 0, text
    m = json.loads((out / "manifest.json").read_text())
    entry = m["targets"][target]
    kept, record = entry["kept_in_float"], entry["fallback"]
    assert kept and record["ok"] and record["kept_in_float"] == kept, entry
    assert len(kept) <= 6, kept  # the parts around the outlier, not the whole model
    assert record["rounds"] and record["rounds"][-1]["ok"] and not any(r["ok"] for r in record["rounds"][:-1])
    stage = next(s for s in m["stages"] if s["name"] == "quantize" and s["target"] == target)
    assert any("accuracy fallback" in n for n in stage["notes"]), stage["notes"]
    # the bundle is within the bound, measured directly on its artifact
    ev = np.load(CALIB / "digits_eval.npz")
    logits = edgefm.load(out, target=target)({"x": ev["x"]})["logits"]
    ref = m["targets"][target]["metrics"]["_accuracy"]["fp32_top1"]
    top1 = float((logits.argmax(1) == ev["labels"]).mean())
    assert 100 * (ref - top1) <= entry["contract"]["accuracy_drop"] + 1e-9, (top1, ref)
    assert "kept in" in text and "so that the contract holds" in " ".join(text.split()), text
    print(f"\n{target}: kept {kept}; rounds {[(r['added'], r['ok']) for r in record['rounds']]}; top-1 {top1:.4f} (fp32 {ref:.4f})")
    code, text = cli("verify", out)
    assert code == 0, text


def test_without_labels_the_fallback_works_to_the_contract_gates(outlier_cnn, tmp_path):
    """Unlabeled eval data: the same flag, and the bound is the contract's gates (top-1 agreement and
    probability cosine of the logits); the fallback meets them and records the verdict of every round."""
    ckpt, _ = outlier_cnn
    ev = np.load(CALIB / "digits_eval.npz")
    np.savez(tmp_path / "eval.npz", x=ev["x"])
    args = [ckpt, "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8", "--calib", CALIB / "digits_calib.npz",
            "--eval", tmp_path / "eval.npz", "--target", "onnxruntime-cpu", "--quantize", "int8"]
    code, text = cli("compress", "-o", tmp_path / "strict", *args, "--no-fallback")
    assert code == 2 and "but the limit is" in " ".join(text.split()), text
    code, text = cli("compress", "-o", tmp_path / "b", *args, "--max-accuracy-drop", BOUND)
    assert code == 0, text
    entry = json.loads((tmp_path / "b/manifest.json").read_text())["targets"]["onnxruntime-cpu"]
    assert entry["kept_in_float"] and "_accuracy" not in entry["metrics"]
    gates = {g["metric"]: g["limit"] for o in entry["contract"]["outputs"] for g in o["gates"]}
    assert entry["metrics"]["logits"]["top1_agreement"] >= gates["top1_agreement"]
    rounds = entry["fallback"]["rounds"]
    assert all(r["failures"] for r in rounds[:-1]) and not rounds[-1]["failures"]  # each round's verdict
    assert "top-1" in rounds[-1]["figures"] or "agree" in rounds[-1]["figures"], rounds[-1]  # and its figures
    code, text = cli("verify", tmp_path / "b")
    assert code == 0, text
