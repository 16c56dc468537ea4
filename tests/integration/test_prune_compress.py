"""``edgefm compress --prune … --distill --train-data …`` end to end: prune → distill → export → int8 →
bundle, with params, MACs and accuracy recorded after each stage, and the bundle running in
``edgefm.load``; plus the errors a user can cause with these flags."""

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import edgefm
from edgefm.cli import app
from tests.conftest import CALIB

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
runner = CliRunner()


def cli(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def small_ckpts(tmp_path_factory):
    """Digits CNN and LSTM state_dicts (short training, one thread) and the training split as .npz."""
    from edgefm import zoo

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    cnn = zoo.digits_cnn()
    acc_cnn = zoo.train_digits(cnn, epochs=6)
    torch.save(cnn.state_dict(), d / "cnn.pt")
    torch.manual_seed(0)
    lstm = zoo.digits_lstm()
    acc_lstm = zoo.train_digits(lstm, sequence=True, epochs=20)
    torch.save(lstm.state_dict(), d / "lstm.pt")
    xtr, ytr, _, _ = zoo.digits_data()
    np.savez(d / "train.npz", x=xtr, labels=ytr)
    np.savez(d / "train_seq_unlabeled.npz", x=xtr[:, 0])
    torch.set_num_threads(old)
    return d, acc_cnn, acc_lstm


def _stages(out):
    m = json.loads((out / "manifest.json").read_text())
    return m, {s["name"]: s for s in m["stages"]}


def test_cnn_prune_distill_int8_bundle(small_ckpts, tmp_path):
    d, acc, _ = small_ckpts
    out = tmp_path / "b"
    recipe = tmp_path / "auto.yaml"  # per-layer ratios chosen by the sensitivity analysis to meet the MACs budget
    recipe.write_text("prune: {auto: true}\n")
    code, text = cli("compress", d / "cnn.pt", "-o", out, "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8",
                     "--calib", CALIB / "digits_calib.npz", "--eval", CALIB / "digits_eval.npz", "--recipe", recipe,
                     "--prune-macs", "0.5", "--distill", "--distill-epochs", "10", "--train-data", d / "train.npz")
    assert code == 0, text
    m, st = _stages(out)
    assert set(st["prune"]["metrics"]["sensitivity"]["score"]) == {"features.0", "features.3", "features.7"}
    assert (out / "prune/sensitivity.png").stat().st_size > 5000 and "prune/sensitivity.md" in m["files"]
    assert [s["name"] for s in m["stages"]][:4] == ["load", "prune", "distill", "export"]
    p, dd = st["prune"]["metrics"], st["distill"]["metrics"]
    assert p["macs_after"] <= 0.5 * p["macs_before"] and p["params_after"] < p["params_before"]
    assert dd["macs"] == p["macs_after"] and dd["params"] == p["params_after"]
    assert p["after"]["top1"] < p["before"]["top1"] - 0.1  # pruning alone costs accuracy …
    assert dd["eval"]["top1"] >= p["before"]["top1"] - 0.02  # … distillation wins it back (eval set)
    assert m["config"]["prune"]["macs_target"] == 0.5 and m["config"]["prune"]["auto"] is True
    assert m["config"]["distill"]["epochs"] == 10
    ev = np.load(CALIB / "digits_eval.npz")
    model = edgefm.load(out)
    top1 = float((model({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
    assert top1 >= acc - 0.025, (top1, acc)  # int8, pruned to half the MACs, vs the unpruned fp32 model
    import onnx

    convs = [n for n in onnx.load(str(out / "fp32/model.onnx")).graph.initializer if len(n.dims) == 4]
    assert all(c.dims[0] % 8 == 0 for c in convs) and max(c.dims[0] for c in convs) < 64


def test_lstm_prune_distill_on_unlabeled_data(small_ckpts, tmp_path):
    d, _, acc = small_ckpts
    out = tmp_path / "l"
    recipe = tmp_path / "recipe.yaml"  # the recipe sets what has no flag; flags refine its sections
    recipe.write_text("prune: {ratio: 0.25, round_to: 8}\ndistill: {lr: 0.003, epochs: 5, patience: 4}\n")
    code, text = cli("compress", d / "lstm.pt", "-o", out, "--arch", "edgefm.zoo:digits_lstm", "--input", "x:1,8,8",
                     "--calib", CALIB / "digits_seq_calib.npz", "--eval", CALIB / "digits_seq_eval.npz",
                     "--recipe", recipe, "--prune", "0.5", "--distill-epochs", "20",
                     "--train-data", d / "train_seq_unlabeled.npz")
    assert code == 0, text
    m, st = _stages(out)
    assert m["config"]["prune"]["ratio"] == 0.5 and m["config"]["distill"]["lr"] == 0.003
    assert m["config"]["distill"]["epochs"] == 20
    assert st["distill"]["metrics"]["labels"] is False
    import onnx

    g = onnx.load(str(out / "fp32/model.onnx")).graph
    lstm = [n for n in g.node if n.op_type == "LSTM"]
    assert lstm and all(a.i == 32 for n in lstm for a in n.attribute if a.name == "hidden_size")
    ev = np.load(CALIB / "digits_seq_eval.npz")
    top1 = float((edgefm.load(out)({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean())
    # from unlabeled data only, 64 → 32 units, int8, a short budget: the student follows the teacher closely
    assert st["distill"]["metrics"]["eval"]["top1_agreement"] >= 0.93
    assert top1 >= acc - 0.05, (top1, acc)


def test_prune_flag_errors(small_ckpts, tmp_path):
    d, _, _ = small_ckpts
    base = ("compress", d / "cnn.pt", "--arch", "edgefm.zoo:digits_cnn", "--input", "x:1,1,8,8",
            "--calib", CALIB / "digits_calib.npz")
    code, text = cli(*base, "-o", tmp_path / "a", "--distill")
    assert code == 2 and "--distill needs --prune" in text
    code, text = cli(*base, "-o", tmp_path / "b", "--prune", "0.5", "--distill", "--train-data", tmp_path / "nope.npz")
    assert code == 2 and "--train-data" in text and "nope.npz" in text
    code, text = cli(*base, "-o", tmp_path / "c", "--prune", "1.5")
    assert code == 2 and "prune.ratio" in text
    code, text = cli(*base, "-o", tmp_path / "d", "--prune-layers", "2")
    assert code == 2 and "Transformer" in text
    assert not any((tmp_path / n).exists() for n in "abcd")  # nothing half-written


@pytest.mark.slow
def test_minilm_layer_drop_distill_int8_from_the_cli(minilm_dir, tmp_path):
    """The real all-MiniLM-L6-v2 through ``edgefm compress --prune-layers 3 --distill --train-data text``: the
    bundle's model has 3 layers, the manifest records params and fidelity per stage, and the int8 target
    loads and runs. (A few distillation steps only: the benchmark, not this test, shows the quality.)"""
    from typer.testing import CliRunner

    from edgefm.cli import app

    subjects = ["The robot", "A small drone", "The delivery van", "My neighbour", "The camera on the arm"]
    verbs = ["stops at", "drives towards", "looks for", "waits near", "reports"]
    things = ["the red door.", "a charging station.", "the loading dock.", "an empty shelf.", "the exit sign."]
    train = tmp_path / "train.txt"
    train.write_text("\n".join(f"{s} {v} {t}" for s in subjects for v in verbs for t in things) + "\n")
    out = tmp_path / "minilm3"
    res = CliRunner().invoke(app, ["compress", str(minilm_dir), "-o", str(out), "--calib",
                                   str(CALIB / "sentences.txt"), "--max-length", "32", "--prune-layers", "3",
                                   "--distill", "--distill-epochs", "1", "--train-data", str(train)])
    assert res.exit_code == 0, res.output
    m, st = _stages(out)
    import onnx

    graph = onnx.load(str(out / "fp32" / "model.onnx"), load_external_data=False).graph
    attention = {re.search(r"layer\.(\d+)/attention", n.name).group(1) for n in graph.node
                 if re.search(r"layer\.(\d+)/attention", n.name)}
    assert len(attention) == 3, attention  # three encoder layers left
    pr, di = st["prune"], st["distill"]
    assert pr["metrics"]["params_after"] < 0.8 * pr["metrics"]["params_before"]
    assert any("kept layers" in n for n in pr["notes"]), pr["notes"]
    assert di["metrics"]["after"]["cosine"] >= di["metrics"]["before"]["cosine"]  # the best weights are kept
    entry = m["targets"]["onnxruntime-cpu"]
    assert entry["precision"] == "int8"
    import edgefm

    model = edgefm.load(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    feed = dict(tok(["Where is the charging dock?"], padding="max_length", truncation=True, max_length=32,
                    return_tensors="np"))
    emb = model({k: v for k, v in feed.items() if k in model.input_names})["sentence_embedding"]
    assert emb.shape == (1, 384) and np.isfinite(emb).all()
