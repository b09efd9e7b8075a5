"""The sparse family: exact softmax attention over a fixed subset of keys.

`sliding-window`: each query attends to the last W keys up to and including itself, with W =
core.case.sliding_window(N) = min(4096, N / 8). On a GPU it runs as FlexAttention with a
sliding-window block mask (blocks wholly outside the window are skipped, so the work is O(N W));
on the CPU, as SDPA with a dense boolean mask (the CPU's lengths are short).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.case import Case, sliding_window
from ..core.device import device_kind
from .exact import io_bytes
from .flex import BLOCK, compiled_flex
from .registry import Availability, Call, method


def _availability(device: str) -> Availability:
    if device == "cpu":
        return Availability(True, provenance="torch SDPA with a dense sliding-window mask (CPU)")
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as exc:
        return Availability(False, reason=f"FlexAttention needs torch >= 2.5 ({exc})")
    from .availability import cuda_availability

    return cuda_availability(device, f"torch {torch.__version__} flex_attention, compiled, sliding-window block mask")


def _bind(case: Case) -> Call:
    window = sliding_window(case.seq_len)
    gqa = case.kv_heads != case.heads
    n = case.seq_len
    if device_kind(case.device) == "cpu":
        position = torch.arange(n, device=case.device)
        allowed = (position[None, :] <= position[:, None]) & (position[None, :] > position[:, None] - window)

        def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=case.softmax_scale,
                                                  enable_gqa=gqa)

        return dense

    return compiled_flex(case, window)


def _unbound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    return _bind(case)(q, k, v, case)


def _describe(case: Case) -> str:
    base = _availability(device_kind(case.device)).provenance
    return f"{base}; window W={sliding_window(case.seq_len)} keys (min(4096, N/8)), causal"


def _memory(case: Case) -> int:
    if device_kind(case.device) == "cpu":
        return io_bytes(case) + case.seq_len * case.seq_len
    blocks = -(-case.seq_len // BLOCK)
    return io_bytes(case) + 4 * blocks * blocks * 4


sliding_window_attention = method(
    name="sliding-window",
    family="sparse",
    description="Sliding-window attention: exact attention over the last min(4096, N/8) keys (FlexAttention)",
    availability=_availability,
    noncausal=False,
    head_dims=frozenset({16, 32, 64, 128, 256}),
    memory_estimate=_memory,
    bind=_bind,
    describe=_describe,
)(_unbound)
