"""``CompressConfig``: the one typed configuration of ``edgefm compress``. A recipe YAML and CLI flags
fill the same model; ``--dry-run`` prints it resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefm.errors import ConfigError, describe_validation
from edgefm.fidelity import Limits
from edgefm.stages.distill import DistillConfig
from edgefm.stages.prune import PruneConfig


class Tolerances(BaseModel):
    """Limits each step is checked against. Defaults are per step; ``max_accuracy_drop`` relaxes or
    tightens the quantization check when eval data has labels."""

    model_config = ConfigDict(extra="forbid")
    export: Limits = Field(default_factory=lambda: Limits(max_abs=1e-3, max_abs_scale=2e-5, cosine=0.99999),
                           description="torch vs exported fp32 ONNX (max abs: the larger of 1e-3 and 2e-5 x the "
                                       "output's largest value, as for fp32 in another runtime)")
    quantize: Limits = Field(default_factory=lambda: Limits(cosine=0.98, top1_agreement=0.95, accuracy_drop=1.0),
                             description="compressed artifact vs fp32 ONNX on the eval data")
    fp16: Limits = Field(default_factory=lambda: Limits(cosine=0.999, top1_agreement=0.99),
                         description="fp16/bf16 artifact vs fp32 ONNX")
    compile: Limits = Field(default_factory=lambda: Limits(max_abs=1e-3, cosine=0.9999),
                            description="fp32 artifact in another runtime vs fp32 ONNX")


class CompressConfig(BaseModel):
    """Everything ``edgefm compress`` needs. Every field can come from a recipe YAML or a CLI flag."""

    model_config = ConfigDict(extra="forbid")
    source: Path = Field(description="Checkpoint: HF folder, .pt/.pth/.safetensors (+arch), TorchScript, .pt2, .onnx")
    output: Path = Field(description="Bundle folder to write")
    targets: list[str] = Field(default_factory=lambda: ["onnxruntime-cpu"],
                               description="Target names (targets/*.yaml) or paths to target YAML files")
    arch: Optional[str] = Field(None, description="module.path:factory, file.py:factory or timm:NAME for state_dicts")
    submodule: Optional[str] = Field(
        None, description="Dotted path of the submodule to compress instead of the whole model (TorchScript, or a "
                          "state_dict with --arch), e.g. _model: the inner model of a scripted module that keeps its "
                          "state in attributes, which takes the state as an input (declare it with --state)")
    inputs: list[Union[str, dict[str, Any]]] = Field(
        default_factory=list, description="Input declarations NAME:DIMS[:DTYPE][=VALUE] (e.g. sr:scalar:int64=16000, "
                                          "state:2,batch,128) or mappings {name, shape, dtype, batch_axis, value}")
    state: list[Union[str, dict[str, str]]] = Field(
        default_factory=list, description="Recurrent state pairs STATE_IN:STATE_OUT (or {input, output}): data are "
                                          "streams of chunks, run with the state fed back call to call")
    state_guess: bool = Field(True, description="Without `state`, pair inputs/outputs named like state/stateN, "
                                                 "h0/hn (noted in the manifest)")
    calib: Optional[Path] = Field(None, description="Calibration data: .npz, .txt (one sentence a line) or image folder")
    eval: Optional[Path] = Field(None, description="Evaluation data (same formats; .npz may hold 'labels')")
    eval_fraction: float = Field(0.25, gt=0, lt=1, description="Share of --calib held back for eval when --eval is absent")
    max_calib_samples: int = Field(256, ge=1, description="Calibration samples used at most")
    max_eval_samples: int = Field(512, ge=1, description="Evaluation samples used at most")
    max_length: int = Field(128, ge=1, description="Sequence length text is padded/truncated to")
    prune: Optional[PruneConfig] = Field(None, description="Structured pruning / sparsity before export; None: no pruning")
    distill: Optional[DistillConfig] = Field(
        None, description="Distill the pruned model from the original (needs prune); None: no distillation")
    train_data: Optional[Path] = Field(
        None, description="Training data for distillation: .npz (inputs, optional 'labels') or .txt (one sentence a "
                          "line); unlabeled data works. Default: --calib")
    quantize: Optional[Literal["int8", "fp16", "fp32"]] = Field(
        None, description="Precision for every target; None uses each target's default")
    keep_fp32: list[str] = Field(default_factory=list,
                                 description="Node names or op types left in float when quantizing")
    max_accuracy_drop: Optional[float] = Field(
        None, ge=0, le=100, allow_inf_nan=False,
        description="Allowed top-1 drop in points (labels), a finite number from 0 to 100 — overrides "
                    "tolerances.quantize.accuracy_drop (the contract's limits are otherwise unchanged)")
    fallback: bool = Field(
        True, description="When an int8 build misses the accuracy contract, keep the parts quantization damaged "
                          "most in higher precision (float; fp16 on TensorRT) until it holds, within a budget, and "
                          "record them in the manifest (edgefm.quantize.fallback). The limits stay the same. False "
                          "(--no-fallback): refuse such a build instead")
    tolerances: Tolerances = Field(default_factory=Tolerances)
    outputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="What outputs mean: name -> {kind: logits|probabilities|binary|ordinal|embedding|regression|"
                    "detections|state|other, <params/limits>} (CLI: --output-kind NAME:KIND[:k=v,...]); "
                    "undeclared outputs get a guessed kind, printed and recorded")
    metric: Optional[str] = Field(
        None, description="Your task metric 'path/to/file.py:fn', fn(ref_outputs, got_outputs, labels) -> float or "
                          "dict (key 'score' or the first is gated), higher is better; run at compress time only")
    metric_drop: Optional[float] = Field(
        None, ge=0, allow_inf_nan=False, description="Largest allowed drop of --metric below its fp32 value, in the metric's units "
                                "(default 0.01)")
    metric_replaces_gates: bool = Field(
        False, description="With --metric: gate on it alone instead of on it and every output's gates")
    opset: Optional[int] = Field(None, description="ONNX opset; None picks the exporter's default")
    seed: int = Field(0, description="Seed for sampling and splits")
    cache_dir: Optional[Path] = Field(None, description="Cache of verified ONNX exports by content hash (default ~/.cache/edgefm; EDGEFM_CACHE_DIR=0 turns it off)")
    force: bool = Field(False, description="Replace OUT if it is an edgefm bundle (anything else is refused)")
    trust_source: bool = Field(False, description="Load a torch.export program (.pt2), whose loading unpickles "
                                                  "parts of the file and can run code: only for files you trust")
    dry_run: bool = Field(False, description="Print the resolved configuration and stop")
    verbose: bool = Field(False, description="Show tracebacks and debug logs")

    @field_validator("keep_fp32")
    @classmethod
    def _check_keep_fp32(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip():
                raise ValueError(f"{name!r} is not a node name or op type: each --keep-fp32 names a node (as in the "
                                 f"ONNX graph) or an op type such as MatMul")
        return v

    @field_validator("submodule")
    @classmethod
    def _check_submodule(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not all(part.isidentifier() or part.isdigit() for part in v.split(".")):
            raise ValueError(f"'{v}' is not a dotted submodule path such as _model or encoder.0 (the names "
                             f"named_modules() gives)")
        return v

    @field_validator("outputs")
    @classmethod
    def _check_outputs(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from edgefm.contract import check_decl

        for name, decl in v.items():
            if not isinstance(decl, dict):
                raise ValueError(f"output '{name}': expected a mapping such as {{kind: embedding}}")
            try:
                check_decl(name, decl, where="outputs")
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return v

    def fallback_allowed(self) -> bool:
        """Whether a target may keep the int8 parts that break the contract in higher precision."""
        return bool(self.fallback)

    def quant_limits(self) -> Limits:
        lim = self.tolerances.quantize.model_copy()
        if self.max_accuracy_drop is not None:
            lim.accuracy_drop = self.max_accuracy_drop
        return lim


def read_yaml_mapping(path: Path, what: str, expected: str, empty_ok: bool = False) -> dict[str, Any]:
    """A YAML file that must hold a mapping; every error is one line naming ``what`` and the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected {expected}")
    return data


def load_recipe(path: Path) -> dict[str, Any]:
    """Read a recipe YAML into a dict of CompressConfig fields (errors name the file)."""
    return read_yaml_mapping(path, "recipe", "a mapping of config fields", empty_ok=True)


def build_config(recipe: Optional[Path] = None, **fields: Any) -> CompressConfig:
    """Merge a recipe (lowest priority) with explicitly given fields (None = not given)."""
    data = load_recipe(recipe) if recipe else {}
    if "trust_source" in data:  # trusting a file that can run code is the user's own, explicit choice
        raise ConfigError(f"recipe {recipe}: trust_source can only be given on the command line (--trust-source)")
    for k, v in fields.items():
        if v is None or v == []:
            continue
        # a flag refines a section of the recipe (--prune 0.5 keeps the recipe's other prune settings)
        data[k] = {**data[k], **v} if isinstance(v, dict) and isinstance(data.get(k), dict) else v
    try:
        return CompressConfig(**data)
    except ValidationError as e:
        errs = describe_validation(e)
        where = f"recipe {recipe} / flags" if recipe else "flags"
        raise ConfigError(f"invalid configuration ({where}): {errs}") from None
