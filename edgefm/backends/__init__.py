"""One module per runtime. Each backend module defines:

- ``EXTRA``: the pip extra that installs it (for the error message when it is missing);
- ``is_available() -> bool`` and ``versions() -> dict[str, str]``;
- ``compile(job: CompileJob) -> CompileResult``: build the target's artifact(s) from the verified fp32
  ONNX (and the torch model where the backend converts from torch), quantize where asked, verify
  against the fp32 reference, write into ``job.out_dir``;
- ``load(bundle: Path, target_name: str, entry: TargetEntry, spec: ModelSpec, options: LoadOptions) -> Predictor``;
- ``CAPABILITIES``: a frozenset naming the optional verbs it implements (``edgefm.backends.base.CAPABILITIES``:
  rule checks, emulated runs, on-device compilation, a finer availability) — callers ask ``base.has``.

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
    _check_declared(name, mod)
    if need_runtime and not mod.is_available():
        raise BackendUnavailableError(
            f"backend '{name}' needs its runtime, which is not installed here: pip install 'edgefm[{mod.EXTRA}]'")
    return mod


_REQUIRED = ("EXTRA", "CAPABILITIES", "is_available", "versions", "compile", "load")


def _check_declared(name: str, mod: ModuleType) -> None:
    """A backend that lacks a required verb, or declares a capability it does not define, is a bug in edgefm."""
    from edgefm.backends.base import CAPABILITIES, CAPABILITY_FUNCTIONS

    attrs = vars(mod)
    missing = [a for a in _REQUIRED if a not in attrs or (a not in ("EXTRA", "CAPABILITIES") and not callable(attrs[a]))]
    unknown = sorted(set(getattr(mod, "CAPABILITIES", ())) - set(CAPABILITIES))
    absent = [c for c in getattr(mod, "CAPABILITIES", ()) if c in CAPABILITY_FUNCTIONS
              and not callable(attrs.get(CAPABILITY_FUNCTIONS[c]))]
    if missing or unknown or absent:
        raise TypeError(f"internal: backend '{name}' breaks the backend contract (missing {missing}, unknown "
                        f"capabilities {unknown}, declared but undefined {absent})")
