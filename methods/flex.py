"""FlexAttention (torch.nn.attention.flex_attention): exact attention through PyTorch's compiled,
mask-programmable kernel, timed as its users run it: the block mask built once per shape and the
kernel compiled in the warm-up."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.case import Case
from ..core.device import device_kind
from .availability import cuda_availability
from .exact import io_bytes
from .registry import Availability, Call, method

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


def compiled_flex(case: Case, mask_mod: MaskMod | None) -> Call:
    """FlexAttention compiled for one case, with the block mask of `mask_mod` (None: no mask) built
    once: what a user makes once per shape and reuses. The sliding-window method binds through it too."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # Each shape compiles anew. Dynamo stops compiling a function after a few shapes and falls back
    # to the unfused eager path, which would be timed as if it were FlexAttention; starting each
    # case from an empty cache keeps every case compiled.
    torch._dynamo.reset()
    mask = None
    if mask_mod is not None:
        # the compiled builder works block by block; the eager one would materialise N x N booleans
        mask = create_block_mask(mask_mod, None, None, case.seq_len, case.seq_len, device=case.device,
                                 BLOCK_SIZE=BLOCK, _compile=device_kind(case.device) == "cuda")
    compiled = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    gqa = case.kv_heads != case.heads

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
        return compiled(q, k, v, block_mask=mask, scale=case.softmax_scale, enable_gqa=gqa)

    return call


def _bind(case: Case) -> Call:
    return compiled_flex(case, _causal if case.causal else None)


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
