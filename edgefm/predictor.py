"""What a loaded model is: the ``Predictor`` protocol, its shared base (input checking) and the load options.
Light (NumPy, the spec): backends, the runtime and benchmarks all import it without a circle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol

import numpy as np

from edgefm.errors import CalibrationError
from edgefm.models.spec import ModelSpec


@dataclass
class LoadOptions:
    """Options for ``edgefm.load``: device override, threads, strictness about device fallback."""

    device: Optional[str] = None
    threads: Optional[int] = None
    strict: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Predictor(Protocol):
    """A loaded model: dict of NumPy arrays in, dict of NumPy arrays out; safe to call from several threads."""

    spec: ModelSpec
    target: str
    backend: str
    executes: str  # the runtime that really runs it (a TensorRT target runs in ORT until compiled on device)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @property
    def input_names(self) -> list[str]: ...

    @property
    def output_names(self) -> list[str]: ...


class BasePredictor:
    """Shared input checking for backend Predictors: names, ranks, fixed dims and dtypes are checked
    and arrays are cast to the declared dtype before the backend's ``_run`` sees them."""

    def __init__(self, spec: ModelSpec, target: str, backend: str):
        self.spec, self.target, self.backend = spec, target, backend
        # The runtime that really executes the model; differs from ``backend`` where a target runs on a
        # stand-in until it is compiled on its device (a TensorRT target in ONNX Runtime).
        self.executes = backend

    @property
    def input_names(self) -> list[str]:
        return self.spec.input_names

    @property
    def output_names(self) -> list[str]:
        return self.spec.output_names

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(inputs, Mapping):
            raise CalibrationError(f"a Predictor takes a dict {{input name: array}} with inputs {self.input_names}, "
                                   f"got {type(inputs).__name__}")
        feed = {k: np.asarray(v) for k, v in inputs.items()}
        self.spec.check_feed(feed, f"{self.target} predictor")
        feed = {s.name: np.ascontiguousarray(feed[s.name], dtype=s.dtype) for s in self.spec.inputs}
        return self._run(feed)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} target={self.target} inputs={self.input_names} outputs={self.output_names}>"
