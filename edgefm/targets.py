"""Device profiles: ``TargetSpec`` and the lookup of ``targets/*.yaml``.

A target names the backend (runtime) that runs the model and the recipe it gets. Backend-specific
settings live in ``options`` and are validated by the backend's own pydantic model (extra="forbid"),
so a typo in a YAML file is an error, not a silently ignored key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefm.errors import TargetError, describe_validation

Backend = Literal["onnxruntime", "openvino", "tflite", "tensorrt"]
Precision = Literal["int8", "fp16", "fp32", "bf16"]

#: Folder shipped with the source tree; EDGEFM_TARGETS_PATH (os.pathsep-separated) adds more.
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "targets"


class TargetSpec(BaseModel):
    """One device profile."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="Target name, used with --target")
    description: str = Field("", description="One line for `edgefm targets`")
    backend: Backend = Field(description="Runtime that executes the artifact")
    precision: Precision = Field("int8", description="Default precision when --quantize is not given")
    device: str = Field("cpu", description="Device inside the runtime (cpu, gpu, npu, dla …)")
    arch: Literal["x86_64", "aarch64", "any"] = Field("any", description="CPU architecture of the device")
    cpu_core: Optional[str] = Field(None, description="CPU core model (qemu -cpu name for emulated checks)")
    threads: Optional[int] = Field(None, description="Intra-op threads; None lets the runtime decide")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific settings")
    hardware: dict[str, Any] = Field(default_factory=dict,
                                     description="Facts about the device (compute capability, memory, versions …)")


def backend_options(model: type[BaseModel], target: TargetSpec):
    """``target.options`` validated by a backend's own pydantic model (extra="forbid"); a bad key or value is a
    ``TargetError`` naming the target and the field."""
    try:
        return model(**(target.options or {}))
    except ValidationError as e:
        raise TargetError(f"target '{target.name}': {describe_validation(e, 'options.')}") from None


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("EDGEFM_TARGETS_PATH", "").split(os.pathsep) if p]
    return extra + [BUILTIN_DIR]


def load_target_file(path: Path) -> TargetSpec:
    """Read and validate one target YAML; errors name the file and the field."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TargetError(f"target file {path}: cannot be read as YAML ({e})") from None
    if not isinstance(data, dict):
        raise TargetError(f"target file {path}: expected a mapping of fields, got {type(data).__name__}")
    data.setdefault("name", Path(path).stem)
    try:
        return TargetSpec(**data)
    except ValidationError as e:
        raise TargetError(f"target file {path}: {describe_validation(e)}") from None


def list_targets() -> dict[str, TargetSpec]:
    """All known targets by name (earlier search dirs win)."""
    found: dict[str, TargetSpec] = {}
    for d in reversed(search_dirs()):
        for p in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            t = load_target_file(p)
            found[t.name] = t
    return found


def get_target(name_or_path: str) -> TargetSpec:
    """A target by name, or by path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return load_target_file(p)
    targets = list_targets()
    if name_or_path not in targets:
        raise TargetError(f"unknown target '{name_or_path}'; known targets: {', '.join(sorted(targets))} "
                          f"(or pass a path to a target .yaml)")
    return targets[name_or_path]
