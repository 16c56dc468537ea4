"""Named input arrays with optional labels: the data every layer passes around (datasets, stages, quantize
recipes, backends, the pipeline). NumPy only, so any layer can import it without a circle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

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
