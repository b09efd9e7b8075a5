"""FlexAttention (torch.nn.attention.flex_attention): exact attention through PyTorch's compiled,
mask-programmable kernel, timed as its users run it: the block mask built once per shape and the
kernel compiled in the warm-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..core.case import Case
from ..core.device import device_kind
from .availability import cuda_availability
from .exact import io_bytes
from .registry import Availability, Call, method

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

# Query and key blocks of the block mask (the default of create_block_mask).
BLOCK = 128

# (batch, head, query index, key index) -> whether the query sees the key
MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _availability(device: str) -> Availability:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as exc:
        return Availability(False, reason=f"FlexAttention needs torch >= 2.5 ({exc})")
    provenance = f"torch {torch.__version__} flex_attention, compiled (torch.compile, dynamic=False)"
    if device == "cpu":
        return Availability(True, provenance=provenance + " for the CPU")
    return cuda_availability(device, provenance)


def _causal(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    return q_idx >= kv_idx


def _in_window(window: int) -> MaskMod:
    def in_window(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    return in_window


def band_block_mask(seq_len: int, window: int | None, mask_mod: MaskMod, device: str | torch.device) -> BlockMask:
    """The block mask of causal attention over the last `window` keys up to the query (None: every
    earlier key), whose element rule `mask_mod` states, built from the band's geometry with a few
    tensor ops on (N / BLOCK)^2 block pairs. The library's builder either materialises N x N
    booleans or compiles a builder with Inductor for every shape and window, which cost 3-139 s a
    shape on an H200 (docs/results-h200.md), more than the measurements themselves."""
    from torch.nn.attention.flex_attention import BlockMask

    blocks = -(-seq_len // BLOCK)
    first = torch.arange(blocks, device=device) * BLOCK
    last = torch.clamp(first + BLOCK, max=seq_len) - 1
    q_lo, q_hi = first[:, None], last[:, None]  # query rows of block i
    k_lo, k_hi = first[None, :], last[None, :]  # key columns of block j
    some = k_lo <= q_hi  # at least one pair with kv <= q ...
    every = k_hi <= q_lo  # ... or all of them
    if window is not None:
        some &= q_lo - k_hi < window
        every &= q_hi - k_lo < window
    # a block cut short by the end of the sequence keeps its mask (never skips mask_mod)
    whole = (last - first) == BLOCK - 1
    every &= whole[:, None] & whole[None, :]
    partial = some & ~every

    def listed(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = selected.sum(-1, dtype=torch.int32)
        order = torch.argsort(selected.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return count[None, None].contiguous(), order[None, None].contiguous()

    kv_count, kv_index = listed(partial)
    full_count, full_index = listed(every)
    return BlockMask.from_kv_blocks(kv_count, kv_index, full_count, full_index, BLOCK_SIZE=BLOCK,
                                    mask_mod=mask_mod, seq_lengths=(seq_len, seq_len))


def compiled_flex(case: Case, window: int | None = None) -> Call:
    """FlexAttention compiled for one case, its block mask built once: what a user makes once per
    shape and reuses. Causal cases see the last `window` keys up to and including the query (None:
    every earlier key); the sliding-window method binds through it too."""
    from torch.nn.attention.flex_attention import flex_attention

    # Each shape compiles anew. Dynamo stops compiling a function after a few shapes and falls back
    # to the unfused eager path, which would be timed as if it were FlexAttention; starting each
    # case from an empty cache keeps every case compiled.
    torch._dynamo.reset()
    mask = None
    if case.causal:
        mask = band_block_mask(case.seq_len, window, _causal if window is None else _in_window(window),
                               case.device)
    compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    gqa = case.kv_heads != case.heads

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
        return compiled(q, k, v, block_mask=mask, scale=case.softmax_scale, enable_gqa=gqa)

    return call


def _bind(case: Case) -> Call:
    return compiled_flex(case)


def _memory(case: Case) -> int:
    # output and log-sum-exp, plus the block mask's index tensors (two of blocks^2 int32 at most)
    blocks = -(-case.seq_len // BLOCK)
    return io_bytes(case) + 2 * blocks * blocks * 4 * (2 if case.causal else 0)


def _unsupported(case: Case) -> str | None:
    # Inductor compiles FlexAttention's backward for GPUs only; the CPU template is forward-only.
    if case.mode.needs_backward and device_kind(case.device) == "cpu":
        return f"mode {case.mode}: the compiled FlexAttention backward runs on CUDA only, not the CPU"
    return None


def _unbound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    """A one-off call: builds the mask and compiles first (the harness times the bound call)."""
    return _bind(case)(q, k, v, case)


flex = method(
    name="flex",
    family="exact",
    description="FlexAttention (torch.nn.attention.flex_attention), compiled, causal block mask",
    availability=_availability,
    head_dims=frozenset({16, 32, 64, 128, 256}),
    memory_estimate=_memory,
    bind=_bind,
    unsupported=_unsupported,
)(_unbound)
