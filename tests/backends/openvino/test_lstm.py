"""Digits LSTM (2-layer) through the OpenVINO backend: int8 top-1 within the contract, the recurrent cells
kept in float (and why), and the model loads and runs any batch size."""

import numpy as np
import pytest

import edgefm
from edgefm.contract import judge
from edgefm.errors import AccuracyError

from .conftest import build_bundle, stage, target, top1


@pytest.mark.avx2emu
def test_int8_top1_within_the_contract(digits_lstm, tmp_path):
    manifest, result = build_bundle(digits_lstm, target("openvino-cpu"), tmp_path / "lstm")
    pred = edgefm.load(tmp_path / "lstm")
    x, labels = digits_lstm.eval.inputs["x"], digits_lstm.eval.labels
    got = pred({"x": x})["logits"]
    fp32 = top1(digits_lstm.reference["logits"], labels)
    assert fp32 > 0.85
    # the recorded contract (top-1 drop of 1 point by default, relative to fp32; agreement), not one CPU's figure:
    # the drop was 0.2 points on an AVX-512 VNNI CPU, 0.6 on an AVX2-only one
    verdict = judge(manifest.targets["openvino-cpu"].contract, digits_lstm.reference, {"logits": got}, labels)
    assert verdict.ok and verdict.metrics["_accuracy"]["fp32_top1"] == pytest.approx(fp32), verdict.failures
    q = stage(result, "quantize")
    assert "LSTMSequence" in str(q.notes) and q.metrics["_int8_layers"]["by_type"].get("MatMul") == 1
    assert "LSTMSequence" not in q.metrics["_int8_layers"]["by_type"]
    for n in (1, 2, 9):
        np.testing.assert_allclose(pred({"x": x[:n]})["logits"], got[:n], rtol=1e-3, atol=1e-3)


def test_quantized_lstm_cells_are_refused_by_the_check(digits_lstm, tmp_path):
    """Why the recipe keeps LSTM cells in float: quantized, OpenVINO's CPU int8 LSTM loses most of the
    accuracy, and the default tolerances catch it with a typed error that suggests the way out. (If this
    test starts failing, OpenVINO/NNCF have fixed it and quantize_rnn can become the default.)"""
    with pytest.raises(AccuracyError, match="openvino int8.*--max-accuracy-drop") as err:
        build_bundle(digits_lstm, target("openvino-cpu", quantize_rnn=True, compare_precisions=False),
                     tmp_path / "lstm8")
    assert err.value.metric in ("cosine", "top1_agreement", "accuracy_drop_points")
    assert not (tmp_path / "lstm8").exists()  # nothing half-written
