"""Whether a timed row is host-bound: its call took the host longer to issue than the GPU took to run.

tbench's samples time the GPU's work (CUDA events behind a hold that covers the host's issue, or a
CUDA-graph replay); the host's time to issue one call is stored beside them (`host_ms` in the row's
device state). Where that is the longer, a caller that issues the call eagerly, one after another,
runs at the host's pace, not at the row's time.
"""

from __future__ import annotations


def host_bound_ms(host_ms: object, median_ms: object) -> float | None:
    """The host's time to issue one call, where it exceeds the row's median; else None (also where
    either is missing)."""
    if not isinstance(host_ms, int | float) or not isinstance(median_ms, int | float):
        return None
    return float(host_ms) if host_ms > median_ms > 0 else None


def host_bound_text(host_ms: float) -> str:
    return f"host-bound: {host_ms:.3g} ms to issue"
