"""Task data for the real-model suite, made offline and deterministically: speech from Debian's espeak-ng
(different voices = different speakers), tones with a known f0, silence and noise, photos bundled with
scikit-image, and the committed sentences. Each builder returns plain NumPy arrays (and the truth the task
metric needs); ``benchmarks/real_models.py`` writes them as the ``.npz`` files edgefm reads."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

SR = 16000
SENTENCES = [
    "The robot arm paused before lifting the red cube off the belt.",
    "Please close the window, it is getting cold in here.",
    "Why does the lidar lose track of glass doors?",
    "Water boils at a lower temperature on a mountain.",
    "I left my keys on the kitchen table again.",
    "The train to the airport leaves every twenty minutes.",
    "She measured the voltage twice before touching the wire.",
    "A quiet forest at dawn is full of small sounds.",
]
# espeak-ng voices and variants that sound like different people
SPEAKERS = ["en-us+m1", "en-us+f2", "en+m3", "en+f4", "en-gb-scotland+m2", "en-029+f1", "en-gb-x-rp+m4",
            "en-us+f5"]


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng as float32 at 16 kHz (espeak writes 22050 Hz; resampled here)."""
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                       check=True, capture_output=True)
        with wave.open(str(wav)) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    g = np.gcd(rate, SR)
    return resample_poly(x, SR // g, rate // g).astype(np.float32)


# ---------------------------------------------------------------- VAD: speech / silence / noise stream

def vad_stream(seed: int = 0, n_utt: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(audio, truth per 512-sample chunk): utterances separated by near-silence and by noise bursts
    (white and brown). A chunk is speech when it lies inside an utterance and its energy shows voice."""
    rng = np.random.default_rng(seed)
    parts, truth = [], []
    for i in range(n_utt):
        gap = rng.uniform(0.4, 1.2)
        n = int(gap * SR)
        kind = i % 3
        if kind == 0:
            g = rng.standard_normal(n) * 0.001
        elif kind == 1:
            g = rng.standard_normal(n) * rng.uniform(0.02, 0.05)
        else:
            g = np.cumsum(rng.standard_normal(n)) * 0.002
            g -= np.convolve(g, np.ones(801) / 801, mode="same")
        parts.append(g.astype(np.float32))
        truth.append(np.zeros(n, bool))
        s = speak(SENTENCES[i % len(SENTENCES)], SPEAKERS[i % len(SPEAKERS)]) * rng.uniform(0.5, 0.9)
        s = s + rng.standard_normal(len(s)).astype(np.float32) * 0.002
        parts.append(s.astype(np.float32))
        truth.append(np.ones(len(s), bool))
    audio = np.concatenate(parts)
    is_utt = np.concatenate(truth)
    n_chunks = len(audio) // 512
    audio = audio[: n_chunks * 512]
    frames = audio.reshape(n_chunks, 512)
    rms = np.sqrt((frames ** 2).mean(1))
    utt = is_utt[: n_chunks * 512].reshape(n_chunks, 512).mean(1) > 0.5
    return audio, utt & (rms > 0.01)


def vad_chunks(audio: np.ndarray, context: int = 64) -> np.ndarray:
    """The model's per-call input: each 512-sample chunk with the previous 64 samples in front."""
    n = len(audio) // 512
    padded = np.concatenate([np.zeros(context, np.float32), audio[: n * 512]])
    return np.stack([padded[i * 512: i * 512 + 512 + context] for i in range(n)]).astype(np.float32)


# ---------------------------------------------------------------- pitch: tones with a known f0

def crepe_frames(seed: int = 0, n_tones: int = 48, frames_per_tone: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N, 1024) normalized as torchcrepe does, true f0 in Hz (N,)): harmonic tones with random
    f0 in 60–900 Hz, random harmonic weights and phases, light vibrato and noise."""
    rng = np.random.default_rng(seed)
    xs, f0s = [], []
    t = np.arange(1024 * frames_per_tone) / SR
    for _ in range(n_tones):
        f0 = float(np.exp(rng.uniform(np.log(60), np.log(900))))
        vib = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
        phase = 2 * np.pi * np.cumsum(f0 * vib) / SR
        y = np.zeros_like(t)
        for h in range(1, 8):
            if f0 * h < SR / 2:
                y += rng.uniform(0.2, 1.0) / h * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
        y += rng.standard_normal(len(t)) * 0.01
        for k in range(frames_per_tone):
            fr = y[k * 1024:(k + 1) * 1024]
            xs.append(fr)
            mid = k * 1024 + 512
            f0s.append(f0 * vib[mid])
    x = np.stack(xs).astype(np.float32)
    x = x - x.mean(1, keepdims=True)
    x = x / np.maximum(x.std(1, keepdims=True), 1e-10)
    return x.astype(np.float32), np.asarray(f0s, np.float64)


def crepe_decode(probs: np.ndarray) -> np.ndarray:
    """torchcrepe's ``weighted_argmax`` decoder: f0 in Hz from (N, 360) bin probabilities."""
    cents = 1997.3794084376191 + 20 * np.arange(360)
    best = probs.argmax(1)
    out = np.empty(len(probs))
    for i, b in enumerate(best):
        lo, hi = max(0, b - 4), min(360, b + 5)
        w = probs[i, lo:hi]
        out[i] = (w * cents[lo:hi]).sum() / max(w.sum(), 1e-12)
    return 10 * 2 ** (out / 1200)


def cents_error(f_hz: np.ndarray, ref_hz: np.ndarray) -> np.ndarray:
    return np.abs(1200 * np.log2(f_hz / ref_hz))


# ---------------------------------------------------------------- speakers: 40-band mel partials

def _mel_filters(n_fft: int = 400, n_mels: int = 40) -> np.ndarray:
    """librosa's default (Slaney-scale, Slaney-normalized) mel filterbank, written out with NumPy."""
    def hz_to_mel(f):
        f = np.asarray(f, float)
        mel = f / (200.0 / 3)
        log_t = f >= 1000
        return np.where(log_t, 15 + np.log(np.maximum(f, 1e-10) / 1000) / (np.log(6.4) / 27), mel)

    def mel_to_hz(m):
        m = np.asarray(m, float)
        f = m * (200.0 / 3)
        return np.where(m >= 15, 1000 * np.exp((np.log(6.4) / 27) * (m - 15)), f)

    fft_f = np.linspace(0, SR / 2, n_fft // 2 + 1)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(0), hz_to_mel(SR / 2), n_mels + 2))
    fdiff, ramps = np.diff(mel_f), mel_f[:, None] - fft_f[None]
    w = np.maximum(0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]))
    return (w * (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]).astype(np.float32)


def mel_partials(wav: np.ndarray, frames: int = 160) -> np.ndarray:
    """resemblyzer's input: 40-band mel power frames (25 ms Hann windows, 10 ms hop), cut into
    ``frames``-long partials with 50 % overlap: (P, frames, 40)."""
    wav = wav / max(np.sqrt((wav ** 2).mean()), 1e-6) * 10 ** (-30 / 20)  # resemblyzer's -30 dBFS
    n_fft, hop = 400, 160
    pad = np.pad(wav, n_fft // 2, mode="reflect")
    n = 1 + (len(pad) - n_fft) // hop
    idx = np.arange(n_fft)[None] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(pad[idx] * np.hanning(n_fft + 1)[:-1], axis=1)) ** 2
    mel = (spec @ _mel_filters().T).astype(np.float32)
    starts = range(0, max(1, len(mel) - frames + 1), frames // 2)
    out = [mel[s:s + frames] for s in starts if s + frames <= len(mel)]
    return np.stack(out) if out else np.zeros((0, frames, 40), np.float32)


def speaker_set(sentences_per_speaker: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(mels (N, 160, 40), speaker id (N,)): every voice in ``SPEAKERS`` reads the same sentences."""
    xs, ys = [], []
    for sid, voice in enumerate(SPEAKERS):
        for j in range(sentences_per_speaker):
            p = mel_partials(speak(SENTENCES[j], voice))[:2]
            xs.append(p)
            ys += [sid] * len(p)
    return np.concatenate(xs).astype(np.float32), np.asarray(ys, np.int64)


def nn_identity(emb: np.ndarray, ids: np.ndarray) -> float:
    """Leave-one-out nearest-neighbour identification accuracy under cosine similarity."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return float((ids[sim.argmax(1)] == ids).mean())


# ---------------------------------------------------------------- photos

_PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
           "retina.jpg", "logo.png", "motorcycle_left.png", "color.png", "camera.png", "page.png", "moon.png",
           "coins.png", "text.png", "brick.png", "grass.png", "gravel.png"]


def photos() -> list[np.ndarray]:
    """The photos inside scikit-image's wheel (read from its data folder: never its downloader) as uint8
    (H, W, 3)."""
    import skimage
    from PIL import Image

    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in _PHOTOS:
        with Image.open(folder / name) as im:
            out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return out


def lfw_faces() -> np.ndarray:
    """scikit-image's bundled Labeled Faces in the Wild subset: 100 grayscale 25x25 faces (the file's first
    100; the other 100 are non-faces), as uint8 (100, 25, 25, 3)."""
    import skimage

    x = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")[:100]
    return np.repeat((np.clip(x, 0, 1) * 255).astype(np.uint8)[..., None], 3, -1)


def _resize(im: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BILINEAR))


def letterbox(im: np.ndarray, size: int = 320) -> np.ndarray:
    """nudenet's preprocessing: pad to a square (bottom/right), resize to ``size``, RGB /255, CHW."""
    h, w = im.shape[:2]
    m = max(h, w)
    sq = np.zeros((m, m, 3), np.uint8)
    sq[:h, :w] = im
    return (_resize(sq, size, size).astype(np.float32) / 255.0).transpose(2, 0, 1)


def detector_images(seed: int = 0, n: int = 48, size: int = 320) -> np.ndarray:
    """(N, 3, size, size): the photos, grids of faces, and seeded crops and mirror images of the photos."""
    rng = np.random.default_rng(seed)
    ims, lfw = photos(), lfw_faces()
    out = [letterbox(im, size) for im in ims]
    for _ in range(n // 3):  # group photos: a grid of LFW faces (grayscale, 25 px, upscaled)
        g = int(rng.integers(2, 5))
        tile = size // g
        sheet = np.full((size, size, 3), 255, np.uint8)
        for r in range(g):
            for c in range(g):
                sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = _resize(lfw[rng.integers(len(lfw))], tile, tile)
        out.append(sheet.astype(np.float32).transpose(2, 0, 1) / 255.0)
    while len(out) < n:
        im = ims[rng.integers(len(ims))]
        h, w = im.shape[:2]
        ch, cw = int(h * rng.uniform(0.55, 0.95)), int(w * rng.uniform(0.55, 0.95))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = im[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(letterbox(np.ascontiguousarray(crop), size))
    return np.stack(out[:n]).astype(np.float32)


def face_crops(seed: int = 0, n: int = 192, size: int = 48, with_truth: bool = False):
    """(N, 3, size, size) MTCNN-normalized crops ((x - 127.5) / 128): half faces (scikit-image's LFW subset,
    and jittered boxes around the astronaut's face), half random boxes in the bundled photos (not faces).
    With ``with_truth``, also the (N,) face/not-face truth."""
    rng = np.random.default_rng(seed)
    ims, lfw = photos(), lfw_faces()
    astronaut = ims[0]
    out, truth = [], []
    for i in range(n):
        if i % 2 == 0 and i % 4 != 0:  # an LFW face
            crop = lfw[rng.integers(len(lfw))]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
        else:
            if i % 2 == 0:  # the astronaut's face, jittered (its box by eye: x 170, y 40, side 100)
                im, s = astronaut, int(100 * rng.uniform(0.85, 1.2))
                x, y = int(170 + rng.uniform(-0.1, 0.1) * 100), int(40 + rng.uniform(-0.1, 0.1) * 100)
            else:
                im = ims[1 + rng.integers(len(ims) - 1)]
                s = int(rng.uniform(0.1, 0.5) * min(im.shape[:2]))
                x, y = rng.integers(0, im.shape[1] - s), rng.integers(0, im.shape[0] - s)
            h, w = im.shape[:2]
            x, y = int(np.clip(x, 0, w - s)), int(np.clip(y, 0, h - s))
            crop = im[y:y + s, x:x + s]
        crop = _resize(np.ascontiguousarray(crop), size, size).astype(np.float32)
        out.append(((crop - 127.5) / 128.0).transpose(2, 0, 1))
        truth.append(i % 2 == 0)
    x = np.stack(out).astype(np.float32)
    return (x, np.asarray(truth)) if with_truth else x


# ---------------------------------------------------------------- detections (packed YOLOv8 output)

def yolo_detections(packed: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[np.ndarray]:
    """Per image, rows (x1, y1, x2, y2, score, class) from a packed (N, 4 + C, A) YOLOv8 output, after
    a confidence threshold and per-class NMS (as nudenet does)."""
    out = []
    for p in packed:
        p = p.T
        cls, score = p[:, 4:].argmax(1), p[:, 4:].max(1)
        keep = score >= conf
        b, s, c = p[keep, :4], score[keep], cls[keep]
        boxes = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2,
                          b[:, 1] + b[:, 3] / 2], 1) if len(b) else np.zeros((0, 4))
        rows = []
        for k in np.unique(c):
            m = np.where(c == k)[0]
            order = m[np.argsort(-s[m])]
            while len(order):
                i = order[0]
                rows.append([*boxes[i], s[i], k])
                order = order[1:][_iou(boxes[i], boxes[order[1:]]) < iou]
        out.append(np.asarray(rows, np.float64).reshape(-1, 6))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def match_detections(ref: list[np.ndarray], got: list[np.ndarray], iou: float = 0.5) -> tuple[float, float, int]:
    """(precision, recall, reference count): greedy matching by IoU >= ``iou`` and the same class."""
    tp = n_ref = n_got = 0
    for r, g in zip(ref, got):
        n_ref, n_got = n_ref + len(r), n_got + len(g)
        used = np.zeros(len(g), bool)
        for row in r[np.argsort(-r[:, 4])] if len(r) else []:
            cand = np.where(~used & (g[:, 5] == row[5]))[0] if len(g) else []
            if len(cand):
                ious = _iou(row[:4], g[cand, :4])
                j = int(np.argmax(ious))
                if ious[j] >= iou:
                    used[cand[j]] = True
                    tp += 1
    prec = tp / n_got if n_got else 1.0
    rec = tp / n_ref if n_ref else 1.0
    return prec, rec, n_ref
