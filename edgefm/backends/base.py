"""What every backend gets and returns. No heavy imports here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np

from edgefm.bundle import StageRecord, TargetEntry
from edgefm.models.spec import ModelSpec
from edgefm.targets import TargetSpec

Feed = dict[str, np.ndarray]


@dataclass
class Samples:
    """Named input arrays (first axis = samples) and optional integer labels."""

    inputs: Feed
    labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 0

    def take(self, idx) -> "Samples":
        return Samples({k: v[idx] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[idx])

    def batches(self, size: int):
        for s in range(0, len(self), size):
            yield self.take(slice(s, s + size))


@dataclass
class CompileJob:
    """Everything a backend needs to build one target into ``out_dir`` (a folder inside the staging bundle).

    ``reference`` holds the fp32 ONNX outputs on ``eval`` (computed once, shared by all targets); ``model``
    is the (pruned/distilled) torch module, or None when the source was an ONNX file."""

    onnx_path: Path
    spec: ModelSpec
    target: TargetSpec
    precision: str
    calib: Samples
    eval: Samples
    reference: Feed
    out_dir: Path
    bundle_dir: Path
    config: Any  # edgefm.config.CompressConfig
    model: Any = None
    limits: Any = None  # edgefm.fidelity.Limits for this precision (legacy; backends move to ``contract``)
    contract: Any = None  # edgefm.contract.Contract resolved once for (target, precision) by the pipeline
    progress: Optional[Callable[[str], None]] = None


@dataclass
class CompileResult:
    entry: TargetEntry
    stages: list[StageRecord] = field(default_factory=list)


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
