"""What can be measured, and how the worker opens it: a bundle target (through ``edgefm.load``), an ONNX
file in ONNX Runtime (the fp32 reference, peers), an OpenVINO IR (peers, benchmark_app cross-check), or a
torch module in eager mode (the source model, optionally with torch's dynamic quantization).

``open_subject`` runs inside the worker subprocess; every runtime import is inside the branch that needs
it, so a bundle target's process holds that runtime only."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgefm.bench.schema import Role
from edgefm.models.spec import ModelSpec

Feed = dict[str, np.ndarray]


class Subject(BaseModel):
    """One thing to measure. ``kind`` says how to open it; ``role`` how to report it."""

    model_config = ConfigDict(extra="forbid")
    name: str
    role: Role
    kind: Literal["bundle", "onnx", "openvino", "torch"]
    spec: ModelSpec
    precision: str = "fp32"
    bundle: Optional[str] = Field(None, description="kind bundle: the bundle folder")
    target: Optional[str] = Field(None, description="kind bundle: the target name")
    path: Optional[str] = Field(None, description="onnx/openvino: the model file; torch: the checkpoint")
    size_from: Optional[str] = Field(None, description="Path whose size on disk is reported (default: path)")
    arch: Optional[str] = Field(None, description="torch: --arch of the checkpoint")
    inputs: list[str] = Field(default_factory=list, description="torch: --input declarations of the checkpoint")
    trust_source: bool = Field(False, description="torch: the user passed --trust-source (a .pt2 may be loaded)")
    torch_dynamic_int8: bool = Field(False, description="torch: torch.ao dynamic quantization of Linear/LSTM/GRU")
    options: dict[str, Any] = Field(default_factory=dict, description="Runtime settings (e.g. OpenVINO hints)")


@dataclass
class Opened:
    """A loaded subject: ``predict(feed) -> outputs`` plus what to report about it."""

    predict: Callable[[Feed], dict[str, np.ndarray]]
    backend: str
    device: str = "cpu"
    artifact: Optional[str] = None
    size_bytes: Optional[int] = None
    runtime_versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def size_on_disk(path: Path) -> int:
    """Bytes of a file plus its ONNX external-data / OpenVINO .bin sidecars, or of every file in a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    total = path.stat().st_size
    for side in (path.with_name(path.name + ".data"), path.with_suffix(".bin") if path.suffix == ".xml" else None):
        if side is not None and side.is_file():
            total += side.stat().st_size
    return total


def open_subject(s: Subject, threads: Optional[int]) -> Opened:
    """Load ``s`` in this process; the caller times this call as the load time."""
    if s.kind == "bundle":
        return _open_bundle(s, threads)
    if s.kind == "onnx":
        return _open_onnx(s, threads)
    if s.kind == "openvino":
        return _open_openvino(s, threads)
    return _open_torch(s, threads)


def _open_bundle(s: Subject, threads: Optional[int]) -> Opened:
    import edgefm
    from edgefm.bundle import read_manifest

    bundle = Path(s.bundle or "")
    predictor = edgefm.load(bundle, s.target, threads=threads)
    entry = read_manifest(bundle).targets[s.target or predictor.target]
    size = sum((bundle / f).stat().st_size for f in sorted(set(entry.files) | {entry.artifact}))
    # a backend may hand back another runtime's Predictor (TensorRT without TensorRT: its Q/DQ ONNX in ORT),
    # which it says in ``executes``
    ran_on = getattr(predictor, "executes", None) or getattr(predictor, "backend", entry.backend)
    notes = [] if ran_on == entry.backend else [
        f"target backend {entry.backend}, but it ran on {ran_on} here (the backend's fallback): not a "
        f"{entry.backend} figure"]
    return Opened(predict=predictor, backend=ran_on, device=entry.device, artifact=entry.artifact,
                  size_bytes=size, runtime_versions=dict(entry.runtime_versions), settings=dict(entry.options),
                  notes=notes)


def _checked(s: Subject, backend: str, run: Callable[[Feed], dict[str, np.ndarray]]):
    """Wrap a raw runtime call in the same input checks a bundle target's Predictor does, so a baseline
    does not look faster only because it skips them (a few microseconds, visible on tiny models)."""
    from edgefm.predictor import BasePredictor

    class _Predictor(BasePredictor):
        def _run(self, feed: Feed) -> dict[str, np.ndarray]:
            return run(feed)

    return _Predictor(s.spec, s.name, backend)


def _open_onnx(s: Subject, threads: Optional[int]) -> Opened:
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(s.path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = s.spec.output_names or names

    def run(feed: Feed) -> dict[str, np.ndarray]:
        outs = sess.run(None, feed)
        return {n: o for n, o in zip(names, outs) if n in want}

    return Opened(predict=_checked(s, "onnxruntime", run), backend="onnxruntime", artifact=s.path,
                  size_bytes=size_on_disk(Path(s.size_from or s.path)),
                  runtime_versions={"onnxruntime": ort.__version__},
                  settings={"providers": ["CPUExecutionProvider"], "graph_optimization": "all"})


def _open_openvino(s: Subject, threads: Optional[int]) -> Opened:
    import openvino as ov

    core = ov.Core()
    hint = str(s.options.get("hint", "LATENCY")).upper()
    config: dict[str, Any] = {} if hint == "NONE" else {"PERFORMANCE_HINT": hint}  # NONE: as benchmark_app -hint none
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if s.options.get("streams"):
        config["NUM_STREAMS"] = int(s.options["streams"])
    if s.options.get("inference_precision"):
        config["INFERENCE_PRECISION_HINT"] = s.options["inference_precision"]
    compiled = core.compile_model(s.path, s.options.get("device", "CPU"), config)
    request = compiled.create_infer_request()  # the worker calls from one thread
    names = [o.get_any_name() for o in compiled.outputs]
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))

    def run(feed: Feed) -> dict[str, np.ndarray]:
        res = request.infer(feed, share_inputs=True)  # the caller keeps feed alive; no copy timed
        return {n: np.array(res[o]) for n, o in zip(names, compiled.outputs)}

    return Opened(predict=_checked(s, "openvino", run), backend="openvino",
                  device=s.options.get("device", "CPU").lower(),
                  artifact=s.path, size_bytes=size_on_disk(Path(s.size_from or s.path)),
                  runtime_versions={"openvino": ov.get_version()},
                  settings={**config, "execution_precision": precision})


def _open_torch(s: Subject, threads: Optional[int]) -> Opened:
    import torch

    from edgefm.models.load import load_checkpoint  # the checkpoint loader (branch ckpt / main)

    if threads:
        torch.set_num_threads(threads)
    loaded = load_checkpoint(Path(s.path or ""), arch=s.arch, inputs=s.inputs, trust_source=s.trust_source)
    module = loaded.module.eval()
    notes = []
    if s.torch_dynamic_int8:
        from torch.ao.quantization import quantize_dynamic

        module = quantize_dynamic(module, {torch.nn.Linear, torch.nn.LSTM, torch.nn.GRU}, dtype=torch.qint8)
        notes.append("torch.ao.quantization.quantize_dynamic on Linear/LSTM/GRU, qint8 weights")
    order = s.spec.input_names
    outs = s.spec.output_names

    def predict(feed: Feed) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            res = module(*(torch.from_numpy(np.asarray(feed[n], order="C")) for n in order))  # 0-d stays 0-d
        res = res if isinstance(res, (tuple, list)) else (res,)
        return {n: r.numpy() for n, r in zip(outs, res)}

    return Opened(predict=predict, backend="torch", artifact=s.path,
                  size_bytes=size_on_disk(Path(s.size_from or s.path)),
                  runtime_versions={"torch": torch.__version__},
                  settings={"threads": torch.get_num_threads(), "mode": "eager, inference_mode"}, notes=notes)


def env_for_threads(threads: Optional[int]) -> dict[str, str]:
    """Environment for a worker: pin OpenMP-based runtimes to the asked thread count too."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env
