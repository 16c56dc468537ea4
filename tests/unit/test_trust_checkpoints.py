"""Nothing edgefm reads can run code: a crafted ``.pt2`` (also renamed ``.pt``: the loader goes by content)
or TorchScript file whose unpickling would create a marker file is refused with one clear line, and the
marker never appears. A ``.pt2`` loads only with the explicit ``--trust-source``."""

from __future__ import annotations

import pickle
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgefm.errors import CheckpointError
from edgefm.models.load import load_checkpoint


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


class _Payload:
    """Unpickling this calls open(marker, "w"): the file appears iff the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _replace_member(src: Path, dst: Path, suffix: str, data: bytes) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        hit = False
        for info in zin.infolist():
            body = zin.read(info.filename)
            if info.filename.endswith(suffix):
                body, hit = data, True
            zout.writestr(info, body)
    assert hit, f"no member ending in {suffix} in {src}"


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    d = tmp_path_factory.mktemp("crafted")
    marker = d / "MARKER"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    net = _Net().eval()
    ep = torch.export.export(net, (torch.rand(2, 4),))
    torch.export.save(ep, str(d / "good.pt2"))
    # torch.export.load unpickles sample_inputs with weights_only=False when weights_only=True fails
    _replace_member(d / "good.pt2", d / "evil.pt2", "sample_inputs/model.pt", payload)
    shutil.copyfile(d / "evil.pt2", d / "evil_renamed.pt")
    torch.jit.save(torch.jit.script(net), str(d / "good_ts.pt"))
    ts_payload = pickle.dumps(_Payload(d / "MARKER_TS"), protocol=2)  # its own marker: TorchScript was safe already
    _replace_member(d / "good_ts.pt", d / "evil_ts_data.pt", "/data.pkl", ts_payload)
    _replace_member(d / "good_ts.pt", d / "evil_ts_constants.pt", "/constants.pkl", ts_payload)
    return d, marker


@pytest.mark.parametrize("name", ["evil.pt2", "evil_renamed.pt"])
def test_pt2_is_refused_without_trust_flag_and_runs_nothing(crafted, name):
    d, marker = crafted
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(d / name)
    assert not marker.exists(), "the crafted pickle was executed"
    assert re.search(r"torch\.export program.*can run arbitrary code.*--trust-source", str(err.value))
    # a genuine program still loads when the user says they trust it
    lm = load_checkpoint(d / "good.pt2", trust_source=True)
    assert lm.kind == "exported_program"
    assert not marker.exists()


@pytest.mark.parametrize("name", ["evil_ts_data.pt", "evil_ts_constants.pt"])
def test_torchscript_unpickler_runs_no_python(crafted, name):
    """torch.jit.load's C++ unpickler knows only torch's own types: a GLOBAL to a Python callable is an error."""
    d, _ = crafted
    with pytest.raises(CheckpointError, match=str(d / name)):
        load_checkpoint(d / name)
    assert not (d / "MARKER_TS").exists()
    assert load_checkpoint(d / "good_ts.pt", inputs=["x:batch,4:float32"]).kind == "torchscript"


def test_cli_names_the_trust_flag(crafted, tmp_path):
    from edgefm.cli import app

    d, marker = crafted
    res = CliRunner().invoke(app, ["compress", str(d / "evil_renamed.pt"), "-o", str(tmp_path / "out"),
                                   "--quantize", "fp32"])
    assert res.exit_code == 2, res.output
    assert "--trust-source" in res.output and "Traceback" not in res.output
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_trust_source_only_on_the_command_line(tmp_path):
    from edgefm.config import build_config
    from edgefm.errors import ConfigError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("trust_source: true\n")
    with pytest.raises(ConfigError, match="trust_source can only be given on the command line"):
        build_config(recipe, source=tmp_path, output=tmp_path / "o")
