"""Float64 evaluations of the operators, written straight from their definitions.

These are the yardsticks every fast implementation is checked against: no SDPA, no fused
kernels, explicit masks, float64 throughout. They are slow by design; use small shapes or a
subset of heads. Each also runs in another dtype when asked (`dtype=`): the same math in low
precision is what the correctness gate calibrates its tolerance against.
"""

from __future__ import annotations

import math
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


def _folded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: tuple[int, ...], dtype: torch.dtype
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (K and V expanded to the query heads) right-padded to the product of the dims and
    folded to (B, H, *dims, D) in `dtype`, with the position of every coordinate."""
    batch, heads, n, d = q.shape
    total = padded_length(dims)
    if total < n:
        raise ValueError(f"dims {dims} hold {total} positions, fewer than N={n}")

    def fold(x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(x.to(dtype), (0, 0, 0, total - n))
        return x.reshape(batch, heads, *dims, d)

    position = torch.arange(total, device=q.device).reshape(dims)
    return fold(q), fold(_expand_kv(k, heads)), fold(_expand_kv(v, heads)), position


def tensorized_attention_f64(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dims: Sequence[int],
    causal: bool,
    scale: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """docs/spec-tensorized-attention.md evaluated in float64 (or `dtype`); returns (B, H, N, D) in it."""
    batch, heads, n, d = q.shape
    dims = tuple(dims)
    qf, kf, vf, position = _folded(q, k, v, dims, dtype)
    total = padded_length(dims)
    scale = d**-0.5 if scale is None else scale

    for axis in hop_axes(len(dims)):
        vf = _hop_f64(qf, kf, vf, position, axis, n, causal, scale)

    return vf.reshape(batch, heads, total, d)[:, :, :n]


def tensorized_hop_f64(
    q: torch.Tensor,
    k: torch.Tensor,
    value: torch.Tensor,
    dims: Sequence[int],
    axis: int,
    causal: bool,
    scale: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """One hop of the spec alone: attention along `axis` of the folding `dims`, with `value` (H_kv
    or H heads) as the values; returns (B, H, N, D) in float64 (or `dtype`). Differentiable."""
    batch, heads, n, d = q.shape
    dims = tuple(dims)
    qf, kf, vf, position = _folded(q, k, value, dims, dtype)
    scale = d**-0.5 if scale is None else scale
    out = _hop_f64(qf, kf, vf, position, axis, n, causal, scale)
    return out.reshape(batch, heads, padded_length(dims), d)[:, :, :n]


def exact_attention_f64(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float | None = None,
    rows: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    window: int | None = None,
) -> torch.Tensor:
    """Ordinary softmax attention in float64 (or `dtype`), optionally only for the query positions
    in `rows`; with a `window`, each query sees only the last `window` keys up to itself (causal only)."""
    heads, n, d = q.shape[1], q.shape[2], q.shape[3]
    scale = d**-0.5 if scale is None else scale
    rows = torch.arange(n, device=q.device) if rows is None else rows.to(q.device)
    qs = q[:, :, rows].to(dtype)
    ks = _expand_kv(k, heads).to(dtype)
    vs = _expand_kv(v, heads).to(dtype)
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


def tensorized_rows_f64(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dims: Sequence[int],
    causal: bool,
    scale: float | None,
    rows: torch.Tensor,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The tensorized operator at the query positions `rows` only, (B, H, len(rows), D) in float64
    (or `dtype`); the same values as `tensorized_attention_f64(...)[:, :, rows]`.

    The output at position p with coordinates (c_0, ..., c_{m-1}) is the last hop (axis 0) over
    the values at (x_0, c_1, ..., c_{m-1}); those come from the hop over axis 1 at
    (x_0, x_1, c_2, ...), and so on. So the hop over axis a is needed only on the positions whose
    coordinates after a are p's: at most the padded length P of query-key pairs per hop and row,
    instead of P times the slice length for the whole tensor."""
    n, d = q.shape[2], q.shape[3]
    dims = tuple(dims)
    qf, kf, vf, position = _folded(q, k, v, dims, dtype)
    scale = d**-0.5 if scale is None else scale
    m = len(dims)
    outputs = []
    for p in rows.tolist():
        coords = _unravel(int(p), dims)
        values = vf  # the values at (x_0, ..., x_a, c_{a+1}, ...) before the hop over axis a
        for a in range(m - 1, -1, -1):
            free = (slice(None),) * (a + 1)
            keys = kf[(slice(None), slice(None), *free, *coords[a + 1 :])]  # (B, H, d_0..d_a, D)
            queries = qf[(slice(None), slice(None), *free[:a], *coords[a:])]  # (B, H, d_0..d_{a-1}, D)
            scores = (queries.unsqueeze(-2) @ keys.transpose(-1, -2)) * scale  # (..., 1, d_a)
            if causal:
                allowed = torch.arange(dims[a], device=q.device) <= coords[a]
            else:
                allowed = position[(*free, *coords[a + 1 :])] < n  # (d_0..d_a)
                allowed = allowed.unsqueeze(-2)
            values = _masked_softmax_attend(scores, allowed.expand(scores.shape), values).squeeze(-2)
        outputs.append(values)
    return torch.stack(outputs, dim=2)


def _unravel(position: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    coords = []
    for size in reversed(dims):
        position, c = divmod(position, size)
        coords.append(c)
    return tuple(reversed(coords))


def padded_work(dims: Sequence[int]) -> int:
    """Query-key pairs of the whole-tensor evaluation per (batch, head): P times the sum of the dims."""
    return math.prod(dims) * sum(dims)
