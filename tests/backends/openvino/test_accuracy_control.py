"""``--max-accuracy-drop`` on OpenVINO, through the shared accuracy fallback (edgefm.quantize.fallback) on a
CNN with an outlier channel (conftest): plain int8 misses a tight bound; the fallback ranks the activation
FakeQuantizes by SQNR, keeps the conv that reads the outlier channel in float (NNCF ignored scope) and the
manifest names it; without the flag plain int8 is refused; a bound the budget cannot reach is a typed error
naming the figures."""

import numpy as np
import pytest

import edgefm
from edgefm.backends.base import Samples
from edgefm.errors import AccuracyError
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec

from .conftest import build_bundle, stage, target, top1

CONV = "/features/features.7/Conv/WithoutBiases"


def test_plain_int8_misses_and_the_fallback_meets_a_tight_bound(outlier_cnn, tmp_path):
    manifest, result = build_bundle(outlier_cnn, target("openvino-cpu", compare_precisions=False),
                                    tmp_path / "b", max_accuracy_drop=0.5)
    q = stage(result, "quantize")
    fb = q.settings["fallback"]
    assert fb["ok"] and CONV in fb["kept_in_float"], fb       # names the layer it kept in float
    assert not fb["rounds"][0]["ok"] or len(fb["rounds"]) == 1
    assert len(fb["kept_in_float"]) <= 2                      # the rest stays int8
    assert q.metrics["_int8_layers"]["count"] >= 3
    entry = manifest.targets["openvino-cpu"]
    assert entry.kept_in_float == fb["kept_in_float"] and entry.fallback["kept_precision"] == "float"
    # the bundle delivers it
    pred = edgefm.load(tmp_path / "b")
    labels = outlier_cnn.eval.labels
    got = top1(pred({"x": outlier_cnn.eval.inputs["x"]})["logits"], labels)
    assert got >= top1(outlier_cnn.reference["logits"], labels) - 0.005


def test_with_no_fallback_plain_int8_fails_with_a_hint(outlier_cnn, tmp_path):
    """The same 0.5-point bound given as a tolerance, with --no-fallback: a refusal that says how."""
    from edgefm.config import Tolerances
    from edgefm.fidelity import Limits

    tol = Tolerances(quantize=Limits(cosine=0.98, top1_agreement=0.95, accuracy_drop=0.5))
    with pytest.raises(AccuracyError, match=r"but the limit is.*--no-fallback.*--max-accuracy-drop"):
        build_bundle(outlier_cnn, target("openvino-cpu", compare_precisions=False), tmp_path / "b", tolerances=tol,
                     fallback=False)
    assert not (tmp_path / "b").exists()


def test_a_bound_out_of_budget_is_an_error_with_figures(outlier_cnn, tmp_path):
    """A cosine gate 1e-8 from exact, which no int8 model meets, with the budget capped at two quantizers: the
    fallback gives up and the error names the gate, the budget and the last try's figures; no bundle is written."""
    from edgefm.config import Tolerances
    from edgefm.fidelity import Limits

    tgt = target("openvino-cpu", compare_precisions=False, max_fallback_fraction=0.1)
    with pytest.raises(AccuracyError, match=r"even after the accuracy fallback kept 2 layer\(s\).*share budget.*"
                                            r"prob_cosine") as err:
        build_bundle(outlier_cnn, tgt, tmp_path / "b", max_accuracy_drop=0.5,
                     tolerances=Tolerances(quantize=Limits(cosine=1 - 1e-8)))
    assert err.value.metric == "prob_cosine"
    assert not (tmp_path / "b").exists()


def test_sensitivity_when_a_quantized_tensor_is_also_an_output():
    """The OpenVINO fallback hook adds every activation FakeQuantize's input and output as model outputs: a tensor
    that already is an output (here the features a second head reads; nudenet 320n in a fallback round) adds no
    new Result. Counting positions read past the end ("vector::_M_range_check"); each is read where it is now."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as op

    from edgefm.quantize import nncf as nq
    from edgefm.samples import Samples

    rng = np.random.default_rng(0)
    x = op.parameter([-1, 3, 8, 8], np.float32, name="x")
    conv1 = op.convolution(x, op.constant(rng.standard_normal((8, 3, 3, 3)).astype(np.float32)), [1, 1], [1, 1],
                           [1, 1], [1, 1])
    relu = op.relu(conv1)
    conv2 = op.convolution(relu, op.constant(rng.standard_normal((4, 8, 3, 3)).astype(np.float32)), [1, 1], [1, 1],
                           [1, 1], [1, 1])
    conv1.set_friendly_name("conv1"), relu.set_friendly_name("relu"), conv2.set_friendly_name("conv2")
    relu.output(0).get_tensor().set_names({"features"})
    conv2.output(0).get_tensor().set_names({"y"})
    model = ov.Model([conv2.output(0), relu.output(0)], [x])
    calib = Samples({"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)})
    qmodel = nq.quantize(model, calib, nq.PTQSettings(subset_size=8))
    ranked = nq.sensitive_fake_quantizes(qmodel, calib, samples=4)
    assert sorted(r[2][0] for r in ranked) == ["conv1", "conv2"]  # the FakeQuantize before each conv, once
    assert all(np.isfinite(r[1]) and 15 < r[1] < 80 for r in ranked), ranked  # int8 SQNR, not a mix-up of tensors
    assert len(qmodel.outputs) == 2  # ranking worked on a copy


def _offset_conv(tmp_path):
    """Inputs in [-0.05, 1] (a SiLU-like range) through a 3x3 conv whose kernels (entries -1, 0, 1: exact in int8)
    sum to 0. NNCF's default symmetric activations quantize the input on [-1, 1], its 'mixed' preset on
    [-0.05, 1]: half the step. Output rel_error (NumPy simulation and OpenVINO agree): 0.0078 vs 0.0041."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from .conftest import ModelCase, reference

    rng = np.random.default_rng(3)
    signs = np.array([1.0] * 16 + [-1.0] * 16 + [0.0] * 4, np.float32)
    w = np.stack([rng.permutation(signs) for _ in range(8)]).reshape(8, 4, 3, 3)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 6, 6])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "offset.onnx"))
    spec = ModelSpec(family="cnn", inputs=[InputSpec(name="x", shape=["batch", 4, 8, 8])],
                     outputs=[OutputSpec(name="y", kind="regression")])
    data = rng.random((96, 4, 8, 8)).astype(np.float32)
    data[:, :, 0, 0] = -0.05  # a SiLU-like range [-0.05, 1]: symmetric int8 spends half its grid below -0.05
    calib, eval_ = Samples({"x": data[:64]}), Samples({"x": data[64:]})
    return ModelCase("offset", None, tmp_path / "offset.onnx", spec, calib, eval_,
                     reference(tmp_path / "offset.onnx", eval_))


def test_mixed_preset_tried_when_symmetric_activations_miss(tmp_path):
    """A declared rel_error <= 0.006 between the two: plain int8 with NNCF's default preset misses it; the 'mixed'
    preset (asymmetric activations) is tried once and certified, with nothing kept in float and --no-fallback (it
    is a recipe, not the fallback); the manifest records the preset and why. (7-bit first-layer weights off, so
    that the weights stay exact and only the activation grid differs.)"""
    case = _offset_conv(tmp_path)
    tgt = target("openvino-cpu", compare_precisions=False, overflow_fix="disable")
    manifest, result = build_bundle(case, tgt, tmp_path / "b", fallback=False,
                                    outputs={"y": {"kind": "regression", "rel_error": 0.006}})
    q = stage(result, "quantize")
    assert q.settings["preset"] == "mixed" and "fallback" not in q.settings, (q.settings, q.metrics.get("y"))
    assert any("'mixed' preset (asymmetric activations): ok - kept" in n for n in q.notes), q.notes
    assert q.metrics["y"]["rel_error"] <= 0.006 and not manifest.targets["openvino-cpu"].kept_in_float
