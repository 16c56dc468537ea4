"""What every backend gets and returns. No heavy imports here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol

import numpy as np

from edgefm.bundle import StageRecord, TargetEntry
from edgefm.models.spec import ModelSpec
from edgefm.predictor import LoadOptions, Predictor  # noqa: F401 - re-exported
from edgefm.samples import Feed, Samples, streams_from_user  # noqa: F401 - re-exported: they live where every layer reaches them
from edgefm.targets import TargetSpec


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
    contract: Any = None  # edgefm.contract.Contract resolved once for (target, precision) by the pipeline;
    # None: backends resolve it from ``spec`` and ``config`` (tests, benchmarks driving one backend)
    progress: Optional[Callable[[str], None]] = None


def contract_for(job: "CompileJob", precision: Optional[str] = None):
    """The contract a step of ``job`` is held to: the one the pipeline resolved for the target's precision, or —
    for an intermediate step at another precision (an fp32 conversion before int8) — the same rules resolved
    for that precision from the same spec and config."""
    from edgefm.contract import resolve

    precision = precision or job.precision
    if job.contract is not None and job.contract.precision == precision:
        return job.contract
    contract = resolve(job.spec, job.config, precision)
    if job.contract is not None and job.contract.metric:  # the user metric already loaded for this run
        contract._metric_fn = job.contract._metric_fn
    return contract


def fallback_allowed(config: Any) -> bool:
    """Whether the accuracy fallback may keep the int8 parts that break the contract in higher precision: on by
    default (the contract's limits do not change), off with ``--no-fallback`` (``fallback: false``)."""
    return config is None or bool(getattr(config, "fallback", True))


#: What every refusal of an int8 build says the user can do (the fallback already ran unless --no-fallback).
def int8_way_out(config: Any, keep: str = "ops", precisions: str = "fp16/fp32") -> str:
    first = ("drop --no-fallback to let the most damaged parts stay in higher precision, "
             if not fallback_allowed(config) else "")
    return (f"{first}allow a bounded drop with --max-accuracy-drop, keep {keep} in float with --keep-fp32, or use "
            f"--quantize {precisions}")


def judge_job(job: "CompileJob", got: Mapping[str, np.ndarray], precision: Optional[str] = None):
    """``edgefm.contract.judge`` of ``got`` (outputs on ``job.eval``) against the fp32 reference."""
    from edgefm.contract import judge

    return judge(contract_for(job, precision), job.reference, got, job.eval.labels, job.eval.inputs)


def int8_slower_than_fp32(int8_ms: Optional[float], f32_ms: Optional[float], how: str) -> Optional[dict[str, Any]]:
    """When a target's int8 artifact measured slower than its own fp32 model at compile time (``how``: which
    runtime timed them, how), the figures and one sentence for the user; None when it was not slower or either
    figure is missing (not measured: nothing is claimed). Without int8 dot products (x86 VNNI) int8 kernels can
    lose to fp32, and on a tiny model the quantize/dequantize steps can cost more than the int8 arithmetic saves."""
    from edgefm import hostcaps

    if not f32_ms or not int8_ms or int8_ms <= f32_ms:
        return None
    host = hostcaps.detect()
    why = " (no VNNI)" if host.arch == "x86_64" and not host.has("vnni") else ""
    ratio = int8_ms / f32_ms
    return {"int8_ms": int8_ms, "f32_ms": f32_ms, "ratio": round(ratio, 3), "host_isa": host.isa, "measured": how,
            "note": f"int8 is {ratio:.2f}x slower than fp32 on this CPU{why}: {int8_ms:.3g} vs {f32_ms:.3g} ms at "
                    f"batch 1 ({how}); --quantize fp32 gives the faster artifact"}


@dataclass
class CompileResult:
    entry: TargetEntry
    stages: list[StageRecord] = field(default_factory=list)


# Optional verbs a backend module may declare in its ``CAPABILITIES`` (never probed with hasattr):
CAPABILITIES = {
    "availability": "availability(target) -> str: a finer 'here' than is_available (e.g. 'build only')",
    "check_rules": "check_rules(bundle, target_name, entry, manifest) -> list[str]: the runtime's own rules",
    "check_rules_for": "check_rules_for(bundle, built_for, other_target) -> list[str]: rules of another device",
    "verify_emulated": "verify_emulated(bundle, target, arch, cpu) -> (ok, detail): run under CPU emulation",
    "compile_on_device": "compile_engine(bundle, target, **overrides): build what only the device can build",
}
CAPABILITY_FUNCTIONS = {"availability": "availability", "check_rules": "check_rules",
                        "check_rules_for": "check_rules_for", "verify_emulated": "verify_emulated",
                        "compile_on_device": "compile_engine"}


class Backend(Protocol):
    """What every backend module provides. Optional verbs are declared by name in ``CAPABILITIES`` (see the
    table above); ``edgefm.backends.get_backend`` checks that the declared functions exist."""

    EXTRA: str
    CAPABILITIES: frozenset
    OPTIONS: type  # the pydantic model of a target's ``options:`` (extra="forbid")

    def is_available(self) -> bool: ...

    def versions(self) -> dict[str, str]: ...

    def compile(self, job: CompileJob) -> CompileResult: ...

    def load(self, bundle: Path, target_name: str, entry: TargetEntry, spec: ModelSpec,
             opts: LoadOptions) -> "Predictor": ...


def has(backend: Any, capability: str) -> bool:
    """Whether ``backend`` declares the optional ``capability``."""
    return capability in getattr(backend, "CAPABILITIES", frozenset())
