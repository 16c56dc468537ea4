"""One module per runtime. Each backend module defines:

- ``EXTRA``: the pip extra that installs it (for the error message when it is missing);
- ``is_available() -> bool`` and ``versions() -> dict[str, str]``;
- ``compile(job: CompileJob) -> CompileResult``: build the target's artifact(s) from the verified fp32
  ONNX (and the torch model where the backend converts from torch), quantize where asked, verify
  against the fp32 reference, write into ``job.out_dir``;
- ``load(bundle: Path, target_name: str, entry: TargetEntry, spec: ModelSpec, options: LoadOptions) -> Predictor``.

Backend modules are imported only when used, so ``import edgefm`` needs none of the runtimes."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgefm.errors import BackendUnavailableError

_MODULES = {
    "onnxruntime": "edgefm.backends.onnxruntime",
    "openvino": "edgefm.backends.openvino",
    "tflite": "edgefm.backends.tflite",
    "tensorrt": "edgefm.backends.tensorrt",
}


def get_backend(name: str, need_runtime: bool = True) -> ModuleType:
    """The backend module; with ``need_runtime`` raise ``BackendUnavailableError`` (naming the pip extra)
    when its runtime is not installed."""
    if name not in _MODULES:
        raise BackendUnavailableError(f"unknown backend '{name}'; known: {', '.join(_MODULES)}")
    try:
        mod = importlib.import_module(_MODULES[name])
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("edgefm"):
            raise BackendUnavailableError(f"backend '{name}' is not part of this edgefm version") from None
        raise
    if need_runtime and not mod.is_available():
        raise BackendUnavailableError(
            f"backend '{name}' needs its runtime, which is not installed here: pip install 'edgefm[{mod.EXTRA}]'")
    return mod
