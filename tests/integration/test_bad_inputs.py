"""Every bad input in ``bad_inputs_cases.CASES`` through the real CLI: exit code 2, one ``error:`` line naming
the file or value and what is valid (printed intact, brackets included), no traceback, nothing left behind.
Mistakes that need no model are also run as a subprocess: fast, and without importing torch."""

import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from edgefm.cli import app
from tests.integration.bad_inputs_cases import CASES, ROOT, make_fixtures

runner = CliRunner()


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("bad-fixtures"))


def _tree(*dirs) -> set:
    return {os.path.join(r, f) for d in dirs for r, ds, fs in os.walk(d) for f in fs + ds}


def check_error(code: int, text: str, expect: list) -> str:
    """The one ``error:`` line, after asserting exit code 2, no traceback and every expected fragment."""
    assert code == 2, text
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, text
    for frag in expect:
        assert frag in errors[0], (frag, errors[0])
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, fx, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cache = os.environ["EDGEFM_CACHE_DIR"]
    before = _tree(work, fx["root"], cache)
    res = runner.invoke(app, [str(a) for a in case.argv(fx)])
    check_error(res.exit_code, res.output, case.expect)
    after = _tree(work, fx["root"], cache)
    # the export cache may gain a verified entry (<key>.onnx/.json), nothing else: no bundle, no staging folder
    new = {p for p in after - before if not (p.startswith(cache) and p.endswith((".onnx", ".json"))
                                             and not os.path.basename(p).startswith("."))}
    assert not new, new


def test_at_least_40_distinct_bad_inputs():
    assert len({c.id for c in CASES}) == len(CASES) >= 40


FAST = [c for c in CASES if not c.needs_model]


@pytest.mark.parametrize("case", [c for c in FAST if c.id in ("missing-source", "out-exists", "unknown-target",
                                                              "drop-inf", "input-huge", "recipe-unknown-field",
                                                              "quantize-int4", "calib-csv", "input-no-dims", "keep-fp32-empty",
                                                              "output-kind-bogus", "unknown-flag")],
                         ids=lambda c: c.id)
def test_no_model_mistakes_are_fast_and_import_no_torch(case, fx, tmp_path):
    """As a user runs it: a fresh interpreter. The limit is generous for a loaded 2-core machine; the real
    figures (with the load average) are in benchmarks/results/bad_inputs.md."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-X", "importtime", "-m", "edgefm.cli", *map(str, case.argv(fx))]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    text = "\n".join(ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")) + r.stdout
    check_error(r.returncode, text, case.expect)
    heavy = imported & {"torch", "onnx", "onnxruntime", "transformers", "openvino", "tensorflow"}
    assert not heavy, heavy
    assert seconds < 5, seconds  # importtime itself slows the run; ~0.5 s on a quiet machine
    assert not (tmp_path / "out").exists()


def test_error_line_keeps_brackets_that_look_like_markup(capsys):
    """rich would take [min, opt, max] or [/x] for markup tags and drop or choke on them."""
    from edgefm.cli import print_error

    print_error("profile x must be [min, opt, max] with min <= opt; got [/x] and [bold]\nsecond line")
    err = capsys.readouterr().err
    assert err.strip() == "error: profile x must be [min, opt, max] with min <= opt; got [/x] and [bold] | second line"


def _compress_argv(fx, out):
    return ["compress", fx["ckpt"], "-o", str(out), "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8",
            "--quantize", "fp32"]


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write: chmod 555, or (as root, who ignores modes) a read-only tmpfs."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs: {r.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", str(d)], check=True)


def test_out_in_read_only_folder(fx, read_only_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = read_only_dir / "bundle"
    res = runner.invoke(app, _compress_argv(fx, out))
    check_error(res.exit_code, res.output, [str(out), str(read_only_dir), "read-only" if os.geteuid() == 0
                                            else "not writable"])
    assert os.listdir(read_only_dir) == []


def test_disk_full_is_one_line_and_leaves_nothing(fx, tmp_path):
    """A 64 KiB file size limit (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG as on a full disk) is hit
    by the 220 KiB fp32 ONNX."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGEFM_CACHE_DIR": "0"}
    r = subprocess.run([sys.executable, "-m", "edgefm.cli", *_compress_argv(fx, "out")], cwd=tmp_path, env=env,
                       preexec_fn=limit, capture_output=True, text=True, timeout=600)
    line = check_error(r.returncode, r.stderr, ["cannot write the bundle", "out", "file size limit",
                                                "nothing was written"])
    assert line
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_bench_fails_when_no_target_ran(fx, tmp_path, monkeypatch):
    """A bundle whose only target's artifact is garbage (hashes updated, so integrity passes): bench measures
    the baselines, prints why the target failed, and exits 2 instead of 0."""
    import json

    from edgefm.bundle import sha256_file

    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, _compress_argv(fx, "b"))
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    art = "onnxruntime-cpu/model.onnx"  # its own file (an fp32 target may otherwise share the reference)
    (tmp_path / "b" / "onnxruntime-cpu").mkdir(exist_ok=True)
    m["targets"]["onnxruntime-cpu"].update(artifact=art, files=[art])
    (tmp_path / "b" / art).write_bytes(b"not an onnx model")
    m["files"][art] = sha256_file(tmp_path / "b" / art)
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(m))
    res = runner.invoke(app, ["bench", "b", "--no-baselines", "--runs", "3", "--warmup", "1"])
    check_error(res.exit_code, res.output, ["bundle b", "no target could be measured", "onnxruntime-cpu"])


def test_onnx_with_external_data_beside_it_compresses(tmp_path, monkeypatch):
    """The valid counterpart of onnx-external-outside: weights in model.onnx's folder travel into the bundle
    (a bare copy of the graph file left them behind and ONNX Runtime failed with a raw traceback)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import edgefm

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "model.onnx"), save_as_external_data=True, location="w.bin",
              size_threshold=0)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["compress", "m/model.onnx", "-o", "b", "--quantize", "fp32"])
    assert res.exit_code == 0, res.output
    feed = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(edgefm.load("b")({"x": feed})["y"], feed @ np.arange(16).reshape(4, 4), rtol=1e-6)
