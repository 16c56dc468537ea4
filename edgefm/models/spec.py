"""``ModelSpec``: what a model is (family, task) and how it is called (named inputs with shapes,
dtypes and dynamic axes; outputs; preprocessing). It travels in the manifest, so it must not import torch."""

from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefm.errors import CalibrationError, ConfigError

Family = Literal["cnn", "rnn", "transformer", "other"]
Dim = Union[int, str]
_DTYPES = {"float32", "float16", "int64", "int32", "int8", "uint8", "bool"}


class InputSpec(BaseModel):
    """One named input. A dimension is an int (fixed) or a name such as ``batch`` (dynamic)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Input name, as in the ONNX graph and the Predictor's dict")
    shape: list[Dim] = Field(description="Dimensions; a string names a dynamic axis")
    dtype: str = Field("float32", description="NumPy dtype name")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def example_shape(self, batch: int = 2, dynamic: int = 8) -> tuple[int, ...]:
        """A concrete shape: ``batch`` for axis 0 when dynamic, ``dynamic`` for other named axes."""
        return tuple(d if isinstance(d, int) else (batch if i == 0 else dynamic) for i, d in enumerate(self.shape))

    def check(self, arr: np.ndarray, where: str) -> None:
        """Raise ``CalibrationError`` when ``arr`` does not fit this input (rank, fixed dims, dtype kind)."""
        if arr.ndim != len(self.shape):
            raise CalibrationError(
                f"{where}: input '{self.name}' has shape {list(arr.shape)}, but the model expects rank "
                f"{len(self.shape)} {self.shape}")
        for i, (got, want) in enumerate(zip(arr.shape, self.shape)):
            if isinstance(want, int) and got != want:
                raise CalibrationError(
                    f"{where}: input '{self.name}' has shape {list(arr.shape)}, but axis {i} must be {want} "
                    f"(model expects {self.shape})")
        want_kind = np.dtype(self.dtype).kind
        if arr.dtype.kind != want_kind and not (want_kind == "f" and arr.dtype.kind in "iu"):
            raise CalibrationError(
                f"{where}: input '{self.name}' has dtype {arr.dtype}, but the model expects {self.dtype}")


OutputKind = Literal["logits", "probabilities", "binary", "ordinal", "embedding", "regression", "detections",
                     "state", "other"]


class OutputSpec(BaseModel):
    """One named output and what it means (its kind picks the accuracy gates, see ``edgefm.contract``)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: OutputKind = Field("other", description="What the output means: " + ", ".join(OutputKind.__args__))
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="Kind params, e.g. threshold for binary, boxes=0:4 for detections")
    declared: bool = Field(False, description="True when the user declared the kind; False when edgefm guessed it")
    reason: str = Field("", description="Why this kind (the guess edgefm made, or 'declared')")

    @field_validator("kind", mode="before")
    @classmethod
    def _legacy(cls, v: Any) -> Any:
        # manifests written before the accuracy contract used "hidden" for per-token hidden states
        return {"hidden": "embedding"}.get(v, v)


class Preprocessing(BaseModel):
    """How raw data (text, images) becomes input arrays. Stored in the manifest so a device can repeat it."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["none", "text", "image"] = "none"
    tokenizer: Optional[str] = Field(None, description="Tokenizer folder, relative to the bundle or absolute")
    max_length: Optional[int] = Field(None, description="Fixed sequence length text is padded/truncated to")
    image_size: Optional[list[int]] = Field(None, description="[height, width] images are resized to")
    mean: Optional[list[float]] = Field(None, description="Per-channel mean subtracted after scaling to [0, 1]")
    std: Optional[list[float]] = Field(None, description="Per-channel std divided by")
    grayscale: bool = False


class ModelSpec(BaseModel):
    """The model's interface and nature; inferred from the checkpoint where it can be, else declared."""

    model_config = ConfigDict(extra="forbid")
    family: Family = Field(description="cnn, rnn, transformer or other: picks the quantization recipe")
    task: str = Field("unknown", description="e.g. image-classification, feature-extraction, sequence-classification")
    inputs: list[InputSpec]
    outputs: list[OutputSpec] = Field(default_factory=list)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    num_classes: Optional[int] = None
    arch: Optional[str] = Field(None, description="Architecture name, e.g. BertModel or module:factory")

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def input(self, name: str) -> InputSpec:
        for i in self.inputs:
            if i.name == name:
                return i
        raise KeyError(name)

    def check_feed(self, feed: dict[str, np.ndarray], where: str) -> None:
        """Raise ``CalibrationError`` naming what is missing, extra or misshapen in ``feed``."""
        missing = [n for n in self.input_names if n not in feed]
        extra = [n for n in feed if n not in self.input_names and n != "labels"]
        if missing or extra:
            raise CalibrationError(
                f"{where}: inputs {sorted(feed)} do not match the model's inputs {self.input_names}"
                + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else ""))
        for spec in self.inputs:
            spec.check(np.asarray(feed[spec.name]), where)


_INPUT_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.\-]*):(?P<dims>[^:]+)(?::(?P<dtype>\w+))?$")


def parse_input_decl(text: str) -> InputSpec:
    """Parse ``--input NAME:DIMS[:DTYPE]``, e.g. ``x:batch,1,8,8:float32``. Axis 0 is dynamic (``batch``)
    unless the user wrote a name for it anyway; write ``x:1,...`` with ``!1`` to pin it (``x:!1,3,224,224``)."""
    m = _INPUT_RE.match(text.strip())
    if not m:
        raise ConfigError(f"--input '{text}': expected NAME:DIMS[:DTYPE], e.g. x:1,3,224,224:float32")
    dims: list[Dim] = []
    for i, tok in enumerate(m["dims"].split(",")):
        tok = tok.strip()
        if tok.startswith("!") and tok[1:].isdigit():
            dims.append(int(tok[1:]))
        elif tok.isdigit():
            dims.append("batch" if i == 0 else int(tok))
        elif re.fullmatch(r"[A-Za-z_]\w*", tok):
            dims.append(tok)
        else:
            raise ConfigError(f"--input '{text}': dimension '{tok}' is neither a number nor a name")
    dtype = m["dtype"] or "float32"
    if dtype not in _DTYPES:
        raise ConfigError(f"--input '{text}': dtype '{dtype}' is not one of {sorted(_DTYPES)}")
    check_dims(text, dims)
    return InputSpec(name=m["name"], shape=dims, dtype=dtype)


#: One sample of one input may hold at most this many elements (256 MiB of float32): edgefm makes batches of
#: example inputs from the declared shape, so a typo such as 1,3,2240,2240 would otherwise exhaust memory.
MAX_SAMPLE_ELEMENTS = 1 << 26


def check_dims(text: str, dims: list) -> None:
    """Fixed dimensions are 1 … 2**31-1 and one sample (the fixed dims after the batch axis) holds at most
    ``MAX_SAMPLE_ELEMENTS``; raise ``ConfigError`` naming the declaration otherwise."""
    for d in dims:
        if isinstance(d, int) and not 1 <= d < 2 ** 31:
            raise ConfigError(f"--input '{text}': dimension {d} is out of range; fixed dimensions are 1 to "
                              f"{2 ** 31 - 1}")
    per_sample = 1
    for d in dims[1:]:
        per_sample *= d if isinstance(d, int) else 1
    if per_sample > MAX_SAMPLE_ELEMENTS:
        raise ConfigError(f"--input '{text}': one sample would hold {per_sample:,} elements; edgefm takes at most "
                          f"{MAX_SAMPLE_ELEMENTS:,} per input (check the dimensions)")
