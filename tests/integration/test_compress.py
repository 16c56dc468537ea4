"""End to end through the CLI: checkpoint → bundle → edgefm.load, for CNN, RNN and Transformer on the
default ONNX Runtime target, and the errors a user can cause."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import edgefm
from edgefm import hostcaps
from edgefm.cli import app
from edgefm.errors import BundleError, CalibrationError
from tests.conftest import CALIB, ROOT

runner = CliRunner()


def cli(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output + (res.stderr if hasattr(res, "stderr") and res.stderr_bytes else "")


@pytest.fixture(scope="module")
def cnn_bundle(digits_cnn_ckpt, tmp_path_factory):
    ckpt, acc = digits_cnn_ckpt
    out = tmp_path_factory.mktemp("b") / "cnn"
    code, text = cli("compress", ckpt, "-o", out, "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8",
                     "--calib", CALIB / "digits_calib.npz", "--eval", CALIB / "digits_eval.npz")
    assert code == 0, text
    return out, acc


def test_cnn_int8_bundle_keeps_accuracy_and_shrinks(cnn_bundle):
    out, fp32_acc = cnn_bundle
    m = json.loads((out / "manifest.json").read_text())
    entry = m["targets"]["onnxruntime-cpu"]
    assert entry["precision"] == "int8" and m["spec"]["family"] == "cnn"
    assert [s["name"] for s in m["stages"]][:2] == ["load", "export"]
    assert (out / entry["artifact"]).stat().st_size < 0.5 * (out / "fp32/model.onnx").stat().st_size
    ev = np.load(CALIB / "digits_eval.npz")
    model = edgefm.load(out)
    top1 = float((model({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
    assert top1 >= fp32_acc - 0.01, (top1, fp32_acc)
    stored = np.load(out / "eval.npz")  # the (capped) eval set the manifest's figures were computed on
    pred = model({"x": stored["in/x"]})["logits"].argmax(1)
    assert entry["metrics"]["_accuracy"]["top1"] == pytest.approx(float((pred == stored["labels"]).mean()))


def test_predictor_any_batch_and_threads(cnn_bundle):
    out, _ = cnn_bundle
    model = edgefm.load(out)
    x = np.load(CALIB / "digits_eval.npz")["x"]
    full = model({"x": x})["logits"]
    for n in (1, 7):
        np.testing.assert_allclose(model({"x": x[:n]})["logits"], full[:n], rtol=1e-5, atol=1e-5)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: model({"x": x[i:i + 8]})["logits"], range(0, 64, 8)))
    np.testing.assert_allclose(np.concatenate(results), full[:64], rtol=1e-5, atol=1e-5)
    with pytest.raises(CalibrationError, match="axis 2 must be 8"):
        model({"x": np.zeros((1, 1, 9, 8), np.float32)})


def test_lstm_int8_bundle(digits_lstm_ckpt, tmp_path):
    ckpt, acc = digits_lstm_ckpt
    out = tmp_path / "lstm"
    code, text = cli("compress", ckpt, "-o", out, "--arch", "edgefm.zoo:digits_lstm", "--input", "x:1,8,8",
                     "--calib", CALIB / "digits_seq_calib.npz", "--eval", CALIB / "digits_seq_eval.npz")
    assert code == 0, text
    ev = np.load(CALIB / "digits_seq_eval.npz")
    model = edgefm.load(out)
    assert model.spec.family == "rnn"
    top1 = float((model({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
    assert top1 >= acc - 0.01, (top1, acc)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "onnxruntime-cpu/model.int8.onnx")).graph.node}
    assert "DynamicQuantizeLSTM" in ops  # the LSTM itself runs in int8, not only the classifier


def test_minilm_int8_matches_sentence_transformers(minilm_dir, tmp_path):
    out = tmp_path / "minilm"
    code, text = cli("compress", minilm_dir, "-o", out, "--calib", CALIB / "sentences.txt")
    assert code == 0, text
    model = edgefm.load(out)
    assert model.spec.family == "transformer" and model.output_names == ["sentence_embedding"]
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    sentences = ["The robot parks next to the charging dock.", "A quick lidar scan shows no obstacles ahead.",
                 "Quantization shrinks the model to a quarter of its size.", "Where is the nearest bakery?"]
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    feed = dict(tok(sentences, padding="max_length", truncation=True, max_length=128, return_tensors="np"))
    got = model({k: v for k, v in feed.items() if k in model.input_names})["sentence_embedding"]
    ref = SentenceTransformer(str(minilm_dir), device="cpu").encode(sentences)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.98, cos


@pytest.mark.avx2emu
def test_onnx_source_and_fp32(cnn_bundle, tmp_path):
    import onnxruntime as ort

    from edgefm.bundle import read_manifest
    from edgefm.config import Tolerances
    from edgefm.contract import judge, recorded

    src, _ = cnn_bundle
    out = tmp_path / "from_onnx"
    code, text = cli("compress", src / "fp32/model.onnx", "-o", out, "--quantize", "fp32",
                     "--calib", CALIB / "digits_calib.npz")
    assert code == 0, text
    x = np.load(CALIB / "digits_eval.npz")["x"]
    sess = ort.InferenceSession(str(src / "fp32/model.onnx"), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    fp32 = edgefm.load(out)({"x": x})["logits"]
    # an ONNX source at fp32 is that same model: its outputs, to float rounding (the export contract's max abs)
    np.testing.assert_allclose(fp32, ref, rtol=0, atol=Tolerances().export.max_abs)
    # the int8 bundle it came from meets its recorded contract against it (not an absolute figure from one CPU:
    # the logits moved by up to 1.55 on an AVX2-only CPU, where ONNX Runtime's u8s8 kernels differ)
    manifest = read_manifest(src)
    contract, _ = recorded(manifest, "onnxruntime-cpu")
    verdict = judge(contract, {"logits": ref}, {"logits": edgefm.load(src)({"x": x})["logits"]})
    assert verdict.ok, verdict.failures
    # the recipe followed the CPU it was built on, which the manifest names: 7-bit weights without VNNI
    host = hostcaps.detect()
    assert manifest.host["isa"] == host.isa and manifest.host["cpu_model"] == host.cpu_model
    (q,) = [s for s in manifest.stages if s.name == "quantize" and s.target == "onnxruntime-cpu"]
    assert q.settings["reduce_range"] is (host.arch == "x86_64" and not host.has("vnni"))


def test_inspect_and_targets(cnn_bundle):
    out, _ = cnn_bundle
    code, text = cli("inspect", out)
    assert code == 0 and "onnxruntime-cpu" in text and "all files match" in text
    # the bundle's manifest.json stands for its folder (any other file is refused: see bad_inputs_cases)
    assert cli("inspect", Path(out) / "manifest.json") == (code, text)
    code, text = cli("targets")
    assert code == 0 and "onnxruntime-cpu" in text
    import importlib.util

    # A Jetson target is not "here" without TensorRT: only its Q/DQ ONNX builds and runs (in ONNX Runtime).
    jetson = next(line for line in text.splitlines() if "jetson-orin-nano" in line)
    assert ("Q/DQ ONNX only" in jetson) == (importlib.util.find_spec("tensorrt") is None), jetson


def test_load_does_not_import_torch(cnn_bundle):
    out, _ = cnn_bundle
    code = ("import sys, numpy as np, edgefm; m = edgefm.load(sys.argv[1]); "
            "m({'x': np.zeros((2, 1, 8, 8), np.float32)}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, cwd=ROOT)


def test_bad_inputs_give_one_line_errors_and_write_nothing(digits_cnn_ckpt, cnn_bundle, tmp_path):
    ckpt, _ = digits_cnn_ckpt
    base = ["--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8"]
    out = tmp_path / "o"
    cases = [
        (["compress", tmp_path / "missing.pt", "-o", out, *base, "--calib", CALIB / "digits_calib.npz"],
         "no such file"),
        (["compress", ckpt, "-o", out, *base, "--calib", CALIB / "digits_seq_calib.npz"], "input 'x'"),
        (["compress", ckpt, "-o", out, *base], "--calib"),
        (["compress", ckpt, "-o", out, *base, "--calib", CALIB / "digits_calib.npz", "--target", "nope"],
         "unknown target"),
        (["compress", ckpt, "-o", cnn_bundle[0], *base, "--calib", CALIB / "digits_calib.npz"], "--force"),
        (["compress", ckpt, "-o", out, *base, "--calib", CALIB / "digits_calib.npz", "--keep-fp32", "Foo"],
         "--keep-fp32"),
    ]
    for args, needle in cases:
        code, text = cli(*args)
        assert code == 2, (args, text)
        assert needle in text and "Traceback" not in text, (needle, text)
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temp folders left behind either


def test_load_refuses_modified_bundle_and_unknown_target(cnn_bundle, tmp_path):
    import shutil

    src, _ = cnn_bundle
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    with pytest.raises(BundleError, match="no target 'openvino-cpu'"):
        edgefm.load(copy, target="openvino-cpu")
    art = copy / "onnxruntime-cpu" / "model.int8.onnx"
    art.write_bytes(art.read_bytes()[:-10])
    with pytest.raises(BundleError, match="modified"):
        edgefm.load(copy)


def test_dry_run_prints_resolved_config_and_writes_nothing(digits_cnn_ckpt, tmp_path):
    ckpt, _ = digits_cnn_ckpt
    code, text = cli("compress", ckpt, "-o", tmp_path / "o", "--arch", "edgefm.zoo:digits_cnn", "--input",
                     "x:1,1,8,8", "--calib", CALIB / "digits_calib.npz", "--quantize", "fp16", "--dry-run")
    assert code == 0, text
    plan = json.loads(text)
    assert plan["targets"]["onnxruntime-cpu"]["precision"] == "fp16"
    assert plan["config"]["arch"] == "edgefm.zoo:digits_cnn" and not (tmp_path / "o").exists()


def test_gru_bundle_and_export_cache(tmp_path):
    """A GRU compresses too (its Linear layers in int8), and a second run reuses the verified export."""
    import torch

    from edgefm import zoo

    torch.manual_seed(0)
    m = zoo.digits_gru()
    acc = zoo.train_digits(m, sequence=True, epochs=20)
    torch.save(m.state_dict(), tmp_path / "gru.pt")
    args = ["--arch", "edgefm.zoo:digits_gru", "--input", "x:1,8,8", "--calib", CALIB / "digits_seq_calib.npz",
            "--eval", CALIB / "digits_seq_eval.npz"]
    code, text = cli("compress", tmp_path / "gru.pt", "-o", tmp_path / "a", *args)
    assert code == 0, text
    ev = np.load(CALIB / "digits_seq_eval.npz")
    top1 = float((edgefm.load(tmp_path / "a")({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
    assert top1 >= acc - 0.01
    code, text = cli("compress", tmp_path / "gru.pt", "-o", tmp_path / "b", *args, "--quantize", "fp32")
    assert code == 0, text
    export = next(s for s in json.loads((tmp_path / "b/manifest.json").read_text())["stages"] if s["name"] == "export")
    assert any("reused the verified export" in n for n in export["notes"])


def test_verify_checks_fidelity_and_integrity(cnn_bundle, tmp_path):
    import shutil

    src, _ = cnn_bundle
    code, text = cli("verify", src)
    assert code == 0 and "fidelity" in text and "FAIL" not in text, text
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    (copy / "eval.npz").write_bytes(b"tampered")
    code, text = cli("verify", copy)
    assert code == 1 and "FAIL" in text and "modified" in text, text
