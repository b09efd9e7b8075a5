"""Tensorized attention methods (docs/spec-tensorized-attention.md): the PyTorch composition and the
Triton kernel. The case carries the order m and the resolved folding dims."""

from __future__ import annotations

import math
import os

import torch

from ..core.case import Case
from ..kernels.tensorized_sdpa import tensorized_attention_sdpa
from ..kernels.tensors import torch_dtype
from .availability import cuda_availability, has_module
from .registry import Availability, always_available, method


def _folded_bytes(case: Case, heads: int) -> int:
    assert case.dims is not None
    return case.batch * heads * math.prod(case.dims) * case.head_dim * case.element_size


def _ref_memory(case: Case) -> int:
    padded = case.dims is not None and math.prod(case.dims) > case.seq_len
    gqa = case.kv_heads != case.heads
    # two live value tensors between hops plus the output slice; expanded K and V under GQA;
    # padded copies of q, k, v when N is not a product of the dims
    copies = 3 + (2 if gqa else 0) + (3 if padded else 0)
    return copies * _folded_bytes(case, case.heads)


@method(
    name="tensorized-ref",
    family="tensorized",
    description="Tensorized attention in plain PyTorch: one SDPA call per hop on strided views",
    availability=always_available("PyTorch SDPA per hop (default backend dispatch) on strided views"),
    memory_estimate=_ref_memory,
)
def tensorized_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    assert case.dims is not None, "tensorized methods need resolved dims"
    return tensorized_attention_sdpa(q, k, v, case.dims, case.causal, case.softmax_scale)


def _triton_availability(device: str) -> Availability:
    if not has_module("triton"):
        return Availability(False, reason="triton is not installed")
    if device == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return Availability(True, provenance="Triton kernel in the interpreter (CPU): timings are not meaningful")
        return Availability(False, reason="needs a CUDA GPU (set TRITON_INTERPRET=1 to run it on the CPU, slowly)")
    import triton

    try:
        from ..kernels import tensorized_triton  # noqa: F401
    except Exception as exc:
        return Availability(False, reason=f"the Triton kernel failed to import: {type(exc).__name__}: {exc}")
    return cuda_availability(device, f"tbench Triton kernel, triton {triton.__version__}")


def _triton_memory(case: Case) -> int:
    # the output plus one intermediate value tensor, both N rows long
    return 2 * case.batch * case.heads * case.seq_len * case.head_dim * case.element_size


def _triton_describe(case: Case) -> str:
    """What ran, with the config the autotuner chose for each slice length once it has (after the
    warm-up), since two runs that chose differently can differ by a few percent."""
    text = _triton_availability(case.device).provenance
    if case.dims is None or case.device == "cpu":
        return text
    from ..kernels.tensorized_triton import tuned_configs

    chosen = [f"L={key[0]} {kernel} {config}" for kernel, key, config in tuned_configs()
              if key[0] in case.dims and key[1:4] == (case.head_dim, case.causal, torch_dtype(case))]
    return f"{text}; tuned: {'; '.join(sorted(set(chosen)))}" if chosen else text


@method(
    name="tensorized",
    family="tensorized",
    description="Tensorized attention, tbench's Triton kernel (one strided-hop kernel per axis)",
    availability=_triton_availability,
    head_dims=frozenset({32, 64, 128}),  # kernels.tensorized_triton.SUPPORTED_HEAD_DIMS
    memory_estimate=_triton_memory,
    describe=_triton_describe,
)
def tensorized_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    from ..kernels.tensorized_triton import tensorized_attention_triton

    assert case.dims is not None, "tensorized methods need resolved dims"
    return tensorized_attention_triton(q, k, v, case.dims, case.causal, case.softmax_scale)
