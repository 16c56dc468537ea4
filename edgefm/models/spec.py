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
    batch_axis: Optional[int] = Field(
        0, description="The axis that indexes samples (e.g. 1 for a (layers, batch, hidden) state); None for a "
                       "scalar or constant input, which is fed whole to every call and never split into samples")
    value: Optional[Union[float, int, bool, list]] = Field(
        None, description="A constant: the same value is fed on every call (e.g. a sample rate)")
    baked: bool = Field(False, description="A constant the exported graph holds itself (no graph input): a "
                                           "Predictor accepts it, checks it equals `value` and does not feed it")

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    @property
    def constant(self) -> bool:
        return self.value is not None

    def constant_array(self) -> np.ndarray:
        """The constant ``value`` as an array of this input's shape and dtype (a scalar is 0-d)."""
        shape = tuple(d if isinstance(d, int) else 1 for d in self.shape)
        return np.array(np.broadcast_to(np.asarray(self.value, dtype=self.dtype), shape))  # writable (torch)

    def example_shape(self, batch: int = 2, dynamic: int = 8) -> tuple[int, ...]:
        """A concrete shape: ``batch`` on the batch axis when dynamic, ``dynamic`` for other named axes."""
        return tuple(d if isinstance(d, int) else (batch if i == self.batch_axis else dynamic)
                     for i, d in enumerate(self.shape))

    def check(self, arr: np.ndarray, where: str) -> None:
        """Raise ``CalibrationError`` when ``arr`` does not fit this input (rank, fixed dims, dtype kind)."""
        if arr.ndim == 0 and self.shape:
            raise CalibrationError(f"{where}: input '{self.name}' is a 0-d scalar, but the model expects rank "
                                   f"{len(self.shape)} {self.shape}: give it an axis of samples (shape [N, ...])")
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
    batch_axis: int = Field(0, description="The axis that indexes samples (a state output: its input's)")

    @field_validator("kind", mode="before")
    @classmethod
    def _legacy(cls, v: Any) -> Any:
        # manifests written before the accuracy contract used "hidden" for per-token hidden states
        return {"hidden": "embedding"}.get(v, v)


class StatePair(BaseModel):
    """A recurrent state: output ``output`` of one call is fed to input ``input`` of the next (streaming)."""

    model_config = ConfigDict(extra="forbid")
    input: str
    output: str


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
    state: list[StatePair] = Field(
        default_factory=list, description="State inputs/outputs fed back call to call: data are streams of chunks")

    @property
    def streaming(self) -> bool:
        return bool(self.state)

    @property
    def input_axes(self) -> dict[str, Optional[int]]:
        """Sample axis per input (None: a constant/scalar, fed whole)."""
        return {i.name: (None if i.constant else i.batch_axis) for i in self.inputs}

    @property
    def output_axes(self) -> dict[str, int]:
        return {o.name: o.batch_axis for o in self.outputs}

    @property
    def state_map(self) -> dict[str, str]:
        return {p.input: p.output for p in self.state}

    def declare_state(self, pairs: list[StatePair], where: str, how: str = "declared with --state") -> None:
        """Record ``pairs`` (checked against the inputs/outputs); state outputs get their input's batch axis
        and kind ``state``."""
        for p in pairs:
            if p.input not in self.input_names:
                raise ConfigError(f"{where}: state input '{p.input}' is not an input of the model; its inputs are "
                                  f"{self.input_names}")
            if p.output not in self.output_names:
                raise ConfigError(f"{where}: state output '{p.output}' is not an output of the model; its outputs "
                                  f"are {self.output_names}")
            inp = self.input(p.input)
            if inp.constant or inp.batch_axis is None:
                raise ConfigError(f"{where}: state input '{p.input}' is a constant/scalar; a state has a batch axis")
            for o in self.outputs:
                if o.name == p.output:
                    # streamed outputs carry the chunks on axis 0: the contract's state gate reads the drift there
                    o.batch_axis, o.kind, o.declared = inp.batch_axis, "state", True
                    o.params = {**o.params, "step_axis": 0}
                    o.reason = f"fed back to input '{p.input}' ({how})"
        self.state = list(pairs)

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
        missing = [i.name for i in self.inputs if i.name not in feed and not i.baked]
        extra = [n for n in feed if n not in self.input_names and n != "labels"]
        if missing or extra:
            raise CalibrationError(
                f"{where}: inputs {sorted(feed)} do not match the model's inputs {self.input_names}"
                + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else ""))
        for spec in self.inputs:
            if spec.name in feed:
                spec.check(np.asarray(feed[spec.name]), where)


_INPUT_RE = re.compile(r"^(?P<name>[A-Za-z_][\w.\-]*):(?P<dims>[^:=]*)(?::(?P<dtype>\w+))?(?:=(?P<value>[^=]+))?$")


def parse_input_decl(text: str) -> InputSpec:
    """Parse ``--input NAME:DIMS[:DTYPE][=VALUE]``.

    ``x:batch,1,8,8:float32``: axis 0 is dynamic (``batch``) unless the user wrote a name for it anyway; write
    ``!1`` to pin it (``x:!1,3,224,224``). An axis named ``batch`` anywhere is the sample axis
    (``state:2,batch,128``). ``scalar`` (or nothing) as DIMS is a 0-d input; ``=VALUE`` makes the input a
    constant fed the same value every call (``sr:scalar:int64=16000``), never split into samples."""
    m = _INPUT_RE.match(text.strip())
    if not m:
        raise ConfigError(f"--input '{text}': expected NAME:DIMS[:DTYPE][=VALUE], e.g. x:1,3,224,224:float32 or "
                          f"sr:scalar:int64=16000")
    toks = [] if m["dims"].strip() in ("", "scalar") else [t.strip() for t in m["dims"].split(",")]
    named_batch = "batch" in toks
    dims: list[Dim] = []
    for i, tok in enumerate(toks):
        if tok.startswith("!") and tok[1:].isdigit():
            dims.append(int(tok[1:]))
        elif tok.isdigit():
            dims.append("batch" if i == 0 and not named_batch and m["value"] is None else int(tok))
        elif re.fullmatch(r"[A-Za-z_]\w*", tok):
            dims.append(tok)
        else:
            raise ConfigError(f"--input '{text}': dimension '{tok}' is neither a number nor a name")
    dtype = m["dtype"] or "float32"
    if dtype not in _DTYPES:
        raise ConfigError(f"--input '{text}': dtype '{dtype}' is not one of {sorted(_DTYPES)}")
    value = None
    if m["value"] is not None:
        try:
            value = _number(m["value"], dtype)
        except ValueError:
            raise ConfigError(f"--input '{text}': value '{m['value']}' is not a {dtype} number") from None
    check_dims(text, [d for i, d in enumerate(dims)] if value is None else dims)
    axis = dims.index("batch") if "batch" in dims else (0 if dims and value is None else None)
    return InputSpec(name=m["name"], shape=dims, dtype=dtype, batch_axis=axis, value=value)


def _number(text: str, dtype: str):
    text = text.strip()
    kind = np.dtype(dtype).kind
    if kind == "b":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(text)
        return text.lower() in ("true", "1")
    return int(text) if kind in "iu" else float(text)


def input_from_config(item: Union[str, dict], where: str = "recipe inputs") -> InputSpec:
    """An input declaration from a CLI string or a recipe mapping ``{name, shape, dtype, batch_axis, value}``."""
    if isinstance(item, InputSpec):
        return item
    if isinstance(item, str):
        return parse_input_decl(item)
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: an input is a string NAME:DIMS[:DTYPE][=VALUE] or a mapping, got {item!r}")
    data = dict(item)
    shape = data.get("shape", [])
    if shape == "scalar":
        data["shape"] = shape = []
    if "batch_axis" not in data:
        data["batch_axis"] = (shape.index("batch") if "batch" in shape
                              else (0 if shape and data.get("value") is None else None))
    try:
        return InputSpec(**data)
    except Exception as e:  # pydantic ValidationError: one line naming the input
        raise ConfigError(f"{where}: input {item!r} is not valid ({str(e).splitlines()[-1].strip()}); fields are "
                          f"name, shape, dtype, batch_axis, value") from None


def guess_state_pairs(spec: "ModelSpec") -> list[StatePair]:
    """State pairs read off the names, as exporters write them: ``state``/``stateN`` (silero), ``h0``/``hn``,
    ``c0``/``cn``, ``x``/``x_out``, ``new_x``, ``next_x``. Only inputs with a batch axis; each output once."""
    outs = set(spec.output_names)
    pairs: list[StatePair] = []
    for inp in spec.inputs:
        if inp.constant or inp.batch_axis is None or not inp.shape:
            continue
        n = inp.name
        stem = n[:-1] if n.endswith("0") else n
        for cand in (f"{n}N", f"{n}n", f"{n}_out", f"{n}_new", f"new_{n}", f"next_{n}", f"out_{n}",
                     f"{stem}n", f"{stem}N", f"{stem}_n"):
            if cand in outs and cand != n and all(p.output != cand for p in pairs):
                pairs.append(StatePair(input=n, output=cand))
                break
    return pairs


def parse_state_decl(item: Union[str, dict]) -> StatePair:
    """``IN:OUT`` (``--state state:stateN``) or a recipe mapping ``{input: IN, output: OUT}``."""
    if isinstance(item, StatePair):
        return item
    if isinstance(item, dict) and set(item) == {"input", "output"}:
        return StatePair(input=str(item["input"]), output=str(item["output"]))
    if isinstance(item, str) and re.fullmatch(r"[^:\s]+:[^:\s]+", item.strip()):
        a, b = item.strip().split(":")
        return StatePair(input=a, output=b)
    raise ConfigError(f"--state '{item}': expected STATE_INPUT:STATE_OUTPUT (e.g. state:stateN) or, in a recipe, "
                      f"{{input: state, output: stateN}}")
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
