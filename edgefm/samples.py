"""Named input arrays with optional labels: the data every layer passes around (datasets, stages, quantize
recipes, backends, the pipeline). NumPy only, so any layer can import it without a circle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np

from edgefm.errors import CalibrationError

if TYPE_CHECKING:
    from edgefm.models.spec import ModelSpec

Feed = dict[str, np.ndarray]


@dataclass
class Samples:
    """Named input arrays in the model's own layout, and optional integer labels.

    ``axes`` gives the sample axis per input (absent: 0; None: a constant or scalar input, fed whole to every
    call and never split). ``out_axes`` does the same for outputs (a state output is batched on its input's
    axis). With ``state`` (state input -> state output) the samples are *streams*: every non-constant,
    non-state array has a leading chunk axis (chunks, *model layout*); a state array is the initial state.
    ``run`` feeds them chunk by chunk, feeding each state output back, as a device will."""

    inputs: Feed
    labels: Optional[np.ndarray] = None
    axes: dict[str, Optional[int]] = field(default_factory=dict)
    out_axes: dict[str, int] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_spec(cls, spec: ModelSpec, inputs: Feed, labels: Optional[np.ndarray] = None,
                 streams: Optional[bool] = None) -> "Samples":
        """Samples laid out as ``spec`` says (streams when the spec has state, unless ``streams`` is False)."""
        stream = spec.streaming if streams is None else streams
        return cls(inputs, labels, spec.input_axes, spec.output_axes, spec.state_map if stream else {})

    @property
    def streamed(self) -> bool:
        return bool(self.state)

    def axis(self, name: str) -> Optional[int]:
        """Where the samples are in ``self.inputs[name]`` (the chunk axis shifts stream arrays by one)."""
        a = self.axes.get(name, 0)
        if a is None:
            return None
        return a + 1 if self.streamed and name not in self.state else a

    @property
    def chunks(self) -> int:
        """Chunks per stream (1 for plain samples)."""
        if not self.streamed:
            return 1
        arrs = [v for k, v in self.inputs.items() if k not in self.state and self.axis(k) is not None]
        return int(arrs[0].shape[0]) if arrs else 1

    def __len__(self) -> int:
        for k, v in self.inputs.items():
            ax = self.axis(k)
            if ax is not None:
                return int(v.shape[ax])
        return 1 if self.inputs else 0

    def take(self, idx) -> "Samples":
        """The samples (streams) at ``idx`` (a slice or index array); constants stay whole."""
        out = {}
        for k, v in self.inputs.items():
            ax = self.axis(k)
            if ax is None:
                out[k] = v
            else:
                sel = [slice(None)] * v.ndim
                sel[ax] = idx
                out[k] = v[tuple(sel)]
        return Samples(out, None if self.labels is None else self.labels[idx], self.axes, self.out_axes, self.state)

    def batches(self, size: int):
        for s in range(0, len(self), size):
            yield self.take(slice(s, s + size))

    def without(self, names) -> "Samples":
        """These samples minus the inputs ``names`` (e.g. constants an exported graph holds itself)."""
        return Samples({k: v for k, v in self.inputs.items() if k not in names}, self.labels, self.axes,
                       self.out_axes, self.state)

    def feeds(self) -> "Iterator[Feed]":
        """One model feed per sample (streams: per chunk of the first stream, state carried as zeros/initial:
        for latency probes and per-sample calibration of plain samples)."""
        for i in range(len(self)):
            one = self.take(slice(i, i + 1))
            if not one.streamed:
                yield one.inputs
            else:
                for c in range(one.chunks):
                    yield one.chunk(c, {k: one.inputs[k] for k in one.state})

    def head(self, n: int) -> Feed:
        """The model feed of the first ``n`` samples (their first chunk with the initial state, for streams)."""
        part = self.take(slice(0, n))
        return part.chunk(0, {k: part.inputs[k] for k in part.state}) if part.streamed else part.inputs

    def first(self) -> Feed:
        """The model feed of the first sample (its first chunk, for streams)."""
        return next(iter(self.feeds()))

    def chunk(self, c: int, state: Feed) -> Feed:
        """The model feed for chunk ``c`` of these streams, with ``state`` for the state inputs."""
        feed = {k: (v if self.axis(k) is None else v[c]) for k, v in self.inputs.items() if k not in self.state}
        feed.update(state)
        return feed

    def run(self, fn: Callable[[Feed], Feed], batch: int) -> Feed:
        """Outputs of ``fn(feed) -> {name: array}`` over every sample, ``batch`` at a time, joined on each
        output's sample axis. Streams are fed chunk by chunk with the state carried over; their outputs get a
        leading chunk axis (chunks, *output layout*)."""
        parts: dict[str, list[np.ndarray]] = {}
        for b in self.batches(batch):
            got = b._stream(fn) if self.streamed else fn(b.inputs)
            for k, v in got.items():
                parts.setdefault(k, []).append(v)
        shift = 1 if self.streamed else 0
        return {k: np.concatenate(v, axis=self.out_axes.get(k, 0) + shift) for k, v in parts.items()}

    def _stream(self, fn: Callable[[Feed], Feed]) -> Feed:
        state = {k: self.inputs[k] for k in self.state}
        steps: dict[str, list[np.ndarray]] = {}
        for c in range(self.chunks):
            out = fn(self.chunk(c, state))
            missing = [o for o in self.state.values() if o not in out]
            if missing:
                raise CalibrationError(f"state outputs {missing} are not among the model's outputs {sorted(out)}")
            state = {i: np.asarray(out[o]).astype(self.inputs[i].dtype, copy=False) for i, o in self.state.items()}
            for k, v in out.items():
                steps.setdefault(k, []).append(np.asarray(v))
        return {k: np.stack(v) for k, v in steps.items()}

    def steps(self, fn: Callable[[Feed], Feed], batch: int) -> "Samples":
        """Plain samples, one per (stream, chunk), whose state inputs hold the state ``fn`` carried there: what
        calibration needs (every call a device will make, with realistic state)."""
        if not self.streamed:
            return self
        feeds: dict[str, list[np.ndarray]] = {}
        consts: Feed = {}

        def record(feed: Feed) -> Feed:
            for k, v in feed.items():
                if self.axis(k) is None:
                    consts[k] = v
                else:
                    feeds.setdefault(k, []).append(v)
            return fn(feed)

        self.run(record, batch)
        flat = {k: np.concatenate(v, axis=self.axes.get(k, 0) or 0) for k, v in feeds.items()}
        flat.update(consts)
        return Samples(flat, None, self.axes, self.out_axes, {})


def streams_from_user(arr: np.ndarray, batch_axis: int) -> np.ndarray:
    """A user's stream array (streams, chunks, *one chunk without its batch axis*) in ``Samples`` layout
    (chunks, *model layout with the streams on the batch axis*)."""
    return np.ascontiguousarray(np.moveaxis(arr, [1, 0], [0, batch_axis + 1]))
