"""A steady C heap for CPU timing.

glibc's malloc serves a large block (a score matrix, an intermediate) either from its heap, which it
keeps, or from a fresh `mmap`, which the kernel fills page by page on first touch (a minor page
fault per 4 KiB, zeroed). Which one depends on a threshold glibc moves as the process frees memory,
so the same call in two processes differs by the faults alone: measured on a 2-core x86 machine,
SDPA's math path at N=1024 (fp32, 2 heads, one thread) took 8.3 to 17.7 ms in nine fresh processes
(1,700 to 3,400 faults a call where counted), and 7.0 to 8.9 ms with no fault in twelve once both
thresholds were fixed; at N=4096, 310 ms with 74,000 faults a call against 188 ms with none. The
faults are the allocator's history, not the method's cost, and they made an A/A comparison of two
identical runs fail by 25 %.

So the process that times CPU cases keeps freed memory on its heap (mmap and trim thresholds fixed
at 1 GiB): after a few warm-up calls (the heap settles as freed blocks are reused) a steady
call faults no page. Blocks over 1 GiB still come from mmap.
CUDA cases are untouched (their tensors live in the caching allocator, not in malloc).
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameter numbers, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30


def glibc() -> ctypes.CDLL | None:
    """The C library this process already runs on, if it is glibc (the symbols of the running
    program, so nothing is searched for or loaded)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_heap(device: str) -> bool:
    """Fix glibc's thresholds in this process when it times CPU cases; True if they are fixed.
    Idempotent; a no-op (False) for CUDA devices and where the C library is not glibc."""
    if not device.startswith("cpu"):
        return False
    libc = glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD_BYTES))


def describe(device: str) -> str | None:
    """What the timing process does to its heap on this device, for the run's provenance."""
    if not device.startswith("cpu"):
        return None
    if glibc() is None:
        return "default (not glibc: thresholds left as they are)"
    return f"glibc heap kept: mmap and trim thresholds fixed at {THRESHOLD_BYTES >> 20} MiB"
