"""What a search may vary (``SearchSpace``), what the result must meet (``Budget``) and how the search runs
(``SearchConfig``). A recipe's ``search:`` section fills the same models."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefm.errors import ConfigError, describe_validation


class SearchSpace(BaseModel):
    """The knobs of ``edgefm compress`` a trial picks from. Each list is a categorical choice."""

    model_config = ConfigDict(extra="forbid")
    prune: list[Optional[float]] = Field(default_factory=lambda: [None, 0.25, 0.5],
                                         description="Channel prune ratios (None: no pruning)")
    macs_target: list[Optional[float]] = Field(default_factory=lambda: [None],
                                               description="Share of MACs removed (overrides prune when set)")
    distill_epochs: list[int] = Field(default_factory=lambda: [0],
                                      description="Distillation epochs after pruning (0: off; ignored unpruned)")
    quantize: list[Literal["int8", "fp16", "fp32"]] = Field(default_factory=lambda: ["int8", "fp32"])
    keep_fp32: list[list[str]] = Field(default_factory=lambda: [[]],
                                       description="Sets of node names / op types kept in float when quantizing")
    targets: list[str] = Field(default_factory=lambda: ["onnxruntime-cpu"])

    def size(self) -> int:
        n = 1
        for v in (self.prune, self.macs_target, self.distill_epochs, self.quantize, self.keep_fp32, self.targets):
            n *= len(v)
        return n


class Budget(BaseModel):
    """What the chosen bundle must meet. Latency is the p50 of batch-1 calls on the measuring machine."""

    model_config = ConfigDict(extra="forbid")
    latency_ms: Optional[float] = Field(None, gt=0)
    accuracy_drop: Optional[float] = Field(None, ge=0, description="Top-1 points below the unpruned fp32 model")
    size_mb: Optional[float] = Field(None, gt=0)

    def met_by(self, r: dict) -> bool:
        if r.get("status") != "ok":
            return False
        if self.latency_ms is not None and r["latency_p50_ms"] > self.latency_ms:
            return False
        if self.accuracy_drop is not None and r["accuracy_drop"] > self.accuracy_drop:
            return False
        if self.size_mb is not None and r["size_mb"] > self.size_mb:
            return False
        return True

    def describe(self) -> str:
        parts = [f"latency p50 <= {self.latency_ms} ms" if self.latency_ms is not None else "",
                 f"accuracy drop <= {self.accuracy_drop} points" if self.accuracy_drop is not None else "",
                 f"size <= {self.size_mb} MB" if self.size_mb is not None else ""]
        return ", ".join(p for p in parts if p) or "none"


class SearchConfig(BaseModel):
    """How the search runs."""

    model_config = ConfigDict(extra="forbid")
    space: SearchSpace = Field(default_factory=SearchSpace)
    budget: Budget = Field(default_factory=Budget)
    trials: int = Field(12, ge=1, description="Trials asked of the sampler (cache hits count)")
    sampler: Literal["nsga2", "tpe", "grid", "random"] = "nsga2"
    seed: int = 0
    storage: Path = Field(Path("edgefm-search"), description="Folder every node can reach: trials, bundles, report")
    ray_address: Optional[str] = Field(None, description="Existing Ray cluster; None starts an embedded one")
    num_cpus: Optional[int] = Field(None, ge=1, description="Embedded Ray: CPUs (default: all cores)")
    memory_gb: float = Field(1.5, gt=0, description="Memory each trial asks Ray for (bounds parallel trials)")
    max_retries: int = Field(3, ge=0, description="Times a trial killed with its worker or node is re-run")
    timing_runs: int = Field(300, ge=10, description="Timed batch-1 calls per latency measurement")
    spread: bool = Field(True, description="Ask Ray to spread trials over nodes")


def parse_budget(text: Optional[str]) -> Budget:
    """``latency_ms=2,accuracy_drop=1`` -> Budget (one clear line on a bad key or value)."""
    if not text:
        return Budget()
    data = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in Budget.model_fields:
            raise ConfigError(f"--budget {text!r}: '{part}' is not KEY=VALUE with KEY one of "
                              f"{', '.join(Budget.model_fields)}")
        try:
            data[key] = float(value)
        except ValueError:
            raise ConfigError(f"--budget {text!r}: {key}={value!r} is not a number") from None
    try:
        return Budget(**data)
    except ValidationError as e:
        raise ConfigError(f"--budget {text!r}: {describe_validation(e)}") from None


def search_config(section: dict, **overrides) -> SearchConfig:
    """A recipe's ``search:`` section refined by CLI values (None = not given)."""
    data = dict(section or {})
    for k, v in overrides.items():
        if v is None or v == []:
            continue
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    try:
        return SearchConfig(**data)
    except ValidationError as e:
        raise ConfigError(f"invalid search configuration (recipe search: / flags): {describe_validation(e)}") from None


def from_recipe(recipe: Optional[Path], fields: dict, search_overrides: dict):
    """(base CompressConfig, SearchConfig) from a recipe YAML — its ``search:`` section fills the
    SearchConfig, the rest the CompressConfig every trial starts from — refined by flags (None = not given)."""
    from edgefm.config import build_config, load_recipe

    data = load_recipe(recipe) if recipe else {}
    section = data.pop("search", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"recipe {recipe}: 'search' must be a mapping (space, budget, trials, ...)")
    if "trust_source" in data:
        raise ConfigError(f"recipe {recipe}: trust_source can only be given on the command line (--trust-source)")
    merged = {**data, **{k: v for k, v in fields.items() if v is not None and v != []}}
    try:
        base = build_config(None, **merged)
    except ConfigError as e:
        raise ConfigError(f"recipe {recipe}: {e}" if recipe else str(e)) from None
    space = dict(section.get("space") or {})
    space.update({k: v for k, v in (search_overrides.pop("space", None) or {}).items() if v is not None and v != []})
    return base, search_config({**section, "space": space}, **search_overrides)
