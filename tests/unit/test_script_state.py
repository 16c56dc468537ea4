"""A TorchScript module that keeps its state in attributes (silero-vad's shipped ``.jit`` layout:
``forward(x, sr)`` carries the LSTM state and the audio context between calls) is refused in one line that
names what to export instead; ``--submodule`` exports its stateless inner model, which takes the state
explicitly, as a streaming model that reproduces the scripted module's own stream in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edgefm.cli import app
from edgefm.config import CompressConfig, build_config
from edgefm.errors import ConfigError, ExportError
from edgefm.models.load import load_checkpoint
from edgefm.pipeline import plan
from tests.models import streaming as S

runner = CliRunner()
SUB_INPUTS = [f"input:batch,{S.CONTEXT + S.CHUNK}:float32", f"state:2,batch,{S.HIDDEN}:float32"]


@pytest.fixture(scope="module")
def jit(tmp_path_factory):
    d = tmp_path_factory.mktemp("attrstate")
    S.attr_state_scripted().save(str(d / "vad.jit"))
    return d / "vad.jit"


def test_state_in_attributes_is_refused_in_one_line(jit):
    with pytest.raises(ExportError) as e:
        load_checkpoint(jit, None, ["x:batch,64", "sr:scalar:int64=16000"])
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg and "Traceback" not in msg
    assert "self._state" in msg and "self._context" in msg  # what it keeps
    assert "--submodule _model (forward(x, state) -> Tuple[Tensor, Tensor])" in msg  # what to do instead
    assert "--state STATE_IN:STATE_OUT" in msg


def test_submodule_is_checked_before_the_model_is_loaded(jit, tmp_path):
    with pytest.raises(ConfigError, match="not a dotted submodule path"):
        build_config(source=jit, output=tmp_path / "b", submodule="_model/x")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"\x08\x07")  # judged by its first byte: plan does not parse (or import) ONNX
    with pytest.raises(ConfigError, match="needs a TorchScript file or a state_dict with --arch, but .* ONNX file"):
        plan(CompressConfig(source=onnx_file, output=tmp_path / "b", submodule="_model", quantize="fp32"))
    with pytest.raises(ConfigError, match=r"'nope' is not a submodule of the model; its submodules are \['_model'\]"):
        load_checkpoint(jit, None, SUB_INPUTS, submodule="nope")


def test_submodule_exports_with_explicit_state_and_matches_the_scripted_stream(jit, tmp_path):
    streams = S.streams(16, 6)
    np.savez(tmp_path / "calib.npz", input=S.with_context(streams))
    out = tmp_path / "bundle"
    args = ["compress", str(jit), "-o", str(out), "--submodule", "_model", "--state", "state:output",
            "--calib", str(tmp_path / "calib.npz"), "--quantize", "fp32", "--target", "onnxruntime-cpu"]
    for i in SUB_INPUTS:
        args += ["--input", i]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["submodule"] == "_model"
    # the artifact in ONNX Runtime's own API, fed chunk by chunk with its state fed back, against the scripted
    # module's forward(x, sr) called on the new samples only (state and context kept inside it)
    sess = ort.InferenceSession(str(out / man["targets"]["onnxruntime-cpu"]["artifact"]),
                                providers=["CPUExecutionProvider"])
    ref = torch.jit.load(str(jit))
    batch = streams[:3]
    state = np.zeros((2, len(batch), S.HIDDEN), np.float32)
    ctx = S.with_context(batch)
    for k in range(batch.shape[1]):
        prob, state = sess.run(None, {"input": ctx[:, k], "state": state})
        with torch.no_grad():
            want = ref(torch.from_numpy(batch[:, k]), 16000).numpy()
        np.testing.assert_allclose(prob, want, atol=1e-5)


def test_exporter_failures_read_as_one_clean_line(tmp_path):
    """What both exporters say about such a module (reached here without the refusal), reduced to one line: the
    legacy exporter's message with the scripted line it points at, dynamo's exception summary; no colour codes,
    no fragments of the graph dump."""
    import warnings

    from edgefm.models import wrap
    from edgefm.stages.export import _why

    args = (torch.rand(2, S.CHUNK), torch.tensor(16000))
    module = wrap.wrap(S.attr_state_scripted(), ["x", "sr"], scalars={1: "int"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, args, check_trace=False)  # as load_checkpoint prepares TorchScript
        reasons = []
        for dynamo in (False, True):
            with pytest.raises(Exception) as e:
                if dynamo:
                    torch.onnx.export(traced, args, dynamo=True, report=False)
                else:
                    torch.onnx.export(traced, args, str(tmp_path / "m.onnx"), dynamo=False)
            reasons.append(_why(e.value))
    for r in reasons:
        assert "\n" not in r and "\x1b" not in r and "(type 'Tensor')" not in r and len(r) < 400, r
    assert reasons[0].startswith("SymbolicValueError: ONNX export does NOT support exporting bitwise Not")
    assert reasons[0].endswith("at streaming.py:%d: `if not len(self._context):`" % _line("if not len(self._context):"))
    assert reasons[1].startswith("TorchExportError: ValueError: Exporting a ScriptModule is not supported."), reasons[1]


def _line(code: str) -> int:
    return next(i for i, ln in enumerate(open(S.__file__).read().splitlines(), 1) if ln.strip() == code)


class _Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 4)

    def forward(self, x, state):
        if len(state):  # the state's first dimension: 2 once declared, so always taken
            x = x + state[0]
        if x.size(1) == 8:  # a fixed width, read through a 0-d Gather index (onnxscript reads only 1-D ones)
            x = x * 3
        y = self.lin(x)
        if y.shape[0] > 1000:  # the batch, dynamic, decides: must stay an If
            y = y * 2
        return y, (state * 0.5).sum(0)


def test_static_if_of_scripted_control_flow_is_folded_and_a_batch_dependent_one_kept(tmp_path):
    import onnx

    from edgefm.fidelity import Limits
    from edgefm.samples import Samples
    from edgefm.stages.export import export_onnx

    torch.manual_seed(0)
    torch.jit.script(_Branchy()).save(str(tmp_path / "b.pt"))
    loaded = load_checkpoint(tmp_path / "b.pt", None, ["x:batch,8", "state:2,batch,8:float32"])
    rng = np.random.default_rng(0)
    calib = Samples.for_spec(loaded.spec, {"x": rng.random((8, 8), dtype=np.float32),
                                           "state": rng.random((2, 8, 8), dtype=np.float32)})
    rec = export_onnx(loaded.module, loaded.spec, calib, tmp_path / "b.onnx", Limits(max_abs=1e-4))  # verified
    assert rec.settings["static_ifs_folded"] == 2
    assert any("2 of 3 If node(s)" in n and "the taken branches inlined, 1 left" in n for n in rec.notes), rec.notes
    assert [n.op_type for n in onnx.load(str(tmp_path / "b.onnx")).graph.node].count("If") == 1


def test_submodule_of_an_arch_model(tmp_path):
    torch.save(S.stream_lstm().state_dict(), tmp_path / "w.pt")
    loaded = load_checkpoint(tmp_path / "w.pt", "tests/models/streaming.py:stream_lstm", ["x:batch,16"],
                             submodule="front")
    assert loaded.spec.output_names == ["logits"] and any("submodule 'front' (Linear)" in n for n in loaded.notes)
