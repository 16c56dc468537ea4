"""Resident memory of the current process: now, and the kernel's high-water mark.

Each measurement runs in its own subprocess, so these figures belong to one runtime alone. On Linux the
high-water mark is reset after loading (``/proc/self/clear_refs``), so the peak covers inference only;
the kernel reports that same reset mark to a parent's ``wait4`` at exit, which is why ``/usr/bin/time
-v`` shows the same figure for the same process (checked in tests/integration/test_bench.py).

The peak is read from ``VmHWM`` (the process's own address space), not ``getrusage``'s ``ru_maxrss``:
after fork+exec, ``ru_maxrss`` starts from the *parent's* high-water mark (the kernel folds the old
address space's mark into it at exec), so a worker spawned by a 500 MiB parent would report 500 MiB."""

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
    """High-water mark of resident memory of this process since exec (or since ``reset_peak``), MiB:
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


def reset_peak() -> bool:
    """Reset the high-water mark to the current RSS; False where the OS does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
