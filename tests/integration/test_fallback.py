"""Accuracy fallback on ONNX Runtime: a CNN whose int8 build collapses (an outlier layer) fails with an
error by default, and with --max-accuracy-drop the most damaged activations stay in float until it holds."""

import json

import numpy as np
import pytest

import edgefm
from tests.conftest import CALIB
from tests.integration.test_compress import cli


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


def test_int8_collapse_is_an_error_then_fallback_meets_the_bound(outlier_cnn, tmp_path):
    ckpt, fp32_acc = outlier_cnn
    args = [ckpt, "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8", "--calib", CALIB / "digits_calib.npz",
            "--eval", CALIB / "digits_eval.npz"]
    code, text = cli("compress", "-o", tmp_path / "strict", *args)
    assert code == 2 and "no int8 recipe met the limits" in text and not (tmp_path / "strict").exists()

    code, text = cli("compress", "-o", tmp_path / "b", *args, "--max-accuracy-drop", "0.5")
    assert code == 0, text
    m = json.loads((tmp_path / "b/manifest.json").read_text())
    stage = next(s for s in m["stages"] if s["name"] == "quantize")
    kept = stage["settings"]["fallback_nodes_fp32"]
    # the outlier pair (first conv, whose output carries the outliers, and the conv that undoes them) and no
    # more than half of the graph's quantizable nodes
    assert any("features.0" in n for n in kept) and any("features.3" in n for n in kept), kept
    assert len(kept) <= 5, kept
    ev = np.load(CALIB / "digits_eval.npz")
    top1 = float((edgefm.load(tmp_path / "b")({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
    assert top1 >= fp32_acc - 0.005, (top1, fp32_acc)
