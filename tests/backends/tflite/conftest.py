"""Shared fixtures: the digits CNN and LSTM trained once per session, and CompileJobs built the way the
pipeline builds them (fp32 ONNX exported with dynamo=False, reference outputs from ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgefm.backends.base import CompileJob, Samples
from edgefm.bundle import Manifest, SourceInfo, finalize, staging
from edgefm.models.spec import InputSpec, ModelSpec, OutputSpec
from edgefm.targets import TargetSpec, get_target

CALIB = Path(__file__).resolve().parents[3] / "calibration"


def _digits(seq: bool):
    name = "digits_seq" if seq else "digits"
    calib, ev = np.load(CALIB / f"{name}_calib.npz"), np.load(CALIB / f"{name}_eval.npz")
    return calib["x"], ev["x"], ev["labels"]


def _trained(seq: bool):
    import torch

    from edgefm.zoo import DigitsCNN, DigitsLSTM, train_digits

    model = DigitsLSTM() if seq else DigitsCNN()
    # Fewer epochs than the zoo default keep the suite fast; a higher rate makes up for it on the LSTM.
    train_digits(model, sequence=seq, epochs=10 if seq else 6, lr=1e-2 if seq else 3e-3)
    _, x, y = _digits(seq)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    return model.eval(), acc


@pytest.fixture(scope="session")
def cnn():
    """(trained DigitsCNN, fp32 torch top-1 on the eval split)."""
    return _trained(seq=False)


@pytest.fixture(scope="session")
def lstm():
    """(trained 2-layer DigitsLSTM, fp32 torch top-1 on the eval split)."""
    return _trained(seq=True)


def digits_spec(seq: bool) -> ModelSpec:
    shape = ["batch", 8, 8] if seq else ["batch", 1, 8, 8]
    return ModelSpec(family="rnn" if seq else "cnn", task="image-classification", num_classes=10,
                     inputs=[InputSpec(name="x", shape=shape)], outputs=[OutputSpec(name="logits", kind="logits")])


def tflite_target(precision: str, base: str = "tflite-arm64", **options) -> TargetSpec:
    t = get_target(base)
    return t.model_copy(update={"precision": precision, "options": {**t.options, **options}})


def onnx_reference(model, spec: ModelSpec, x: np.ndarray, path: Path) -> dict[str, np.ndarray]:
    import onnxruntime as ort
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (torch.from_numpy(x[:2]),), str(path), input_names=spec.input_names,
                      output_names=spec.output_names, dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(spec.output_names, sess.run(None, {"x": x})))


def digits_job(tmp: Path, model, seq: bool, target: TargetSpec, bundle_dir: Path | None = None) -> CompileJob:
    from edgefm.config import CompressConfig

    spec = digits_spec(seq)
    calib, x, y = _digits(seq)
    bundle_dir = bundle_dir or tmp
    onnx = bundle_dir / "fp32" / "model.onnx"
    ref = onnx_reference(model, spec, x, onnx)
    cfg = CompressConfig(source=tmp / "digits.pt", output=bundle_dir, targets=[target.name])
    return CompileJob(onnx_path=onnx, spec=spec, target=target, precision=target.precision,
                      calib=Samples({"x": calib}), eval=Samples({"x": x}, y), reference=ref,
                      out_dir=bundle_dir / target.name, bundle_dir=bundle_dir, config=cfg, model=model)


def write_bundle(out: Path, job_for, target: TargetSpec):
    """Compile inside a staged bundle and finalize it the way the pipeline does; returns the CompileResult."""
    from edgefm import __version__
    from edgefm.backends import tflite

    with staging(out) as tmp:
        job = job_for(tmp)
        res = tflite.compile(job)
        np.savez(tmp / "eval.npz", **{f"in/{k}": v for k, v in job.eval.inputs.items()},
                 labels=job.eval.labels, **{f"ref/{k}": v for k, v in job.reference.items()})
        man = Manifest(edgefm_version=__version__, source=SourceInfo(path="edgefm.zoo", kind="module"),
                       spec=job.spec, reference="fp32/model.onnx", eval_data="eval.npz",
                       targets={target.name: res.entry}, stages=res.stages)
        finalize(tmp, man)
    return res


@pytest.fixture(scope="session")
def cnn_bundle(tmp_path_factory, cnn):
    """(bundle folder, CompileResult): the digits CNN, full-integer int8 with float I/O."""
    out = tmp_path_factory.mktemp("cnn") / "bundle"
    target = tflite_target("int8")
    res = write_bundle(out, lambda d: digits_job(d, cnn[0], False, target, bundle_dir=d), target)
    return out, res


@pytest.fixture(scope="session")
def lstm_bundle(tmp_path_factory, lstm):
    """(bundle folder, CompileResult): the 2-layer digits LSTM, full-integer int8 with int8 I/O."""
    out = tmp_path_factory.mktemp("lstm") / "bundle"
    target = tflite_target("int8", io="int8")  # int8 tensors at the model's edges; the CNN covers float I/O
    res = write_bundle(out, lambda d: digits_job(d, lstm[0], True, target, bundle_dir=d), target)
    return out, res


@pytest.fixture(scope="session")
def pipeline_bundle(tmp_path_factory, cnn):
    """A bundle written by ``edgefm.pipeline.compress`` from the trained CNN's state_dict, for rpi5 and ORT."""
    import torch

    from edgefm.config import CompressConfig
    from edgefm.pipeline import compress

    tmp = tmp_path_factory.mktemp("pipeline")
    ckpt = tmp / "digits_cnn.pt"
    torch.save(cnn[0].state_dict(), ckpt)
    cfg = CompressConfig(source=ckpt, output=tmp / "bundle", arch="edgefm.zoo:digits_cnn", inputs=["x:1,1,8,8"],
                         calib=CALIB / "digits_calib.npz", eval=CALIB / "digits_eval.npz",
                         targets=["rpi5", "tflite-arm64", "onnxruntime-cpu"])
    said: list[str] = []
    compress(cfg, progress=said.append)
    # rpi5 and tflite-arm64 differ only in threads and CPU description: one conversion serves both.
    assert sum("converting with litert-torch" in m for m in said) == 2, said
    assert any("tflite-arm64: same conversion as an earlier target, reused" in m for m in said), said
    # ... and the converter process (torch + litert-torch + the model, ~1 GB for MiniLM) is stopped once no
    # later target needs it, not kept through the ONNX Runtime target
    from edgefm.backends import tflite_convert

    assert not any(w.alive() for w in tflite_convert._WORKERS.values())
    return cfg.output
