"""Helpers for the TensorRT tests: real models, built in code: the digits CNN and LSTM (trained in seconds) and the
real all-MiniLM-L6-v2 with masked mean pooling; each exported to fp32 ONNX (opset 17, dynamo=False), with
a ModelSpec, calibration/eval Samples and the fp32 ONNX Runtime reference outputs on the eval samples; and
``make_bundle``, which drives the backend through CompileJob the way ``edgefm.pipeline`` does."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefm import __version__
from edgefm.backends import get_backend
from edgefm.backends.base import CompileJob, Samples
from edgefm.bundle import Manifest, SourceInfo, finalize, staging
from edgefm.config import CompressConfig
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec, Preprocessing
from edgefm.targets import TargetSpec, get_target

ROOT = Path(__file__).resolve().parents[3]
CALIB = ROOT / "calibration"
SENTENCES = CALIB / "sentences.txt"


@dataclass
class Exported:
    onnx_path: Path
    spec: ModelSpec
    calib: Samples
    eval: Samples
    reference: dict
    checkpoint: Path | None = None  # the trained state_dict (digits models), for end-to-end runs


def ort_run(path: Path, feeds: dict, outputs=None) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = outputs or [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _export(model, args, path: Path, inputs, outputs, axes) -> None:
    import torch

    model.eval()
    with torch.no_grad():
        torch.onnx.export(model, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def digits(tmp: Path, sequence: bool) -> Exported:
    """Digits CNN (input x: N,1,8,8) or 2-layer LSTM (x: N,8,8), trained on the digits training split."""
    import torch

    from edgefm import zoo

    torch.manual_seed(0)
    model = zoo.DigitsLSTM() if sequence else zoo.DigitsCNN()
    # few epochs keep the session short; the int8 checks compare against this same fp32 model
    zoo.train_digits(model, sequence=sequence, epochs=10 if sequence else 4)
    stem = "digits_seq" if sequence else "digits"
    calib, ev = np.load(CALIB / f"{stem}_calib.npz"), np.load(CALIB / f"{stem}_eval.npz")
    shape = ["batch", 8, 8] if sequence else ["batch", 1, 8, 8]
    spec = ModelSpec(family="rnn" if sequence else "cnn", task="image-classification", num_classes=10,
                     inputs=[InputSpec(name="x", shape=shape)], outputs=[OutputSpec(name="logits", kind="logits")])
    path = tmp / f"{stem}.onnx"
    _export(model, (torch.from_numpy(calib["x"][:4]),), path, ["x"], ["logits"],
            {"x": {0: "batch"}, "logits": {0: "batch"}})
    ev_s = Samples({"x": ev["x"]}, ev["labels"])
    ckpt = tmp / f"{stem}.pt"
    torch.save(model.state_dict(), ckpt)
    return Exported(path, spec, Samples({"x": calib["x"]}), ev_s, ort_run(path, ev_s.inputs), ckpt)


def minilm_available() -> bool:
    from edgefm.zoo import minilm_path

    return minilm_path() is not None


def minilm(tmp: Path, max_length: int = 64) -> Exported:
    """The real all-MiniLM-L6-v2 with masked mean pooling: (input_ids, attention_mask) -> sentence_embedding."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgefm.zoo import minilm_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    src = minilm_path()
    bert = AutoModel.from_pretrained(src, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(src)

    class Pooled(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            w = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * w).sum(1) / w.sum(1).clamp(min=1e-9)

    # 32 sentences to calibrate, the next 32 to evaluate: enough for the figures, quick on 2 cores
    lines = [s for s in SENTENCES.read_text().splitlines() if s.strip()][:64]
    enc = tok(lines, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    spec = ModelSpec(family="transformer", task="feature-extraction", arch="BertModel",
                     inputs=[InputSpec(name=k, shape=["batch", "seq"], dtype="int64") for k in feeds],
                     outputs=[OutputSpec(name="sentence_embedding", kind="embedding")],
                     preprocessing=Preprocessing(kind="text", max_length=max_length))
    path = tmp / "minilm.onnx"
    axes = {k: {0: "batch", 1: "seq"} for k in feeds} | {"sentence_embedding": {0: "batch"}}
    _export(Pooled(bert), (torch.from_numpy(feeds["input_ids"][:2]), torch.from_numpy(feeds["attention_mask"][:2])),
            path, list(feeds), ["sentence_embedding"], axes)
    half = len(lines) // 2  # disjoint halves: calibrate on one, evaluate on the other
    calib = Samples({k: v[:half] for k, v in feeds.items()})
    ev = Samples({k: v[half:] for k, v in feeds.items()})
    return Exported(path, spec, calib, ev, ort_run(path, ev.inputs))


def make_bundle(ex: Exported, target: str | TargetSpec, out: Path, precision: str | None = None,
                **config) -> Path:
    """Compile ``ex`` for ``target`` into a complete bundle at ``out`` (fp32 reference, eval data, target)."""
    target = get_target(target) if isinstance(target, str) else target
    cfg = CompressConfig(source=ex.onnx_path, output=out, targets=[target.name], **config)
    with staging(out, force=True) as tmp:
        (tmp / "fp32").mkdir()
        shutil.copyfile(ex.onnx_path, tmp / "fp32" / "model.onnx")
        arrays = {f"in/{k}": v for k, v in ex.eval.inputs.items()} | {f"ref/{k}": v for k, v in ex.reference.items()}
        if ex.eval.labels is not None:
            arrays["labels"] = ex.eval.labels
        np.savez(tmp / "eval.npz", **arrays)
        precision = precision or target.precision
        job = CompileJob(onnx_path=tmp / "fp32" / "model.onnx", spec=ex.spec, target=target,
                         precision=precision, calib=ex.calib, eval=ex.eval,
                         reference=ex.reference, out_dir=tmp / target.name, bundle_dir=tmp, config=cfg)
        res = get_backend("tensorrt").compile(job)
        manifest = Manifest(edgefm_version=__version__, source=SourceInfo(path=str(ex.onnx_path), kind="onnx"),
                            spec=ex.spec, config=cfg.model_dump(mode="json"), reference="fp32/model.onnx",
                            eval_data="eval.npz", targets={target.name: res.entry}, stages=res.stages)
        finalize(tmp, manifest)
    return out
