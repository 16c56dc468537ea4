"""Resident memory of the current process: now, and the kernel's high-water mark.

Each measurement runs in its own subprocess, so these figures belong to one runtime and one model alone.
The peak is read from ``VmHWM`` (the process's own address space), not ``getrusage``'s ``ru_maxrss``:
after fork+exec, ``ru_maxrss`` starts from the *parent's* high-water mark (the kernel folds the old
address space's mark into it at exec), so a worker spawned by a 500 MiB parent would report 500 MiB.
``/usr/bin/time -v`` is a tiny parent, so its "Maximum resident set size" equals our ``VmHWM`` for the
same command (checked in tests/integration/test_bench.py). We never reset the mark (``clear_refs``):
the kernel would then report a different figure to ``wait4`` depending on whether a thread had exited."""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path
from typing import Optional

_MIB = 1024 * 1024


def rss_mb() -> float:
    """Current resident set size, MiB."""
    import psutil

    return psutil.Process().memory_info().rss / _MIB


def peak_rss_mb() -> float:
    """High-water mark of resident memory of this process since exec, MiB:
    ``VmHWM`` where /proc exists, else ``getrusage`` ``ru_maxrss``."""
    hwm = hwm_mb()
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def hwm_mb() -> Optional[float]:
    """``VmHWM`` from /proc/self/status (the mm's own mark, without exited threads' maxima), MiB."""
    try:
        m = re.search(r"^VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) / 1024 if m else None
