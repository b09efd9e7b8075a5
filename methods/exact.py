"""Exact attention methods: the kernels people use today, and a naive baseline.

Every call takes q: (B, H, N, D), k/v: (B, H_kv, N, D) (after its `prepare`, if any) and
returns a (B, H, N, D)-shaped tensor (any strides).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..core.case import Case
from ..kernels.tensors import torch_dtype
from .availability import cuda_availability, has_module, import_problem
from .registry import Availability, always_available, method

LOW_PRECISION = frozenset({"bf16", "fp16"})


# Decided once at import: the flash2 call runs inside the timed region.
HAS_FLASH_ATTN = has_module("flash_attn")


def io_bytes(case: Case) -> int:
    """Output plus per-row softmax statistics: what a fused kernel allocates (any method's estimate
    starts from this)."""
    rows = case.batch * case.heads * case.seq_len
    return rows * case.head_dim * case.element_size + rows * 4


def _expanded_kv_bytes(case: Case) -> int:
    if case.kv_heads == case.heads:
        return 0
    return 2 * case.batch * case.heads * case.seq_len * case.head_dim * case.element_size


def _expand_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    group = case.heads // case.kv_heads
    if group == 1:
        return q, k, v
    return q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


# --- full: the N x N scores, materialised -------------------------------------------------------


def _full_memory(case: Case) -> int:
    scores = case.batch * case.heads * case.seq_len * case.seq_len
    # scores in the input dtype, the masked copy, float32 softmax, and its cast back
    return scores * (3 * case.element_size + 4) + _expanded_kv_bytes(case) + io_bytes(case)


@method(
    name="full",
    family="exact",
    description="Naive PyTorch attention materialising the N x N scores (memory baseline)",
    availability=always_available("PyTorch matmul + softmax, scores materialised"),
    memory_estimate=_full_memory,
)
def full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    _, k, v = _expand_kv(q, k, v, case)
    scores = torch.matmul(q, k.transpose(-1, -2)) * case.softmax_scale
    if case.causal:
        n = case.seq_len
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)


# --- torch SDPA backends --------------------------------------------------------------------------


def _sdpa_call(backend: SDPBackend, native_gqa: bool) -> Callable[..., torch.Tensor]:
    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=case.causal, scale=case.softmax_scale,
                enable_gqa=native_gqa and case.kv_heads != case.heads,
            )

    return call


def _sdpa_math_memory(case: Case) -> int:
    scores = case.batch * case.heads * case.seq_len * case.seq_len
    return scores * (2 * case.element_size + 4) + _expanded_kv_bytes(case) + io_bytes(case)


sdpa_math = method(
    name="sdpa-math",
    family="exact",
    description="torch SDPA, math backend (reference composition; runs on the CPU)",
    availability=always_available("torch SDPA math backend"),
    memory_estimate=_sdpa_math_memory,
)(_sdpa_call(SDPBackend.MATH, native_gqa=True))

sdpa_cudnn = method(
    name="sdpa-cudnn",
    family="exact",
    description="torch SDPA, cuDNN attention backend",
    availability=lambda device: cuda_availability(
        device, "torch SDPA cuDNN backend (kv heads expanded before the call under GQA)", (9, 0)
    ),
    devices=frozenset({"cuda"}),
    dtypes=LOW_PRECISION,
    head_dims=frozenset({64, 128}),
    memory_estimate=lambda case: io_bytes(case) + _expanded_kv_bytes(case),
    prepare=_expand_kv,
)(_sdpa_call(SDPBackend.CUDNN_ATTENTION, native_gqa=False))

sdpa_efficient = method(
    name="sdpa-efficient",
    family="exact",
    description="torch SDPA, memory-efficient (xFormers-derived) backend",
    availability=lambda device: cuda_availability(
        device, "torch SDPA memory-efficient backend (kv heads expanded before the call under GQA)", (5, 0)
    ),
    devices=frozenset({"cuda"}),
    memory_estimate=lambda case: io_bytes(case) + _expanded_kv_bytes(case),
    prepare=_expand_kv,
)(_sdpa_call(SDPBackend.EFFICIENT_ATTENTION, native_gqa=False))


# --- FlashAttention-2 -----------------------------------------------------------------------------


def _flash2_availability(device: str) -> Availability:
    if HAS_FLASH_ATTN:
        import flash_attn

        return cuda_availability(device, f"FlashAttention-2 via flash_attn {flash_attn.__version__}")
    return cuda_availability(
        device, "FlashAttention-2 via torch SDPA flash backend (flash_attn not installed)"
    )


def to_bnhd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (B, N, H, D) layout of the flash_attn family's functions, which handle GQA themselves."""
    return q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()


def _flash2_prepare(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return to_bnhd(q, k, v, case) if HAS_FLASH_ATTN else (q, k, v)


@method(
    name="flash2",
    family="exact",
    description="FlashAttention-2 (flash_attn package, else torch SDPA's bundled FA2 kernels)",
    availability=_flash2_availability,
    devices=frozenset({"cuda"}),
    dtypes=LOW_PRECISION,
    head_dims=frozenset(range(8, 257, 8)),
    memory_estimate=io_bytes,
    prepare=_flash2_prepare,
)
def flash2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    if HAS_FLASH_ATTN:
        from flash_attn import flash_attn_func

        out = flash_attn_func(q, k, v, causal=case.causal, softmax_scale=case.softmax_scale)
        return out.transpose(1, 2)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=case.causal, scale=case.softmax_scale,
            enable_gqa=case.kv_heads != case.heads,
        )


# --- xFormers -------------------------------------------------------------------------------------


def _xformers_availability(device: str) -> Availability:
    problem = import_problem("xformers.ops", "xformers is not installed (pip install 'tbench[xformers]')")
    if problem is not None:
        return problem
    import xformers

    return cuda_availability(device, f"xformers {xformers.__version__} memory_efficient_attention")


def _xformers_prepare(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # xFormers' layout is (B, N, H, D); GQA is expressed as (B, N, H_kv, group, D) with the
    # group axis broadcast (stride 0) for k and v, so no copy of k and v is made.
    group = case.heads // case.kv_heads
    b, n, d = case.batch, case.seq_len, case.head_dim
    qx = q.transpose(1, 2).contiguous()
    kx = k.transpose(1, 2).contiguous()
    vx = v.transpose(1, 2).contiguous()
    if group > 1:
        qx = qx.view(b, n, case.kv_heads, group, d)
        kx = kx.unsqueeze(3).expand(b, n, case.kv_heads, group, d)
        vx = vx.unsqueeze(3).expand(b, n, case.kv_heads, group, d)
    return qx, kx, vx


def _xformers_bias(causal: bool) -> object | None:
    if not causal:
        return None
    from xformers.ops.fmha.attn_bias import LowerTriangularMask

    return LowerTriangularMask()


def _xformers_describe(case: Case) -> str:
    base = _xformers_availability(case.device).provenance
    try:
        from xformers.ops import fmha

        q, k, v = _xformers_prepare(
            *(torch.empty(case.batch, h, case.seq_len, case.head_dim, dtype=torch_dtype(case),
                          device=case.device) for h in (case.heads, case.kv_heads, case.kv_heads)),
            case,
        )
        inputs = fmha.Inputs(query=q, key=k, value=v, attn_bias=_xformers_bias(case.causal),
                             scale=case.softmax_scale)
        op = fmha.dispatch._dispatch_fw(inputs, False)
        return f"{base}, dispatched to {getattr(op, 'NAME', op)}"
    except Exception as exc:
        return f"{base} (dispatched operator unknown: {type(exc).__name__})"


@method(
    name="xformers",
    family="exact",
    description="xFormers memory_efficient_attention (records the operator it dispatched to)",
    availability=_xformers_availability,
    devices=frozenset({"cuda"}),
    memory_estimate=io_bytes,
    prepare=_xformers_prepare,
    describe=_xformers_describe,
    backward=False,
)
def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    from xformers.ops import memory_efficient_attention

    out = memory_efficient_attention(q, k, v, attn_bias=_xformers_bias(case.causal),
                                     scale=case.softmax_scale)
    return out.reshape(case.batch, case.seq_len, case.heads, case.head_dim).transpose(1, 2)
