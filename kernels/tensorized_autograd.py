"""Tensorized attention as a differentiable PyTorch op: the Triton forward of
kernels/tensorized_triton.py, saving what kernels/tensorized_backward.py needs, wrapped in a
torch.autograd.Function.

Saved between the passes: every hop's output in the input dtype (the last is the result) and
every hop's per-row log-sum-exp in float32; q, k, v are held by reference, not copied. With
`recompute`, only the result and the log-sum-exps are kept, and the backward runs hops 1..m-1 of
the forward again: (m - 1) B H N D elements less held between the passes, for that much forward work.

`tensorized_hop_train` is one hop alone as a differentiable op, for chains whose other hops run on
another library (kernels/tensorized_train_dispatch.py); its dq and dk are that hop's share only, in
the inputs' dtype, and autograd adds the hops' shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import tensorized_backward
from .hop_backend import HopBackend, PackedBackward, all_triton
from .tensorized_backward import (
    Gradients,
    SavedForward,
    _launch_hop_backward,
    backward_from_saved,
    check_packed_forms,
    forward_with_saved,
    recompute_intermediates,
)
from .tensorized_dispatch import saved_forward_on
from .tensorized_triton import _launch_hop, _row_major, checked_arguments


class TensorizedAttentionFunction(torch.autograd.Function):
    """Tensorized attention with the Triton forward and backward, for torch.autograd."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: tuple[int, ...],
                causal: bool, scale: float, recompute: bool, fused_dq: bool,
                forward_backends: tuple[HopBackend, ...] | None, packed: tuple[PackedBackward, ...]
                ) -> torch.Tensor:
        if forward_backends is None:
            saved = forward_with_saved(q, k, v, dims, causal, scale)
        else:
            saved = saved_forward_on(q, k, v, dims, causal, scale, forward_backends)
        kept = saved.outputs[-1:] if recompute else saved.outputs
        ctx.save_for_backward(q, k, v, *kept, *saved.lses)
        ctx.dims, ctx.causal, ctx.scale, ctx.recompute, ctx.fused_dq = dims, causal, scale, recompute, fused_dq
        ctx.packed = packed
        return saved.outputs[-1]

    @staticmethod
    def backward(ctx, d_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, *rest = ctx.saved_tensors
        m = len(ctx.dims)
        if ctx.recompute:
            outputs = (*recompute_intermediates(q, k, v, ctx.dims, ctx.causal, ctx.scale), rest[0])
            lses = tuple(rest[1:])
        else:
            outputs, lses = tuple(rest[:m]), tuple(rest[m:])
        dq, dk, dv = backward_from_saved(d_out, q, k, v, SavedForward(outputs, lses), ctx.dims, ctx.causal,
                                         ctx.scale, fused_dq=ctx.fused_dq, packed=ctx.packed)
        return dq, dk, dv, None, None, None, None, None, None, None


def tensorized_attention_train(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dims: Sequence[int],
    causal: bool,
    scale: float | None = None,
    recompute: bool = False,
    fused_dq: bool = False,
    forward_backends: Sequence[HopBackend] | None = None,
    packed_backward: Sequence[PackedBackward] = (),
) -> torch.Tensor:
    """Tensorized attention over `dims` (prod >= N) with a backward: (B, H, N, D) in q's dtype that
    torch.autograd differentiates with respect to q, k and v. `recompute` keeps less between the
    passes and runs the forward's first m - 1 hops again in the backward; `fused_dq` adds the blocked
    hops' dQ from their dK/dV kernel (see backward_from_saved); `forward_backends` runs hop t's
    forward on forward_backends[t] (Triton, FA3 or cuDNN; see tensorized_dispatch.saved_forward_on)
    and the backward on the Triton kernels from what they saved; `packed_backward[t]` how the
    backward launches its packed kernel on hop t (kernels/hop_backend.PackedBackward; empty: the
    table's tile). Raises ValueError (see
    tensorized_triton.unsupported_reason) for configurations the kernels lack, and for
    `forward_backends` with `recompute` (the recomputed hops would not be those whose log-sum-exps
    were saved)."""
    dims, scale = checked_arguments(q, k, v, dims, causal, scale)
    backends = None if forward_backends is None else tuple(forward_backends)
    if backends is not None:
        if len(backends) != len(dims):
            raise ValueError(f"{len(backends)} forward backends for {len(dims)} hops")
        if all_triton(backends):
            backends = None
        elif recompute:
            raise ValueError("recompute runs the forward's hops again on Triton; forward_backends "
                             f"{[b.value for b in backends]} would save log-sum-exps of other hops")
    q, k, v = _row_major(q), _row_major(k), _row_major(v)
    packed = tuple(packed_backward)
    check_packed_forms(packed, dims)  # here, not first in the backward
    return TensorizedAttentionFunction.apply(q, k, v, dims, causal, scale, recompute, fused_dq, backends, packed)


class TensorizedHopFunction(torch.autograd.Function):
    """One hop of tensorized attention (attention inside the slices along one axis) with the Triton
    forward and backward."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, dims: tuple[int, ...], axis: int,
                causal: bool, scale: float) -> torch.Tensor:
        batch, heads, n, _ = q.shape
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device)
        _launch_hop(q, k, value, out, dims, axis, causal, scale, lse=lse)
        ctx.save_for_backward(q, k, value, out, lse)
        ctx.dims, ctx.axis, ctx.causal, ctx.scale = dims, axis, causal, scale
        return out

    @staticmethod
    def backward(ctx, d_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, value, out, lse = ctx.saved_tensors
        # looked up here, not imported: tests poison the buffers to show rows a kernel leaves unwritten
        dq, dk, d_value = (tensorized_backward._new_gradient_buffer(x) for x in (q, k, value))
        _launch_hop_backward(q, k, value, out, _row_major(d_out.to(q.dtype)), lse,
                             Gradients(dq, dq, dk, dk, accumulate=False), d_value, ctx.dims, ctx.axis, ctx.causal,
                             ctx.scale)
        return dq, dk, d_value, None, None, None, None


def tensorized_hop_train(q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, dims: Sequence[int], axis: int,
                         causal: bool, scale: float) -> torch.Tensor:
    """Hop `axis` of tensorized attention, (B, H, N, D) in q's dtype, differentiable with respect to
    q, k and value (the previous hop's output, or v with H_kv heads on the first hop). Inputs are
    assumed checked (tensorized_triton.unsupported_reason)."""
    dims = tuple(int(x) for x in dims)
    q, k, value = _row_major(q), _row_major(k), _row_major(value)
    return TensorizedHopFunction.apply(q, k, value, dims, axis, causal, float(scale))
