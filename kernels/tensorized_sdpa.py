"""Tensorized attention composed from PyTorch SDPA: one SDPA call per hop on strided views.

This is the version a user would write by hand, and the bar the Triton kernel must beat.
Folding is a reshape; the hop over axis j views the folded (B, H, A, n_j, C, D) tensor as
(B*H*A, C, n_j, D), i.e. the C inner coordinates play the role of heads and n_j is the
sequence. No permute copies are made; SDPA backends that need another layout copy on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .folding import hop_axes


def _hop_view(x: torch.Tensor, dims: Sequence[int], axis: int) -> torch.Tensor:
    """(B, H, P, D) folded tensor -> 4D strided view (B*H*A, C, n_axis, D)."""
    batch, heads, _, d = x.shape
    outer = math.prod(dims[:axis])
    inner = math.prod(dims[axis + 1 :])
    return x.view(batch * heads * outer, dims[axis], inner, d).transpose(1, 2)


def _unhop_view(y: torch.Tensor, batch: int, heads: int, total: int) -> torch.Tensor:
    """Inverse of _hop_view; a copy happens only if SDPA returned another memory layout."""
    return y.transpose(1, 2).reshape(batch, heads, total, y.shape[-1])


def tensorized_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dims: Sequence[int],
    causal: bool,
    scale: float | None = None,
) -> torch.Tensor:
    batch, heads, n, d = q.shape
    kv_heads = k.shape[1]
    dims = tuple(dims)
    total = math.prod(dims)
    scale = d**-0.5 if scale is None else scale
    group = heads // kv_heads
    if group > 1:
        # Q and K are reused by every hop with H heads, so expand K once; V only feeds hop 1.
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    pad = total - n
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (t.contiguous() for t in (q, k, v))

    position = torch.arange(total, device=q.device)
    valid = position < n
    value = v
    for axis in hop_axes(len(dims)):
        mask = None
        if pad and not causal:
            # Keys at padded positions never count; the mask varies per slice, not per head.
            keys = _hop_view(valid.view(1, 1, total, 1), dims, axis)[..., 0]  # (A, C, n_axis)
            keys = keys.unsqueeze(0).expand(batch * heads, *keys.shape)
            mask = keys.reshape(-1, keys.shape[-2], 1, keys.shape[-1])
        out = F.scaled_dot_product_attention(
            _hop_view(q, dims, axis),
            _hop_view(k, dims, axis),
            _hop_view(value, dims, axis),
            attn_mask=mask,
            is_causal=causal,
            scale=scale,
        )
        value = _unhop_view(out, batch, heads, total)
        if mask is not None:
            # A padded query whose slice has no valid key must give 0, not NaN (spec, "Masks").
            value = value.masked_fill(~valid.view(1, 1, total, 1), 0)
    return value[:, :, :n]
