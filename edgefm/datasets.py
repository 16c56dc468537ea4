"""Calibration and evaluation data: ``.npz`` (one array per input, optional ``labels``), ``.npy`` (single-input
models), ``.txt`` (one sentence per line, tokenized with the checkpoint's tokenizer) and image folders (class
subfolders give labels). Everything is checked against the ``ModelSpec`` and read safely (no pickles).

No torch here; transformers is imported only for text, PIL only for images."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from edgefm.samples import Samples
from edgefm.errors import CalibrationError, ConfigError
from edgefm.models.spec import ModelSpec

log = logging.getLogger(__name__)

LABELS = "labels"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_FORMATS = ".npz (one array per input name), .npy (single-input models), .txt (one sentence per line) or a folder of images"


def check_data_path(path: Path, flag: str) -> None:
    """Cheap checks of a data path before any model is loaded: it exists and has a readable format."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"{flag} {path}: no such file or folder")
    if path.is_file() and path.suffix.lower() not in (".npz", ".npy", ".txt"):
        raise CalibrationError(f"{flag} {path}: unknown format '{path.suffix}'; use {_FORMATS}")


def load_samples(path: Path, spec: ModelSpec, *, tokenizer_dir: Optional[Path] = None, max_length: int = 128,
                 limit: Optional[int] = None, seed: int = 0) -> Samples:
    """Read ``path`` into ``Samples`` whose arrays fit ``spec`` (names, ranks, fixed dims, dtypes).

    ``limit`` keeps at most that many samples (a seeded random subset, in file order). Raises
    ``CalibrationError`` naming the file for anything missing, empty or misshapen."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"data {path}: no such file or folder")
    if path.is_dir():
        samples = _images(path, spec)
    elif path.suffix.lower() == ".npz":
        samples = _npz(path, spec)
    elif path.suffix.lower() == ".npy":
        samples = _npy(path, spec)
    elif path.suffix.lower() == ".txt":
        samples = _text(path, spec, tokenizer_dir, max_length)
    else:
        raise CalibrationError(f"data {path}: unknown format '{path.suffix}'; use {_FORMATS}")
    if len(samples) == 0:
        raise CalibrationError(f"data {path}: holds no samples")
    spec.check_feed(samples.inputs, f"data {path}")
    samples = Samples({i.name: np.ascontiguousarray(samples.inputs[i.name], dtype=i.dtype) for i in spec.inputs},
                      samples.labels)
    _check_finite(path, samples)
    _check_labels(path, samples, spec.num_classes)
    if limit is not None and len(samples) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(len(samples), size=limit, replace=False))
        samples = samples.take(idx)
    return samples


def split(samples: Samples, eval_fraction: float, seed: int = 0) -> tuple[Samples, Samples]:
    """(calib, eval): a seeded random ``eval_fraction`` of the samples held back for evaluation."""
    if not 0 < eval_fraction < 1:
        raise ConfigError(f"eval fraction {eval_fraction}: must be between 0 and 1 (exclusive)")
    n = len(samples)
    if n < 2:
        raise CalibrationError(f"cannot split {n} sample(s) into calibration and evaluation sets; give --eval or more data")
    n_eval = min(n - 1, max(1, int(round(n * eval_fraction))))
    idx = np.random.default_rng(seed).permutation(n)
    return samples.take(np.sort(idx[n_eval:])), samples.take(np.sort(idx[:n_eval]))


def save_npz(path: Path, samples: Samples) -> None:
    """Write ``samples`` as ``.npz`` (one array per input, plus ``labels``); ``load_samples`` reads it back."""
    arrays = dict(samples.inputs)
    if samples.labels is not None:
        arrays[LABELS] = samples.labels
    np.savez(Path(path), **arrays)


def _npz(path: Path, spec: ModelSpec) -> Samples:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CalibrationError(f"data {path}: not a readable .npz file ({e})") from None
    labels = arrays.pop(LABELS, None)
    if not arrays:
        raise CalibrationError(f"data {path}: holds no input arrays (the model's inputs are {spec.input_names})")
    if len(spec.inputs) == 1 and len(arrays) == 1 and spec.input_names[0] not in arrays:
        (old, arr), = arrays.items()
        log.info("data %s: using array '%s' as the model's only input '%s'", path, old, spec.input_names[0])
        arrays = {spec.input_names[0]: arr}
    return _with_labels(path, arrays, labels)


def _npy(path: Path, spec: ModelSpec) -> Samples:
    if len(spec.inputs) != 1:
        raise CalibrationError(f"data {path}: a .npy holds one array, but the model has inputs {spec.input_names}; "
                               f"use an .npz with one array per input")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CalibrationError(f"data {path}: not a readable .npy file ({e})") from None
    return _with_labels(path, {spec.input_names[0]: arr}, None)


def _check_finite(path: Path, samples: Samples) -> None:
    """NaN or ±Inf in float inputs would poison calibration ranges and every fidelity figure: name the input and
    the first sample that holds one (after the cast to the model's dtype, where float16 overflows show up)."""
    for name, arr in samples.inputs.items():
        if arr.dtype.kind != "f" or arr.size == 0:
            continue
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            first = arr[rows[0]]
            what = "NaN" if np.isnan(first).any() else "an infinite value"
            more = f" (and {len(rows) - 1} more samples)" if len(rows) > 1 else ""
            raise CalibrationError(f"data {path}: input '{name}' sample {int(rows[0])} holds {what}{more}; "
                                   f"inputs must be finite numbers in the model's dtype {arr.dtype}")


def _check_labels(path: Path, samples: Samples, num_classes: Optional[int]) -> None:
    """Labels are class indices: 0 ≤ label < the model's number of classes (when the model says it)."""
    labels = samples.labels
    if labels is None or labels.size == 0:
        return
    valid = f"0..{num_classes - 1} (the model has {num_classes} classes)" if num_classes else "0 or more"
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes if num_classes else False))
    if bad.size:
        i = int(bad[0])
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise CalibrationError(f"data {path}: label {int(labels[i])} of sample {i} is out of range{more}; labels "
                               f"must be class indices {valid}")


def _with_labels(path: Path, arrays: dict, labels: Optional[np.ndarray]) -> Samples:
    scalars = [k for k, v in arrays.items() if v.ndim == 0]
    if scalars:
        raise CalibrationError(f"data {path}: array '{scalars[0]}' is a 0-d scalar; every input array needs a first "
                               f"axis of samples (shape [N, ...])")
    counts = {k: v.shape[0] for k, v in arrays.items()}
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"data {path}: arrays have different sample counts (first axis): {counts}")
    n = next(iter(counts.values()))
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != n or labels.dtype.kind not in "iu":
            raise CalibrationError(f"data {path}: 'labels' must be {n} integers (one per sample), got shape "
                                   f"{list(labels.shape)} {labels.dtype}")
        labels = labels.astype(np.int64)
    return Samples(arrays, labels)


def _text(path: Path, spec: ModelSpec, tokenizer_dir: Optional[Path], max_length: int) -> Samples:
    tok_dir = tokenizer_dir or spec.preprocessing.tokenizer
    if spec.preprocessing.kind != "text" or not tok_dir:
        raise CalibrationError(f"data {path}: a text file, but the model ({spec.family}, inputs {spec.input_names}) "
                               f"has no tokenizer; use {_FORMATS}")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise CalibrationError(f"data {path}: not UTF-8 text ({e})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise CalibrationError(f"data {path}: no sentences (the file is empty or blank)")
    seq_axis = spec.inputs[0].shape[1] if len(spec.inputs[0].shape) > 1 else None
    if isinstance(seq_axis, int):
        max_length = seq_axis  # a model with a fixed sequence length takes exactly that
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # missing/broken tokenizer files: one line for people
        raise CalibrationError(f"data {path}: cannot load the tokenizer from {tok_dir} ({type(e).__name__})") from None
    enc = tok(lines, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    missing = [n for n in spec.input_names if n not in enc]
    if missing:
        raise CalibrationError(f"data {path}: the tokenizer gives {sorted(enc.keys())}, but the model also needs {missing}")
    return Samples({n: np.asarray(enc[n], dtype=np.int64) for n in spec.input_names})


def _images(folder: Path, spec: ModelSpec) -> Samples:
    inp = spec.inputs[0]
    if len(spec.inputs) != 1 or len(inp.shape) != 4 or np.dtype(inp.dtype).kind != "f":
        raise CalibrationError(f"data {folder}: an image folder, but the model's inputs are "
                               f"{[(i.name, i.shape, i.dtype) for i in spec.inputs]} (images need one NCHW float input)")
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and _image_files(d))
    loose = _image_files(folder)
    if classes and loose:
        raise CalibrationError(f"data {folder}: has both images and class subfolders; put every image in a class "
                               f"subfolder, or none")
    files = [(f, i) for i, d in enumerate(classes) for f in _image_files(d)] if classes else [(f, -1) for f in loose]
    if not files:
        raise CalibrationError(f"data {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or its subfolders")
    pre = spec.preprocessing
    size = pre.image_size or [d for d in inp.shape[2:] if isinstance(d, int)]
    if len(size) != 2:
        raise CalibrationError(f"data {folder}: the model's input {inp.name} {inp.shape} has no fixed height and width "
                               f"and its preprocessing names no image_size; declare --input {inp.name}:1,C,H,W")
    channels = inp.shape[1] if isinstance(inp.shape[1], int) else (1 if pre.grayscale else 3)
    x = np.stack([_read_image(f, channels, size) for f, _ in files])
    if pre.mean is not None:
        x = x - np.asarray(pre.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    if pre.std is not None:
        x = x / np.asarray(pre.std, dtype=np.float32).reshape(1, -1, 1, 1)
    labels = np.array([c for _, c in files], dtype=np.int64) if classes else None
    if classes:
        log.info("data %s: %d images in %d classes (label = index of the sorted folder name: %s)",
                 folder, len(files), len(classes), ", ".join(d.name for d in classes[:10]))
    return Samples({inp.name: x.astype(np.float32)}, labels)


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path, channels: int, size: list[int]) -> np.ndarray:
    """One image as a (C, H, W) float32 array in [0, 1], resized (bilinear) to ``size`` = [H, W]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise CalibrationError(f"data {path}: not a readable image ({e})") from None
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)
