"""The OpenVINO target profiles are valid and their options are checked."""

import pytest

from edgefm.backends import get_backend
from edgefm.backends.openvino import OpenVINOOptions, options_for
from edgefm.errors import TargetError
from edgefm.targets import TargetSpec, list_targets

OPENVINO_TARGETS = ["openvino-cpu", "openvino-cpu-avx2", "openvino-cpu-amx", "openvino-cpu-w8", "openvino-gpu", "openvino-npu"]


def test_builtin_targets_validate():
    targets = list_targets()
    for name in OPENVINO_TARGETS:
        t = targets[name]
        assert t.backend == "openvino"
        opts = options_for(t)
        assert isinstance(opts, OpenVINOOptions)
    # the variants differ in recipe, not only in name
    recipes = {n: options_for(targets[n]).model_dump() for n in OPENVINO_TARGETS}
    assert recipes["openvino-cpu-avx2"]["overflow_fix"] == "enable"
    assert recipes["openvino-cpu-amx"]["nncf_device"] == "CPU_SPR"
    assert recipes["openvino-npu"]["dynamic_shapes"] is False
    assert recipes["openvino-cpu-w8"]["int8_mode"] == "weights"
    assert recipes["openvino-gpu"]["inference_precision"] == "f16"


def test_backend_is_available_and_versioned():
    mod = get_backend("openvino")
    assert mod.EXTRA == "openvino"
    v = mod.versions()
    assert v["openvino"].startswith("20") and "nncf" in v


@pytest.mark.parametrize("options, field", [
    ({"performance_hint": "FASTEST"}, "performance_hint"),
    ({"inference_precision": "int4"}, "inference_precision"),
    ({"streams": 2}, "streams"),
])
def test_bad_option_names_target_and_field(options, field):
    t = TargetSpec(name="my-ov", backend="openvino", options=options)
    with pytest.raises(TargetError, match=rf"target 'my-ov': options\.{field}"):
        options_for(t)
