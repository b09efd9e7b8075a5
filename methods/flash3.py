"""FlashAttention-3 (Hopper) and FlashAttention-4 (CuTe DSL; Hopper and Blackwell), when installed.

Both come from the flash-attention project as separate builds: FA3 as the `flash_attn_interface`
module of its `hopper/` package, FA4 as `flash_attn.cute`. Both take (B, N, H, D) tensors and
handle GQA themselves; depending on the release they return the output alone or (output, lse).
"""

from __future__ import annotations

from importlib import metadata

import torch

from ..core.case import Case
from .availability import cuda_availability, import_problem
from .exact import LOW_PRECISION, io_bytes, to_bnhd
from .registry import Availability, method


def _version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "version unknown"


def _output(result: torch.Tensor | tuple) -> torch.Tensor:
    out = result[0] if isinstance(result, tuple) else result
    return out.transpose(1, 2)  # back to (B, H, N, D)


def _fa3_availability(device: str) -> Availability:
    problem = import_problem("flash_attn_interface",
                             "FlashAttention-3 is not installed (build flash-attention's hopper/ package)")
    if problem is not None:
        return problem
    return cuda_availability(device, f"FlashAttention-3 via flash_attn_interface ({_version('flash_attn_3')})", (9, 0))


@method(
    name="flash3",
    family="exact",
    description="FlashAttention-3 (flash_attn_interface, Hopper), when installed",
    availability=_fa3_availability,
    devices=frozenset({"cuda"}),
    dtypes=LOW_PRECISION,
    head_dims=frozenset({64, 96, 128, 192, 256}),
    memory_estimate=io_bytes,
    prepare=to_bnhd,
)
def flash3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    from flash_attn_interface import flash_attn_func

    return _output(flash_attn_func(q, k, v, softmax_scale=case.softmax_scale, causal=case.causal))


def _fa4_availability(device: str) -> Availability:
    problem = import_problem("flash_attn.cute", "FlashAttention-4 is not installed (pip install flash-attn-4)")
    if problem is not None:
        return problem
    return cuda_availability(device, f"FlashAttention-4 via flash_attn.cute ({_version('flash-attn-4', 'flash_attn')})",
                             (9, 0))


@method(
    name="flash4",
    family="exact",
    description="FlashAttention-4 (flash_attn.cute, CuTe DSL), when installed",
    availability=_fa4_availability,
    devices=frozenset({"cuda"}),
    dtypes=LOW_PRECISION,
    head_dims=frozenset({64, 96, 128}),
    memory_estimate=io_bytes,
    prepare=to_bnhd,
)
def flash4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    from flash_attn.cute import flash_attn_func

    return _output(flash_attn_func(q, k, v, softmax_scale=case.softmax_scale, causal=case.causal))
