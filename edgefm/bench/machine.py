"""What machine a result came from: CPU model and the flags inference kernels care about, cores, memory,
OS, installed runtime versions, and on a Jetson its power mode and clocks. Nothing here imports a runtime:
versions come from the installed distributions' metadata."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Optional

from edgefm.bench import jetson
from edgefm.bench.schema import MachineInfo

#: CPU flags that change which int8/bf16 kernels a runtime can use (x86 and Arm spellings).
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                  "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16",
                  "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2", "fphp")

#: Distributions whose versions go into every result.
RUNTIMES = ("edgefm", "numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "ai-edge-litert", "tflite-runtime",
            "tensorrt", "torch", "nncf", "onnx")


def cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[Optional[str], set[str]]:
    """(model name, flags) from /proc/cpuinfo; (None, set()) where it does not exist."""
    from edgefm.hostcaps import _cpuinfo

    model, flags = _cpuinfo(path)
    return model, flags or set()


def runtime_versions() -> dict[str, str]:
    out = {}
    for dist in RUNTIMES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def slug(text: str) -> str:
    text = re.sub(r"\((?:R|TM|tm|r)\)|CPU|Processor|@.*$|\d+-Core", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_id(arch: str, cpu_model: str, cores: int, jetson_model: Optional[str] = None,
               isa: Optional[str] = None) -> str:
    """Short stable folder name, e.g. ``x86_64-amd-epyc-avx512vnni-2c`` or
    ``aarch64-nvidia-jetson-orin-nano-dotprod-6c``. The int8 ISA (edgefm.hostcaps: amx, avx512vnni, avxvnni,
    avx512, avx2, i8mm, dotprod …) is part of it because one CPU name covers CPUs with different int8 kernels
    (an "AMD EPYC" may be a Zen 3 with AVX2 only or a Zen 4 with AVX-512 VNNI)."""
    if os.environ.get("EDGEFM_MACHINE_ID"):
        return slug(os.environ["EDGEFM_MACHINE_ID"])
    name = slug(jetson_model or cpu_model)[:40].strip("-")
    return f"{arch}-{name}-{isa}-{cores}c" if isa else f"{arch}-{name}-{cores}c"


def machine_info() -> MachineInfo:
    """Describe this machine."""
    import psutil

    from edgefm.hostcaps import detect

    model, flags = cpuinfo()
    arch = platform.machine()
    model = model or platform.processor() or arch
    cores = os.cpu_count() or 1
    jet = jetson.info()
    return MachineInfo(
        id=machine_id(arch, model, cores, jet.model if jet else None, isa=detect().isa), arch=arch, cpu_model=model,
        cpu_flags=[f for f in RELEVANT_FLAGS if f in flags], logical_cores=cores,
        physical_cores=psutil.cpu_count(logical=False), memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
        os=platform.platform(), python=platform.python_version(), runtime_versions=runtime_versions(), jetson=jet,
        load_avg_1m=load_average())


def load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def busy_warning(info: MachineInfo) -> Optional[str]:
    """A line to show when other work was competing for the CPU while we measured."""
    if info.load_avg_1m is not None and info.load_avg_1m > 0.75 * info.logical_cores:
        return (f"warning: this machine was busy (load average {info.load_avg_1m:.1f} on {info.logical_cores} cores): "
                f"latencies are inflated and noisy; measure again when it is quiet, or compare only ratios of one run")
    return None
