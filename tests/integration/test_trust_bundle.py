"""A bundle is data. ``bench``, ``verify``, ``inspect`` and ``load`` never import or run anything a bundle
names, never open a file outside it, and refuse every tampered variant (the tamper table) with one line
naming the field. Bundles are built with the real pipeline from a tiny state_dict + ``--arch`` file."""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import edgefm
from edgefm.errors import EdgefmError
from tests.integration.tiny import ARCH_V1, compress_tiny, tiny_checkpoint, write_arch


def add_tokenizer(bundle: Path) -> None:
    """Give the bundle a tokenizer folder, hashed like the pipeline does for text models."""
    from edgefm.bundle import Manifest, finalize

    tok = bundle / "tokenizer"
    tok.mkdir()
    (tok / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"[PAD]": 0, "a": 1}}}))
    (tok / "vocab.txt").write_text("[PAD]\na\n")
    m = Manifest.model_validate_json((bundle / "manifest.json").read_text())
    m.spec.preprocessing.tokenizer = "tokenizer"
    finalize(bundle, m)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(bundle, checkpoint, arch file, marker): after compressing, the arch file is replaced by one that
    writes ``marker`` when imported, as a hostile bundle's named code would."""
    d = tmp_path_factory.mktemp("trust")
    ckpt, arch = tiny_checkpoint(d / "src")
    out = d / "bundle"
    compress_tiny(ckpt, arch, out, cache_dir=d / "cache")
    add_tokenizer(out)
    marker = d / "ARCH_WAS_RUN"
    write_arch(d / "src", f"open({str(marker)!r}, 'w').close()\n" + ARCH_V1)
    return out, ckpt, arch, marker


# --- tools that read a bundle --------------------------------------------------------------------------

def do_load(b: Path) -> str:
    edgefm.load(b)
    return ""


def do_verify(b: Path) -> str:
    from edgefm.verify import verify_bundle

    bad = [c.detail for r in verify_bundle(b) for c in r.checks if not c.ok]
    if bad:
        raise EdgefmError("; ".join(bad))
    return ""


def do_inspect(b: Path) -> str:
    from edgefm.cli import app

    res = CliRunner().invoke(app, ["inspect", str(b)])
    text = " ".join(res.output.replace("│", " ").split())
    if res.exit_code != 0:
        raise EdgefmError(text)
    assert "Traceback" not in res.output
    return text


def do_bench(b: Path, *extra: str) -> str:
    from edgefm.cli import app

    res = CliRunner().invoke(app, ["bench", str(b), "--runs", "3", "--warmup", "0", *extra])
    text = " ".join(res.output.split())
    if res.exit_code != 0:
        raise EdgefmError(text)
    return text


TOOLS = {"load": do_load, "verify": do_verify, "inspect": do_inspect, "bench": do_bench}


def test_reading_a_bundle_runs_no_code_it_names(base):
    """The manifest names an --arch file and a source path: none of the tools imports or runs it."""
    b, ckpt, arch, marker = base
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["config"]["arch"] == f"{arch}:make" and Path(manifest["source"]["path"]) == ckpt.resolve()
    for name, tool in TOOLS.items():
        text = tool(b)
        assert not marker.exists(), f"{name} ran the --arch code the bundle names"
    assert "pass --torch-source" in text  # bench says how to get the torch baseline, and skipped it
    # the torch baseline comes from the command line: here the user's own (harmless) arch file
    clean = b.parent / "mine.py"
    clean.write_text(ARCH_V1)
    text = do_bench(b, "--torch-source", str(ckpt), "--arch", f"{clean}:make")
    assert "torch-eager" in text and not marker.exists()


# --- the tamper table ----------------------------------------------------------------------------------

OUTSIDE_OPENED: list[str] = []
_WATCH: list[str] = []


def _audit(event, args):
    # a real record of every file Python opens (an audit hook, not a mock): none may be outside the bundle
    if event == "open" and _WATCH and isinstance(args[0], (str, Path)):
        p = os.path.realpath(str(args[0]))
        if any(p.startswith(w) for w in _WATCH):
            OUTSIDE_OPENED.append(p)


sys.addaudithook(_audit)


def _edit(b: Path, change) -> None:
    m = json.loads((b / "manifest.json").read_text())
    change(m)
    (b / "manifest.json").write_text(json.dumps(m))


def _sha(p: Path) -> str:
    from edgefm.bundle import sha256_file

    return sha256_file(p)


def _artifact(m) -> dict:
    return m["targets"]["onnxruntime-cpu"]


def _bomb(path: Path, rows: int) -> None:
    """An .npz whose in/x unpacks to rows × 8 float32 zeros (deflate squeezes zeros ~1000:1)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("in/x.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, 8)})
            chunk = bytes(1 << 24)
            left = rows * 8 * 4
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))


def tamper(b: Path, out: Path, variant: str) -> None:
    """Apply one tampering to bundle ``b`` (a fresh copy); outside files go to ``out``."""
    onnx_file = b / json.loads((b / "manifest.json").read_text())["targets"]["onnxruntime-cpu"]["artifact"]
    if variant == "artifact-absolute":
        _edit(b, lambda m: _artifact(m).update(artifact=str(out / "model.onnx")))
    elif variant == "artifact-dotdot":
        def change(m):
            _artifact(m).update(artifact="../outside/model.onnx")
            m["files"]["../outside/model.onnx"] = _sha(out / "model.onnx")
        _edit(b, change)
    elif variant == "artifact-symlink-out":
        (b / "link").symlink_to(out, target_is_directory=True)

        def change(m):
            _artifact(m).update(artifact="link/model.onnx")
            m["files"]["link/model.onnx"] = _sha(out / "model.onnx")
        _edit(b, change)
    elif variant == "artifact-unlisted":
        shutil.copyfile(out / "model.onnx", b / "other.onnx")
        _edit(b, lambda m: _artifact(m).update(artifact="other.onnx"))
    elif variant == "artifact-swapped":
        onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    elif variant == "manifest-symlink-out":
        shutil.copyfile(b / "manifest.json", out / "manifest.json")
        (b / "manifest.json").unlink()
        (b / "manifest.json").symlink_to(out / "manifest.json")
    elif variant == "tokenizer-swapped":
        (b / "tokenizer" / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"[PAD]": 0, "b": 1}}}))
    elif variant == "tokenizer-added":
        (b / "tokenizer" / "added_tokens.json").write_text('{"evil": 3}')
    elif variant == "tokenizer-absolute":
        shutil.copytree(b / "tokenizer", out / "tok", dirs_exist_ok=True)
        _edit(b, lambda m: m["spec"]["preprocessing"].update(tokenizer=str(out / "tok")))
    elif variant == "eval-swapped":
        with np.load(b / "eval.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays["labels"] = np.zeros(len(arrays["in/x"]), np.int64)
        np.savez(b / "eval.npz", **arrays)
    elif variant == "eval-bomb":  # 0.5 MB on disk, 512 MB unpacked, its sha256 updated in the manifest
        _bomb(b / "eval.npz", rows=16 << 20)

        def change(m):
            m["files"]["eval.npz"] = _sha(b / "eval.npz")
        _edit(b, change)
    elif variant == "eval-pickle":  # an object array (needs pickle), hash updated
        np.savez(b / "eval.npz", **{"in/x": np.array([{"a": 1}, None], dtype=object)}, allow_pickle=True)
        _edit(b, lambda m: m["files"].update({"eval.npz": _sha(b / "eval.npz")}))
    elif variant == "options-missing":  # a TensorRT target whose options lack the Q/DQ ONNX it runs
        def change(m):
            _artifact(m).update(backend="tensorrt", options={})
        _edit(b, change)
    elif variant == "files-dotdot":
        _edit(b, lambda m: m["files"].update({"../outside/model.onnx": _sha(out / "model.onnx")}))
    else:  # pragma: no cover
        raise AssertionError(variant)


# variant -> what the refusal says (regex on the one-line error); tools that never read the tampered part
# (load and inspect do not read eval data) are listed in NOT_READ: they must run and open nothing outside.
VARIANTS = {
    "artifact-absolute": r"targets\.onnxruntime-cpu\.artifact = '/.*must be a relative path inside the bundle",
    "artifact-dotdot": r"'\.\./outside/model\.onnx'.*no '\.\.'",
    "artifact-symlink-out": r"'link/model\.onnx'.*leads outside the bundle",
    "artifact-unlisted": r"artifact = 'other\.onnx' is not a listed, hashed file",
    "artifact-swapped": r"'fp32/model\.onnx' was modified after the bundle was written",
    "manifest-symlink-out": r"manifest\.json.*leads outside the bundle",
    "tokenizer-swapped": r"'tokenizer/tokenizer\.json' was modified after the bundle was written",
    "tokenizer-added": r"tokenizer file 'tokenizer/added_tokens\.json' is not listed",
    "tokenizer-absolute": r"spec\.preprocessing\.tokenizer = '/.*must be a relative path inside the bundle",
    "eval-swapped": r"'eval\.npz' was modified after the bundle was written",
    "eval-bomb": r"eval data .*eval\.npz: unpacks to 512 MiB from 0\.\d MiB on disk",
    "eval-pickle": r"eval\.npz: array 'in/x\.npy' holds Python objects",
    "options-missing": r"targets\.onnxruntime-cpu\.options is invalid for the tensorrt backend \(KeyError: 'onnx'\)",
    "files-dotdot": r"files\['\.\./outside/model\.onnx'\] = '\.\./outside/model\.onnx'.*no '\.\.'",
}
NOT_READ = {("eval-bomb", "load"), ("eval-bomb", "inspect"), ("eval-pickle", "load"), ("eval-pickle", "inspect"),
            ("options-missing", "inspect")}


@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tampered_bundle_is_refused(base, tmp_path, variant, tool):
    import re

    b0, _, _, marker = base
    marker.unlink(missing_ok=True)  # each case on its own (a failure elsewhere must not decide this one)
    b, out = tmp_path / "bundle", tmp_path / "outside"
    shutil.copytree(b0, b, symlinks=True)
    out.mkdir()
    shutil.copyfile(b0 / "fp32" / "model.onnx", out / "model.onnx")
    tamper(b, out, variant)
    OUTSIDE_OPENED.clear()
    _WATCH[:] = [os.path.realpath(out)]
    try:
        if (variant, tool) in NOT_READ:
            TOOLS[tool](b)  # that tool never reads the tampered part: it works, and opens nothing outside
        elif (variant, tool) == ("options-missing", "bench"):
            # the target fails in its worker with the one-line error; bench reports it (and, where every
            # target failed, exits non-zero: the bad-input helper's change)
            try:
                text = TOOLS[tool](b)
            except EdgefmError as e:
                text = str(e)
            assert re.search(VARIANTS[variant], " ".join(text.split())), text
        else:
            with pytest.raises(EdgefmError) as err:
                TOOLS[tool](b)
            msg = " ".join(str(err.value).split())
            assert re.search(VARIANTS[variant], msg), msg
            assert "Traceback" not in msg
    finally:
        _WATCH.clear()
    assert not OUTSIDE_OPENED, f"{tool} opened {OUTSIDE_OPENED}"
    assert not marker.exists()
