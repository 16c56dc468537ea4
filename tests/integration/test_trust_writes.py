"""What edgefm writes: ``--force`` replaces only an edgefm bundle; one writer per OUT; SIGTERM cleans up like
Ctrl-C; a killed run's staging folder is reaped by the next run; a full disk is one line with nothing left;
the export cache is keyed on the model's code and weights, written atomically, and every hit is verified
against torch again."""

from __future__ import annotations

import errno
import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefm.bundle import Manifest, SourceInfo, finalize, staging
from edgefm.errors import BundleError
from edgefm.models.spec import InputSpec, ModelSpec
from tests.integration.tiny import ARCH_V1, compress_tiny, tiny_checkpoint, write_arch

ROOT = Path(__file__).resolve().parents[2]


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or ``path`` itself) with its sha256."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def cli(*args) -> tuple[int, str]:
    from edgefm.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, " ".join(res.output.split())


def _manifest() -> Manifest:
    return Manifest(edgefm_version="0", source=SourceInfo(path="x", kind="onnx"),
                    spec=ModelSpec(family="cnn", inputs=[InputSpec(name="x", shape=["batch", 2])]))


# --- 3. --force and concurrent writers --------------------------------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    ckpt, arch = tiny_checkpoint(tmp_path / "src")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).random((16, 8), dtype=np.float32))
    return ckpt, arch, calib


def _compress_args(ckpt, arch, calib, out):
    return ["compress", ckpt, "-o", out, "--arch", f"{arch}:make", "--input", "x:batch,8:float32",
            "--quantize", "fp32", "--calib", calib, "--force"]


def test_force_replaces_only_an_edgefm_bundle(tiny, tmp_path):
    ckpt, arch, calib = tiny
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "train.py").write_text("print('my work')\n")
    (project / "sub" / "data.csv").write_text("1,2\n")
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    fake = tmp_path / "fake_bundle"  # a manifest.json that is not edgefm's
    fake.mkdir()
    (fake / "manifest.json").write_text('{"name": "my web app"}')
    (fake / "index.html").write_text("<html/>")
    for out, why in ((project, "a folder that is not a valid edgefm bundle"), (calib, "a file"),
                     (plain, "a file"), (tmp_path / "src", "a folder that is not a valid edgefm bundle"),
                     (fake, "a folder that is not a valid edgefm bundle")):
        before = snapshot(out)
        code, text = cli(*_compress_args(ckpt, arch, calib, out))
        assert code == 2, text
        assert why in text and "--force only replaces an edgefm bundle, so nothing was touched" in text, text
        assert snapshot(out) == before
    # a real bundle is replaced ...
    bundle = tmp_path / "bundle"
    assert cli(*_compress_args(ckpt, arch, calib, bundle))[0] == 0
    first = json.loads((bundle / "manifest.json").read_text())["created"]
    time.sleep(1.1)
    assert cli(*_compress_args(ckpt, arch, calib, bundle))[0] == 0
    assert json.loads((bundle / "manifest.json").read_text())["created"] != first
    # ... but not when it holds an input of the run, or a file it does not list
    inside = bundle / "net.pt"
    inside.write_bytes(ckpt.read_bytes())
    before = snapshot(bundle)
    code, text = cli(*_compress_args(inside, arch, calib, bundle))
    assert code == 2 and "files no edgefm bundle lists (net.pt)" in text, text
    finalize(bundle, Manifest.model_validate_json((bundle / "manifest.json").read_text()))  # now it is listed
    before = snapshot(bundle)
    code, text = cli(*_compress_args(inside, arch, calib, bundle))
    assert code == 2 and f"the folder holding {inside}, an input of this run" in text, text
    assert snapshot(bundle) == before


def test_second_writer_of_one_out_fails_clearly(tmp_path):
    out = tmp_path / "b"
    with staging(out) as first:
        (first / "a.bin").write_bytes(b"first")
        with pytest.raises(BundleError, match=r"another edgefm run \(pid \d+\) is writing this bundle now"):
            with staging(out) as second:
                (second / "a.bin").write_bytes(b"second")
                finalize(second, _manifest())
        finalize(first, _manifest())
    assert (out / "a.bin").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


HOLD = """
import sys, time
from pathlib import Path
from edgefm.bundle import staging
with staging(Path(sys.argv[1])) as tmp:
    (tmp / "big.bin").write_bytes(b"0" * 1_000_000)
    print(tmp, flush=True)
    time.sleep(120)
"""


def _holder(out: Path) -> tuple[subprocess.Popen, Path]:
    """A real second process inside ``staging(out)``; returns it and its staging folder."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline().strip()
    assert line, "the holder process did not start"
    return proc, Path(line)


def test_second_process_is_refused_while_the_first_writes(tmp_path):
    out = tmp_path / "b"
    proc, tmp = _holder(out)
    try:
        with pytest.raises(BundleError, match=rf"another edgefm run \(pid {proc.pid}\)"):
            with staging(out):
                pass
    finally:
        proc.kill()
        proc.wait()


# --- 6. interruption ----------------------------------------------------------------------------------------

def test_sigterm_removes_the_staging_folder(tmp_path):
    out = tmp_path / "b"
    proc, tmp = _holder(out)
    assert tmp.is_dir() and (tmp / "big.bin").is_file()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert not tmp.exists() and not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_killed_runs_staging_is_reaped_by_the_next_run(tmp_path):
    out = tmp_path / "b"
    proc, dead = _holder(out)
    proc.kill()  # SIGKILL: no handler runs, the folder stays behind
    proc.wait()
    assert dead.is_dir()
    alive, live = _holder(tmp_path / "other")  # another run, still writing: its folder is not touched
    try:
        with staging(out) as tmp:
            (tmp / "a.bin").write_bytes(b"1")
            finalize(tmp, _manifest())
        assert not dead.exists()
        assert live.is_dir()
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".other.")) == ["b"]
    finally:
        alive.kill()
        alive.wait()


def test_disk_full_is_one_line_and_leaves_nothing(tiny, tmp_path, monkeypatch):
    """ENOSPC injected at the one write call that stores the eval data (a filesystem error, half a file
    written first, as a full disk does)."""
    import edgefm.pipeline as pipeline

    ckpt, arch, calib = tiny

    def full_disk(path, ev, reference):
        Path(path).write_bytes(b"PK\x03\x04 half a file")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline, "_save_eval", full_disk)
    out = tmp_path / "out" / "b"
    out.parent.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, text = cli(*_compress_args(ckpt, arch, calib, out))
    assert code == 2, text
    assert "no space left on the device while writing" in text and "nothing was written" in text, text
    assert "Traceback" not in text
    assert not out.exists() and list((tmp_path / "out").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --- 4. the export cache ------------------------------------------------------------------------------------

def _reference_vs_torch(bundle: Path, arch: Path) -> float:
    """Max abs difference between the bundle's fp32 ONNX and the model the arch file + checkpoint define now."""
    import onnxruntime as ort
    import torch

    from edgefm.models.load import load_checkpoint

    m = json.loads((bundle / "manifest.json").read_text())
    lm = load_checkpoint(Path(m["source"]["path"]), arch=f"{arch}:make", inputs=["x:batch,8:float32"])
    x = np.random.default_rng(1).random((5, 8), dtype=np.float32)
    got = ort.InferenceSession(str(bundle / "fp32/model.onnx")).run(None, {"x": x})[0]
    with torch.no_grad():
        want = lm.module(torch.from_numpy(x))[0].numpy()
    return float(np.abs(got - want).max())


def _export_stage(bundle: Path) -> dict:
    return next(s for s in json.loads((bundle / "manifest.json").read_text())["stages"] if s["name"] == "export")


def test_cache_follows_the_arch_code(tmp_path):
    ckpt, arch = tiny_checkpoint(tmp_path / "src")
    cache = tmp_path / "cache"
    compress_tiny(ckpt, arch, tmp_path / "b1", cache_dir=cache)
    compress_tiny(ckpt, arch, tmp_path / "b1again", cache_dir=cache)  # same code and weights: a (verified) hit
    # same checkpoint, new forward: a new model, so a new export
    write_arch(tmp_path / "src", ARCH_V1.replace("return self.fc(x)", "return self.fc(x) * 2.0 + 1.0"))
    compress_tiny(ckpt, arch, tmp_path / "b2", cache_dir=cache)
    assert _reference_vs_torch(tmp_path / "b2", arch) < 1e-5
    assert not any("cache" in n for n in _export_stage(tmp_path / "b2")["notes"])
    assert any("verified against torch again" in n for n in _export_stage(tmp_path / "b1again")["notes"])


def test_substituted_cache_entry_is_caught(tmp_path):
    import torch

    ckpt, arch = tiny_checkpoint(tmp_path / "src")
    cache = tmp_path / "cache"
    compress_tiny(ckpt, arch, tmp_path / "b1", cache_dir=cache)
    (onnx_file,) = (cache / "exports").glob("*.onnx")
    # another model with the same inputs and outputs, and a record that matches it
    other = torch.nn.Linear(8, 4)
    names = [o["name"] for o in json.loads((tmp_path / "b1" / "manifest.json").read_text())["spec"]["outputs"]]
    torch.onnx.export(other, (torch.rand(2, 8),), str(onnx_file), input_names=["x"], output_names=names,
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    rec_file = onnx_file.with_suffix(".json")
    rec = json.loads(rec_file.read_text())
    rec["output_sha256"] = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    rec_file.write_text(json.dumps(rec))
    compress_tiny(ckpt, arch, tmp_path / "b2", cache_dir=cache)
    assert _reference_vs_torch(tmp_path / "b2", arch) < 1e-5  # the substitute was not shipped
    assert not any("cache" in n for n in _export_stage(tmp_path / "b2")["notes"])


@pytest.mark.parametrize("damage", ["torn-json", "empty-json", "torn-onnx"])
def test_torn_cache_entry_is_a_miss(tmp_path, damage):
    ckpt, arch = tiny_checkpoint(tmp_path / "src")
    cache = tmp_path / "cache"
    compress_tiny(ckpt, arch, tmp_path / "b1", cache_dir=cache)
    (onnx_file,) = (cache / "exports").glob("*.onnx")
    rec_file = onnx_file.with_suffix(".json")
    if damage == "torn-json":
        rec_file.write_text(rec_file.read_text()[:40])
    elif damage == "empty-json":
        rec_file.write_text("")
    else:
        onnx_file.write_bytes(onnx_file.read_bytes()[:100])
    compress_tiny(ckpt, arch, tmp_path / "b2", cache_dir=cache)  # no traceback: a miss, exported again
    assert _reference_vs_torch(tmp_path / "b2", arch) < 1e-5
    json.loads(rec_file.read_text())  # and the entry is whole again
    assert not list((cache / "exports").glob(".*"))  # no temporary files left


def test_fingerprint_sees_code_structure_and_weights():
    import torch

    from edgefm.pipeline import model_fingerprint

    a = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    b = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    b[0].load_state_dict(a[0].state_dict())
    assert model_fingerprint(a) == model_fingerprint(a)
    assert model_fingerprint(a) != model_fingerprint(b)  # same weights, other activation
    c = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    assert model_fingerprint(a) != model_fingerprint(c)  # same structure, other weights


def test_sigterm_in_the_cli_says_interrupted(tmp_path):
    """The CLI turns SIGTERM into the Ctrl-C path: exit 130, 'interrupted', no staging folder left."""
    script = textwrap.dedent("""
        import sys, time
        from edgefm.cli import app
        def slow_finalize(tmp, manifest):  # the run is inside its staging folder when the signal comes
            print("STAGING", tmp, flush=True)
            time.sleep(120)
        import edgefm.pipeline
        edgefm.pipeline.finalize = slow_finalize
        sys.argv = ["edgefm"] + sys.argv[1:]
        app()
    """)
    ckpt, arch = tiny_checkpoint(tmp_path / "src")
    out = tmp_path / "out" / "b"
    proc = subprocess.Popen([sys.executable, "-c", script, "compress", str(ckpt), "-o", str(out), "--arch",
                             f"{arch}:make", "--input", "x:batch,8:float32", "--quantize", "fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "EDGEFM_CACHE_DIR": "0"})
    tmp = None
    for line in proc.stdout:
        if line.startswith("STAGING"):
            tmp = Path(line.split(" ", 1)[1].strip())
            break
    assert tmp is not None and tmp.is_dir(), proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode == 130 and "interrupted" in err, err
    assert not tmp.exists() and list((tmp_path / "out").iterdir()) == []


def test_reaper_restores_a_bundle_moved_aside_by_a_killed_run(tmp_path):
    """Killed between moving the old bundle aside and putting the new one in place: the old one comes back."""
    from edgefm.bundle import reap_stale

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)
    aside = tmp_path / f".b.edgefm-old-{pid}-12345-abcd1234"
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")
    staged = tmp_path / f".b.edgefm-staging-{pid}-12345-efgh5678"
    staged.mkdir()
    reap_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and (tmp_path / "b" / "manifest.json").is_file()
