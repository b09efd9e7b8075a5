"""Float64 evaluations of the operators, written straight from their definitions.

These are the yardsticks every fast implementation is checked against: no SDPA, no fused
kernels, explicit masks, float64 throughout. They are slow by design; use small shapes or a
subset of heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.folding import hop_axes, padded_length


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """GQA: query head h reads kv head h // (H / H_kv)."""
    kv_heads = x.shape[1]
    if heads % kv_heads:
        raise ValueError(f"query heads {heads} are not a multiple of kv heads {kv_heads}")
    return x.repeat_interleave(heads // kv_heads, dim=1)


def _masked_softmax_attend(
    scores: torch.Tensor, allowed: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """softmax over allowed keys, then weight the values; a row with no allowed key gives 0."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max) * allowed
    denom = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(denom > 0, denom, torch.ones_like(denom))
    return weights @ values


# Bound on the float64 score block of one chunk of slices, so long sequences fit in memory.
_CHUNK_ELEMENTS = 2**25


def _hop_f64(
    qf: torch.Tensor,
    kf: torch.Tensor,
    vf: torch.Tensor,
    position: torch.Tensor,
    axis: int,
    n: int,
    causal: bool,
    scale: float,
) -> torch.Tensor:
    """One hop over `axis` of the folded (B, H, *dims, D) tensors, in chunks of slices."""
    tensor_axis = 2 + axis
    length = qf.shape[tensor_axis]
    d = qf.shape[-1]
    # (slices, length, D) copies: every slice is an independent attention problem
    qs = qf.movedim(tensor_axis, -2).reshape(-1, length, d)
    ks = kf.movedim(tensor_axis, -2).reshape(-1, length, d)
    vs = vf.movedim(tensor_axis, -2).reshape(-1, length, d)
    # key validity per slice; the same for every (batch, head)
    key_valid = position.movedim(axis, -1).reshape(-1, length) < n
    per_head = key_valid.shape[0]
    idx = torch.arange(length, device=qf.device)
    causal_allowed = idx[None, :] <= idx[:, None]
    out = torch.empty_like(vs)
    chunk = max(1, _CHUNK_ELEMENTS // (length * length))
    for start in range(0, qs.shape[0], chunk):
        stop = min(start + chunk, qs.shape[0])
        scores = (qs[start:stop] @ ks[start:stop].transpose(-1, -2)) * scale
        if causal:
            allowed = causal_allowed.expand(scores.shape)
        else:
            rows = torch.arange(start, stop, device=qf.device) % per_head
            allowed = key_valid[rows].unsqueeze(-2).expand(scores.shape)
        out[start:stop] = _masked_softmax_attend(scores, allowed, vs[start:stop])
    moved_shape = qf.movedim(tensor_axis, -2).shape
    return out.reshape(moved_shape).movedim(-2, tensor_axis)


def tensorized_attention_f64(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dims: Sequence[int],
    causal: bool,
    scale: float | None = None,
) -> torch.Tensor:
    """SPEC-tensorized-attention.md evaluated in float64; returns float64 (B, H, N, D)."""
    batch, heads, n, d = q.shape
    dims = tuple(dims)
    total = padded_length(dims)
    if total < n:
        raise ValueError(f"dims {dims} hold {total} positions, fewer than N={n}")
    scale = d**-0.5 if scale is None else scale
    m = len(dims)

    def fold(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        x = torch.nn.functional.pad(x, (0, 0, 0, total - n))
        return x.reshape(x.shape[0], x.shape[1], *dims, d)

    qf = fold(q)
    kf = fold(_expand_kv(k, heads))
    vf = fold(_expand_kv(v, heads))
    position = torch.arange(total, device=q.device).reshape(dims)

    for axis in hop_axes(m):
        vf = _hop_f64(qf, kf, vf, position, axis, n, causal, scale)

    return vf.reshape(batch, heads, total, d)[:, :, :n]


def exact_attention_f64(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float | None = None,
    rows: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Ordinary softmax attention in float64, optionally only for the query positions in `rows`;
    with a `window`, each query sees only the last `window` keys up to itself (causal only)."""
    heads, n, d = q.shape[1], q.shape[2], q.shape[3]
    scale = d**-0.5 if scale is None else scale
    rows = torch.arange(n, device=q.device) if rows is None else rows.to(q.device)
    qs = q[:, :, rows].to(torch.float64)
    ks = _expand_kv(k, heads).to(torch.float64)
    vs = _expand_kv(v, heads).to(torch.float64)
    scores = (qs @ ks.transpose(-1, -2)) * scale
    keys = torch.arange(n, device=q.device)
    allowed = keys[None, :] <= rows[:, None] if causal else torch.ones(
        len(rows), n, dtype=torch.bool, device=q.device
    )
    if window is not None:
        if not causal:
            raise ValueError("a sliding window is defined here for causal attention only")
        allowed = allowed & (keys[None, :] > rows[:, None] - window)
    return _masked_softmax_attend(scores, allowed.expand(scores.shape), vs)
