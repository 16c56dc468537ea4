"""The typed configurations of ``edgefm bench`` and ``edgefm report`` (the CLI only fills these)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefm.errors import ConfigError


class BenchConfig(BaseModel):
    """``edgefm bench BUNDLE``: what to measure and how long."""

    model_config = ConfigDict(extra="forbid")
    bundle: Path = Field(description="Bundle folder (manifest.json + artifacts)")
    targets: list[str] = Field(default_factory=list,
                               description="Targets to measure; empty: every target whose runtime is installed")
    eval: Optional[Path] = Field(None, description="Eval data (.npz with one array per input, optional 'labels'); "
                                                   "default: the bundle's eval.npz")
    batches: list[int] = Field(default_factory=lambda: [1], description="Batch sizes, e.g. 1,8")
    threads: Optional[int] = Field(None, ge=1,
                                   description="Intra-op threads for every runtime; None: each runtime's default")
    warmup: int = Field(10, ge=0, description="Untimed runs before timing")
    runs: Optional[int] = Field(None, ge=1, description="Fixed number of timed runs (overrides seconds)")
    seconds: float = Field(2.0, gt=0, description="Timed runs last this long (at least min_runs) unless runs is set")
    min_runs: int = Field(10, ge=1, description="Timed runs at least, whatever the time budget")
    max_eval_samples: Optional[int] = Field(None, ge=1, description="Use at most this many eval samples")
    eval_batch: int = Field(32, ge=1, description="Batch size of the accuracy pass over the eval data")
    baselines: bool = Field(True, description="Also measure the fp32 ONNX (ONNX Runtime) and torch eager baselines")
    torch_baseline: bool = Field(True, description="Measure the source model in torch eager mode (needs torch_source)")
    torch_source: Optional[Path] = Field(None, description="Checkpoint of the torch eager baseline (--torch-source); "
                                                           "never taken from the bundle, which is data")
    arch: Optional[str] = Field(None, description="--arch of torch_source when it is a state_dict")
    trust_source: bool = Field(False, description="torch_source may be a torch.export program (.pt2), whose "
                                                  "loading unpickles and can run code")
    json_out: Optional[Path] = Field(None, description="Write the result JSON here (--json)")
    md_out: Optional[Path] = Field(None, description="Write the Markdown table here (--md)")
    plots: Optional[Path] = Field(None, description="Write latency/accuracy plots (PNG) into this folder")
    worker_timeout_s: float = Field(900.0, gt=0, description="Give up on one measurement after this long")
    verbose: bool = False

    @field_validator("batches", "targets", mode="before")
    @classmethod
    def _split_commas(cls, v: Any) -> Any:
        # --batch 1,8 and --batch 1 --batch 8 both work; so do "a,b" target lists
        if isinstance(v, (str, int)):
            v = [v]
        if isinstance(v, (list, tuple)):
            out: list[Any] = []
            for x in v:
                out.extend(p.strip() for p in x.split(",") if p.strip()) if isinstance(x, str) else out.append(x)
            return out
        return v

    @field_validator("batches")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("batch sizes must be integers >= 1, e.g. 1,8")
        return sorted(set(v))

    @model_validator(mode="after")
    def _runs_or_seconds(self) -> "BenchConfig":
        if self.runs is not None and self.runs < 1:
            raise ValueError("runs must be >= 1")
        return self


class ReportConfig(BaseModel):
    """``edgefm report RESULT.json... -o DIR``: merge results into one table, CSV and plots."""

    model_config = ConfigDict(extra="forbid")
    results: list[Path] = Field(min_length=1, description="Result JSON files written by edgefm bench / the suites")
    out: Path = Field(description="Folder for report.md, results.csv, pareto.png, latency.png")
    batch: Optional[int] = Field(None, description="Batch size the Pareto plot uses (default: the smallest measured)")
    plots: bool = Field(True, description="Draw the plots (needs matplotlib, the [bench] extra)")


def build(model: type[BaseModel], **fields: Any) -> Any:
    """Validate CLI fields into ``model``; None means "not given". Errors become one-line ConfigErrors."""
    data = {k: v for k, v in fields.items() if v is not None}
    try:
        return model(**data)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'value'}: {x['msg']}" for x in e.errors())
        raise ConfigError(f"invalid {model.__name__.replace('Config', '').lower()} options: {errs}") from None
