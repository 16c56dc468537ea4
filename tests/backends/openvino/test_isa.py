"""OpenVINO's CPU kernels follow the CPU, and oneDNN's ISA cap (how tests imitate an AVX2-only CPU) holds."""

import os

import numpy as np
import pytest

from edgefm import hostcaps


@pytest.mark.avx2emu
def test_runtime_kernels_follow_the_cpu_or_the_onednn_cap():
    import openvino as ov
    import openvino.opset13 as op

    from edgefm.backends.openvino_run import compile_model, runtime_config

    x = op.parameter([1, 64], np.float32, name="x")
    model = ov.Model([op.relu(op.matmul(x, op.constant(np.ones((64, 64), np.float32)), False, False))], [x])
    # the target's default precision: f32 under a cap below bf16 (OpenVINO's own bf16 default fails to compile)
    compiled = compile_model(model, "CPU", runtime_config({}, "CPU"))
    kernels = {n.get_rt_info()["primitiveType"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops()}
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2":
        assert not any("avx512" in k or "amx" in k for k in kernels) and any("avx2" in k for k in kernels), kernels
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    elif hostcaps.detect().has("avx512f"):
        assert any("avx512" in k for k in kernels), kernels
    else:
        assert not any("avx512" in k for k in kernels), kernels
