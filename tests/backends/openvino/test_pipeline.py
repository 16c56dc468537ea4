"""End to end: ``edgefm.pipeline.compress`` with the openvino-cpu target for a CNN, an RNN and a
Transformer checkpoint, then ``edgefm.load`` and ``edgefm verify`` on the bundle."""

from __future__ import annotations

import numpy as np
import pytest

import edgefm
from edgefm.config import CompressConfig
from edgefm.fidelity import cosine_per_sample
from edgefm.pipeline import compress
from edgefm.verify import verify_bundle

from .conftest import ROOT, top1

CALIB = ROOT / "calibration"


@pytest.fixture(scope="module")
def ckpts(digits_cnn_module, digits_lstm, tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("ckpt")
    torch.save(digits_cnn_module.state_dict(), d / "cnn.pt")
    torch.save(digits_lstm.module.state_dict(), d / "lstm.pt")
    return d


@pytest.mark.parametrize("family, arch, decl, data", [
    ("cnn", "edgefm.zoo:digits_cnn", "x:1,1,8,8", "digits"),
    ("rnn", "edgefm.zoo:digits_lstm", "x:1,8,8", "digits_seq"),
])
def test_compress_digits_to_openvino_and_load(ckpts, tmp_path, family, arch, decl, data):
    out = tmp_path / family
    manifest = compress(CompressConfig(
        source=ckpts / ("cnn.pt" if family == "cnn" else "lstm.pt"), arch=arch, inputs=[decl], output=out,
        calib=CALIB / f"{data}_calib.npz", eval=CALIB / f"{data}_eval.npz", targets=["openvino-cpu"]))
    entry = manifest.targets["openvino-cpu"]
    assert manifest.spec.family == family and entry.backend == "openvino" and entry.precision == "int8"
    assert [s.name for s in manifest.stages if s.target == "openvino-cpu"] == ["convert", "quantize", "compile"]
    ev = np.load(CALIB / f"{data}_eval.npz")
    pred = edgefm.load(out)
    assert pred.backend == "openvino"
    got = pred({"x": ev["x"]})["logits"]
    fp32 = entry.metrics["_accuracy"]["fp32_top1"]
    assert top1(got, ev["labels"]) >= fp32 - 0.005
    (report,) = verify_bundle(out, ["openvino-cpu"])
    assert report.ok, [(c.name, c.detail) for c in report.checks]


@pytest.mark.slow  # 26-39 s here: the transformer's whole pipeline (load, export, NNCF, verify)
def test_compress_minilm_to_openvino_and_load(tmp_path):
    from edgefm import zoo

    out = tmp_path / "minilm"
    manifest = compress(CompressConfig(
        source=zoo.minilm_path(), output=out, calib=CALIB / "sentences.txt", max_length=32, max_calib_samples=96,
        max_eval_samples=64, targets=["openvino-cpu"]))
    entry = manifest.targets["openvino-cpu"]
    assert manifest.spec.family == "transformer" and entry.metrics["sentence_embedding"]["cosine"] >= 0.99
    pred = edgefm.load(out)
    stored = np.load(out / "eval.npz")
    feed = {n: stored[f"in/{n}"] for n in pred.input_names}
    cos = cosine_per_sample(stored["ref/sentence_embedding"], pred(feed)["sentence_embedding"])
    assert cos.mean() >= 0.99
    (report,) = verify_bundle(out, ["openvino-cpu"])
    assert report.ok, [(c.name, c.detail) for c in report.checks]
