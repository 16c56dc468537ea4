"""What this CPU can do for int8 and reduced-precision inference: the capabilities runtimes pick kernels by.

x86-64: ``avx2``, ``fma``, ``avx512f``, ``avx512_vnni``, ``avx_vnni``, ``amx_int8``, ``amx_bf16``, ``bf16``
(AVX-512 BF16), and ``vnni`` (either int8 dot-product instruction: AVX-512 VNNI or AVX-VNNI).
ARM64: ``dotprod`` (SDOT/UDOT), ``i8mm`` (int8 matrix multiply), ``fp16`` (half-precision arithmetic),
``bf16``.

The capabilities are those of the process, not only of the machine: on x86 the ``cpuid`` instruction is run
in-process (a 30-byte routine through ctypes), so a CPU model chosen by qemu's user-mode emulation
(``qemu-x86_64-static -cpu max``, which has no AVX-512) is seen as such, whereas ``/proc/cpuinfo`` under
qemu-user describes the host. /proc/cpuinfo is still read: its flags say what the kernel enabled (a CPU can
report AVX-512 that the OS has not turned on), so the result is cpuid ∩ cpuinfo. On ARM the kernel's
hardware-capability bits (``getauxval``, which qemu-user emulates) are used, with /proc/cpuinfo as fallback.

Nothing heavy is imported: this module is used by ``edgefm targets`` and by the manifest of every compress."""

from __future__ import annotations

import ctypes
import functools
import mmap
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

#: Every capability name a target profile may list under ``requires`` (see targets/*.yaml).
KNOWN = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "vnni", "amx_int8", "amx_bf16", "bf16",
         "dotprod", "i8mm", "fp16")

#: What each capability buys, for messages such as "this CPU lacks vnni (int8 dot products)".
MEANING = {
    "avx2": "256-bit integer SIMD", "fma": "fused multiply-add", "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 int8 dot products", "avx_vnni": "AVX int8 dot products",
    "vnni": "int8 dot products: AVX-512 VNNI or AVX-VNNI", "amx_int8": "AMX int8 tiles",
    "amx_bf16": "AMX bf16 tiles", "bf16": "bf16 arithmetic", "dotprod": "Arm int8 dot products",
    "i8mm": "Arm int8 matrix multiply", "fp16": "Arm half-precision arithmetic",
}

# /proc/cpuinfo spellings -> our names (x86 "flags", Arm "Features")
_CPUINFO_NAMES = {
    "avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
    "amx_int8": "amx_int8", "amx_bf16": "amx_bf16", "avx512_bf16": "bf16",
    "asimddp": "dotprod", "i8mm": "i8mm", "asimdhp": "fp16", "bf16": "bf16",
}


@dataclass(frozen=True)
class HostCaps:
    """The CPU this process runs on: architecture, model name and the capabilities in ``KNOWN`` it has."""

    arch: str
    cpu_model: str
    caps: frozenset = field(default_factory=frozenset)
    source: str = "cpuinfo"  # how the capabilities were read: "cpuid+cpuinfo", "cpuid", "hwcap", "cpuinfo"

    def has(self, cap: str) -> bool:
        return cap in self.caps

    def missing(self, required) -> list[str]:
        """The capabilities of ``required`` this host lacks, in the order given."""
        return [c for c in required if c not in self.caps]

    @property
    def isa(self) -> str:
        """The best int8 instruction set, short, for machine ids: amx, avx512vnni, avxvnni, avx512, avx2,
        i8mm, dotprod, neon or the bare architecture."""
        for cap, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512vnni"), ("avx_vnni", "avxvnni"),
                          ("avx512f", "avx512"), ("avx2", "avx2"), ("i8mm", "i8mm"), ("dotprod", "dotprod")):
            if cap in self.caps:
                return name
        return "neon" if self.arch in ("aarch64", "arm64") else "base"

    def as_dict(self) -> dict:
        """For the manifest and result files."""
        return {"arch": self.arch, "cpu_model": self.cpu_model, "isa": self.isa, "caps": sorted(self.caps),
                "source": self.source}


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[Optional[str], Optional[set[str]]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None, None
    model = None
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            model = m.group(1).strip()
            break
    m = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.M)
    return model, (set(m.group(1).split()) if m else None)


# cpuid(leaf=edi, subleaf=esi, out=rdx): push rbx; mov eax,edi; mov ecx,esi; mov r8,rdx; cpuid;
# mov [r8],eax; mov [r8+4],ebx; mov [r8+8],ecx; mov [r8+12],edx; pop rbx; ret   (System V x86-64 ABI)
_CPUID_CODE = bytes.fromhex("53" "89f8" "89f1" "4989d0" "0fa2" "418900" "41895804" "41894808" "4189500c" "5b" "c3")


def _cpuid_reader():
    """A callable cpuid(leaf, subleaf) -> (eax, ebx, ecx, edx), or None where executable memory is refused."""
    try:
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, AttributeError, ValueError):
        return None
    buf.write(_CPUID_CODE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p)(addr)

    def cpuid(leaf: int, sub: int = 0) -> tuple[int, int, int, int]:
        out = (ctypes.c_uint32 * 4)()
        fn(leaf, sub, ctypes.addressof(out))
        return tuple(out)

    cpuid._keep = buf  # the code page lives as long as the function
    return cpuid


def _x86_cpuid_caps() -> Optional[set[str]]:
    cpuid = _cpuid_reader()
    if cpuid is None:
        return None
    max_leaf = cpuid(0)[0]
    _, _, ecx1, _ = cpuid(1)
    caps = set()
    if ecx1 >> 12 & 1:
        caps.add("fma")
    if max_leaf >= 7:
        _, ebx7, ecx7, edx7 = cpuid(7, 0)
        eax71 = cpuid(7, 1)[0]
        for reg, bit, cap in ((ebx7, 5, "avx2"), (ebx7, 16, "avx512f"), (ecx7, 11, "avx512_vnni"),
                              (edx7, 25, "amx_int8"), (edx7, 22, "amx_bf16"), (eax71, 4, "avx_vnni"),
                              (eax71, 5, "bf16")):
            if reg >> bit & 1:
                caps.add(cap)
    return caps


def _arm_hwcap_caps() -> Optional[set[str]]:
    """Linux arm64 HWCAP bits (asm/hwcap.h): ASIMDHP 1<<10, ASIMDDP 1<<20; HWCAP2: I8MM 1<<13, BF16 1<<14."""
    try:
        libc = ctypes.CDLL(None)
        getauxval = libc.getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    hw, hw2 = getauxval(16), getauxval(26)  # AT_HWCAP, AT_HWCAP2
    if not hw:
        return None
    caps = set()
    for word, bit, cap in ((hw, 10, "fp16"), (hw, 20, "dotprod"), (hw2, 13, "i8mm"), (hw2, 14, "bf16")):
        if word >> bit & 1:
            caps.add(cap)
    return caps


@functools.lru_cache(maxsize=1)
def detect() -> HostCaps:
    """The capabilities of the CPU this process runs on (cached; see the module docstring for how)."""
    arch = platform.machine().lower()
    model, flags = _cpuinfo()
    from_cpuinfo = {_CPUINFO_NAMES[f] for f in (flags or ()) if f in _CPUINFO_NAMES}
    caps, source = from_cpuinfo, "cpuinfo"
    if arch in ("x86_64", "amd64"):
        got = _x86_cpuid_caps()
        if got is not None:
            # cpuid: what this (possibly emulated) CPU has; cpuinfo: what the kernel enabled
            caps, source = (got & from_cpuinfo, "cpuid+cpuinfo") if flags is not None else (got, "cpuid")
    elif arch in ("aarch64", "arm64"):
        got = _arm_hwcap_caps()
        if got is not None:
            caps, source = got, "hwcap"
    if caps & {"avx512_vnni", "avx_vnni"}:
        caps = caps | {"vnni"}
    return HostCaps(arch=arch, cpu_model=model or platform.processor() or arch, caps=frozenset(caps), source=source)


def lacks_note(required, host: Optional[HostCaps] = None) -> Optional[str]:
    """One phrase for `edgefm targets`/`bench` when this host lacks some of ``required``, else None."""
    host = host or detect()
    miss = host.missing(required)
    if not miss:
        return None
    return "this CPU lacks " + ", ".join(f"{c} ({MEANING.get(c, c)})" for c in miss)


def onednn_bf16_allowed() -> bool:
    """False where ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) caps oneDNN below its bf16 ISAs.
    OpenVINO's CPU plugin honours the cap for its kernels but still reports BF16 and picks bf16 as the default
    precision on a bf16 CPU, and then fails to compile ("could not create a primitive descriptor"): callers
    ask for f32 instead. The cap is how an AVX2-only CPU is imitated on a newer one (tests, comparisons)."""
    import os

    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return not cap or any(k in cap for k in ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT"))
