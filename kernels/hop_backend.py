"""The libraries a hop of tensorized attention can run on (a module without Triton, so that the
method registry can name them without loading a kernel)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum


class HopBackend(Enum):
    TRITON = "Triton"
    FA3 = "FlashAttention-3"
    CUDNN = "cuDNN SDPA"


def all_triton(backends: Sequence[HopBackend]) -> bool:
    return all(b is HopBackend.TRITON for b in backends)
