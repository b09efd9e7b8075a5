"""Memory: what a configuration will need (pre-flight), what is free, and what a call used."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..core.case import Case

# Leave headroom for the allocator's fragmentation and the CUDA context.
FIT_FRACTION = 0.9


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def free_bytes(device: str) -> int:
    if device.startswith("cuda"):
        dev = torch.device(device)
        free, _total = torch.cuda.mem_get_info(dev)
        # memory the caching allocator holds but no tensor uses is free for the next case
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(free + cached)
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 2**62  # unknown: do not skip anything


def preflight(case: Case, extra_bytes: int | None, free: int) -> str | None:
    """A skip message if the case cannot fit in `free` bytes (inputs not yet allocated), else None."""
    if extra_bytes is None:
        return None
    need = extra_bytes + case.input_bytes()
    if need > FIT_FRACTION * free:
        return f"needs about {gib(need)} (estimate), {gib(free)} free on {case.device}"
    return None


@dataclass(frozen=True)
class PeakMemory:
    extra_bytes: int  # beyond what was allocated before the call (the inputs)
    total_bytes: int  # including the inputs


def measure_peak(fn: Callable[[], object], device: str) -> PeakMemory:
    """Peak allocation of one call. CUDA: the caching allocator's statistics, reset before.
    CPU: the running sum of the torch profiler's allocation events."""
    if device.startswith("cuda"):
        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        out = fn()
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        del out
        return PeakMemory(extra_bytes=peak - before, total_bytes=peak)
    return _cpu_peak(fn)


def _cpu_peak(fn: Callable[[], object]) -> PeakMemory:
    from torch.profiler import ProfilerActivity, profile

    with _profiler_chatter_dropped(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    # Each op's own allocations (self usage, so nested ops are not counted twice) and the
    # frees, in time order; the running sum's maximum is the peak.
    running = peak = 0
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    for event in events:
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return PeakMemory(extra_bytes=peak, total_bytes=peak)


# Lines that the profiler's C++ side (kineto) writes straight to the process's stderr on every
# start and stop; they would interleave with the progress display.
_CHATTER = ("USDT:",)


@contextlib.contextmanager
def _profiler_chatter_dropped() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while the profiler runs, then pass on every line
    except the profiler's own start/stop chatter (so a real error message is never lost)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(_CHATTER)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
