"""``--max-accuracy-drop`` with NNCF accuracy control, on a CNN with an outlier channel (conftest): plain
int8 misses a tight bound, accuracy control meets it by putting the conv that reads the outlier channel
back in float, and the manifest names it; with labels the metric is top-1, without it is cosine to fp32;
when the bound cannot be met, a typed error says so and why."""

import pytest

import edgefm
from edgefm.errors import AccuracyError

from .conftest import build_bundle, stage, target, top1

CONV = "/features/features.7/Conv/WithoutBiases"


def test_plain_int8_misses_and_accuracy_control_meets_a_tight_bound(outlier_cnn, tmp_path):
    manifest, result = build_bundle(outlier_cnn, target("openvino-cpu", compare_precisions=False),
                                    tmp_path / "b", max_accuracy_drop=0.5)
    ac = stage(result, "quantize").metrics["_accuracy_control"]
    assert ac["metric"] == "top1_points"
    assert ac["plain_drop_points"] > 0.5            # plain int8 misses the bound ...
    assert ac["drop_points"] <= 0.5                 # ... accuracy control meets it
    assert CONV in ac["layers_kept_in_float"]       # and names the layer it put back in float
    assert ac["int8_layers_left"] >= 3              # the rest stays int8
    assert manifest.stages[1].settings["accuracy_control"]["max_drop_points"] == 0.5
    # the bundle delivers it
    pred = edgefm.load(tmp_path / "b")
    labels = outlier_cnn.eval.labels
    got = top1(pred({"x": outlier_cnn.eval.inputs["x"]})["logits"], labels)
    assert got >= top1(outlier_cnn.reference["logits"], labels) - 0.005


def test_unlabeled_data_uses_cosine(outlier_cnn, tmp_path):
    _, result = build_bundle(outlier_cnn, target("openvino-cpu", compare_precisions=False), tmp_path / "b",
                             labels=False, max_accuracy_drop=0.5)
    q = stage(result, "quantize")
    ac = q.metrics["_accuracy_control"]
    assert ac["metric"] == "cosine_points" and ac["plain_drop_points"] > 0.5 and ac["drop_points"] <= 0.5
    assert CONV in ac["layers_kept_in_float"]
    assert q.metrics["logits"]["cosine"] >= 0.995


def test_without_the_flag_plain_int8_fails_with_a_hint(outlier_cnn, tmp_path):
    """Plain int8 keeps top-1 within the default contract here (agreement ~98 %, 0.9 points of accuracy):
    a user who asks for 99.5 % agreement gets a refusal that names the gate and the flag that helps."""
    with pytest.raises(AccuracyError, match=r"top1_agreement = 0\.9.*limit is >= 0\.995.*--max-accuracy-drop"):
        build_bundle(outlier_cnn, target("openvino-cpu", compare_precisions=False), tmp_path / "b",
                     outputs={"logits": {"kind": "logits", "top1_agreement": 0.995}})


def test_bound_met_only_by_giving_up_int8_is_an_error(outlier_cnn, tmp_path):
    """A cosine bound of 0.999999 (0.0001 points): accuracy control has to put every layer back in float,
    which is no int8 model at all; the error says the bound cannot be met with int8."""
    with pytest.raises(AccuracyError, match="cannot be met with int8") as err:
        build_bundle(outlier_cnn, target("openvino-cpu", compare_precisions=False), tmp_path / "b",
                     labels=False, max_accuracy_drop=0.0001)
    assert "all 5 quantized layers back in float" in str(err.value)
    assert not (tmp_path / "b").exists()


def test_capped_accuracy_control_says_why(outlier_cnn, tmp_path):
    """At most one layer back in float: not enough for a 0.01-point cosine bound; the error names what
    was tried and what is left."""
    tgt = target("openvino-cpu", compare_precisions=False, accuracy_control_max_layers=1)
    with pytest.raises(AccuracyError, match="cannot be met with int8") as err:
        build_bundle(outlier_cnn, tgt, tmp_path / "b", labels=False, max_accuracy_drop=0.01)
    assert err.value.metric == "cosine_points_drop" and err.value.value > 0.01
    assert "put 1 layer(s) back in float" in str(err.value)
