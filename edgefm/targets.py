"""Device profiles: ``TargetSpec`` and the lookup of ``targets/*.yaml``.

A target names the backend (runtime) that runs the model and the recipe it gets. Backend-specific
settings live in ``options`` and are validated by the backend's own pydantic model (extra="forbid"),
so a typo in a YAML file is an error, not a silently ignored key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefm.errors import TargetError, describe_validation

Backend = Literal["onnxruntime", "openvino", "tflite", "tensorrt"]
Precision = Literal["int8", "fp16", "fp32", "bf16"]

#: What a profile may require of the CPU that runs it (edgefm.hostcaps.KNOWN; kept literal so the YAML is checked
#: without importing hostcaps' ctypes code).
Capability = Literal["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "vnni", "amx_int8", "amx_bf16", "bf16",
                     "dotprod", "i8mm", "fp16"]


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
    requires: list[Capability] = Field(default_factory=list,
                                       description="CPU capabilities the recipe counts on (e.g. vnni, amx_int8, "
                                                   "dotprod); `edgefm targets`/`bench` say when the host lacks one")
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


def builtin_dir() -> Path:
    """The shipped profiles: package data ``edgefm/_profiles`` in a wheel (pyproject maps targets/ there), else
    the checkout's targets/ folder beside the package (editable installs, PYTHONPATH runs)."""
    from edgefm.shipped import folder

    return folder("targets")


def search_dirs() -> list[Path]:
    """Folders searched for ``*.yaml`` profiles: EDGEFM_TARGETS_PATH (os.pathsep-separated) first, then the
    shipped ones."""
    extra = [Path(p) for p in os.environ.get("EDGEFM_TARGETS_PATH", "").split(os.pathsep) if p]
    return extra + [builtin_dir()]


def load_target_file(path: Union[str, Path]) -> TargetSpec:
    """Read and validate one target YAML; errors name the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TargetError(f"target file {path}: cannot be read as YAML ({e})") from None
    if not isinstance(data, dict):
        raise TargetError(f"target file {path}: expected a mapping of fields, got {type(data).__name__}")
    data.setdefault("name", path.stem)
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


def host_note(spec: TargetSpec, host=None) -> Optional[str]:
    """Why this machine is not the device ``spec`` describes, in a phrase, or None when it is one: another CPU
    architecture, or a CPU lacking capabilities the profile ``requires`` (see edgefm.hostcaps)."""
    from edgefm import hostcaps

    host = host or hostcaps.detect()
    if spec.arch != "any" and spec.arch != host.arch:
        return f"{spec.arch} target, this host is {host.arch}"
    return hostcaps.lacks_note(spec.requires, host)
