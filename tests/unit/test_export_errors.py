"""An exporter that fails gives one ExportError listing each exporter's reason (not a crash of the error path)."""

import numpy as np
import pytest

from edgefm.errors import ExportError
from edgefm.fidelity import Limits
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec
from edgefm.samples import Samples


def test_every_exporter_failing_is_one_export_error(tmp_path):
    import torch

    class Unexportable(torch.nn.Module):
        def forward(self, x):
            if torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
                raise RuntimeError("this model refuses to be exported")
            return x * 2

    from edgefm.stages.export import export_onnx

    spec = ModelSpec(family="other", inputs=[InputSpec(name="x", shape=["batch", 4])],
                     outputs=[OutputSpec(name="y")])
    calib = Samples({"x": np.random.default_rng(0).random((8, 4), dtype=np.float32)})
    with pytest.raises(ExportError, match="refuses to be exported") as e:
        export_onnx(Unexportable().eval(), spec, calib, tmp_path / "m.onnx", Limits(max_abs=1e-3))
    assert "Traceback" not in str(e.value) and "NameError" not in str(e.value)
    assert not (tmp_path / "m.onnx").exists()
