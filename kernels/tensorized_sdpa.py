"""Tensorized attention composed from PyTorch SDPA: one SDPA call per hop on strided views.

This is the version a user would write by hand, and the bar the Triton kernel must beat.
Folding is a reshape; the hop over axis j views the folded (B, H, A, n_j, C, D) tensor as
(B*H*A, C, n_j, D), i.e. the C inner coordinates play the role of heads and n_j is the
sequence. No permute copies are made; SDPA backends that need another layout copy on their own.

With GQA, hop 1 lets SDPA pair the H query heads with the H_kv key/value heads itself
(`enable_gqa`) whenever the slices can be its batch axis (B = 1, or m = 1); later hops need K
repeated to H heads, which costs one copy of K.

Each hop can run under its own SDPA backend (`backends`), and `choose_backends` picks, hop by hop,
the fastest of some candidates by timing them on the hop's real views.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..core.folding import hop_axes


def _hop_view(x: torch.Tensor, dims: Sequence[int], axis: int) -> torch.Tensor:
    """(B, H, P, D) folded tensor -> 4D strided view (B*H*A, C, n_axis, D)."""
    batch, heads, _, d = x.shape
    outer = math.prod(dims[:axis])
    inner = math.prod(dims[axis + 1 :])
    return x.view(batch * heads * outer, dims[axis], inner, d).transpose(1, 2)


def _one_stride(batch: int, dims: Sequence[int], axis: int) -> bool:
    """Whether one stride walks every slice of the hop: at most one of B, A, C exceeds 1."""
    return sum(size > 1 for size in (batch, math.prod(dims[:axis]), math.prod(dims[axis + 1 :]))) <= 1


def _slices_view(x: torch.Tensor, dims: Sequence[int], axis: int) -> torch.Tensor | None:
    """(B, Hx, P, D) folded tensor -> (X, Hx, n_axis, D) with the heads kept as SDPA's head axis, so
    that SDPA's own GQA can pair query and key heads. Only a view when one stride walks all the
    slices, i.e. at most one of B, A, C exceeds 1; None otherwise."""
    batch, heads, _, d = x.shape
    outer = math.prod(dims[:axis])
    inner = math.prod(dims[axis + 1 :])
    if not _one_stride(batch, dims, axis):
        return None
    folded = x.view(batch, heads, outer, dims[axis], inner, d)
    return folded.permute(0, 2, 4, 1, 3, 5).reshape(batch * outer * inner, heads, dims[axis], d)


def _unslices_view(y: torch.Tensor, batch: int, dims: Sequence[int], axis: int) -> torch.Tensor:
    """Inverse of _slices_view; a copy happens only if SDPA returned another memory layout."""
    heads, d = y.shape[1], y.shape[-1]
    outer = math.prod(dims[:axis])
    inner = math.prod(dims[axis + 1 :])
    unfolded = y.reshape(batch, outer, inner, heads, dims[axis], d).permute(0, 3, 1, 4, 2, 5)
    return unfolded.reshape(batch, heads, math.prod(dims), d)


def _repeat_heads(x: torch.Tensor, group: int) -> torch.Tensor:
    """Each kv head repeated for its `group` query heads: one plain copy (repeat_interleave, which
    gathers by index, is about three times slower on a GPU)."""
    if group == 1:
        return x
    batch, heads, n, d = x.shape
    return x[:, :, None].expand(batch, heads, group, n, d).reshape(batch, heads * group, n, d).contiguous()


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
    backends: Sequence[SDPBackend | None] | None = None,
    on_hop: Callable[[int, Callable[[SDPBackend | None], torch.Tensor]], SDPBackend | None] | None = None,
) -> torch.Tensor:
    """The operator, one SDPA call per hop. `backends[t]` is hop t's SDPA backend (None: SDPA's own
    dispatch); `on_hop(t, run)`, when given, decides hop t's backend instead, `run(backend)` giving
    the hop's output under a backend."""
    batch, heads, n, d = q.shape
    kv_heads = k.shape[1]
    dims = tuple(dims)
    total = math.prod(dims)
    scale = d**-0.5 if scale is None else scale
    group = heads // kv_heads
    pad = total - n
    axes = hop_axes(len(dims))
    # Hop 1 pairs H query heads with H_kv key/value heads; SDPA does that itself (enable_gqa) when
    # the slices can be its batch axis and no key mask is needed. Otherwise K and V are expanded.
    native_gqa = group > 1 and (causal or not pad) and _one_stride(batch, dims, axes[0])
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (t.contiguous() for t in (q, k, v))
    # Later hops pair H query heads with H value heads (the previous output), so they need K
    # expanded to H heads; V is expanded only when hop 1 cannot use SDPA's GQA.
    k_all = _repeat_heads(k, group) if len(dims) > 1 or not native_gqa else k
    v_first = v if native_gqa else _repeat_heads(v, group)

    position = torch.arange(total, device=q.device)
    valid = position < n
    value = v_first
    for hop, axis in enumerate(axes):
        native = hop == 0 and native_gqa
        mask = None
        if pad and not causal:
            # Keys at padded positions never count; the mask varies per slice, not per head.
            keys = _hop_view(valid.view(1, 1, total, 1), dims, axis)[..., 0]  # (A, C, n_axis)
            keys = keys.unsqueeze(0).expand(batch * heads, *keys.shape)
            mask = keys.reshape(-1, keys.shape[-2], 1, keys.shape[-1])
        if native:
            views = [_slices_view(t, dims, axis) for t in (q, k, value)]
        else:
            views = [_hop_view(t, dims, axis) for t in (q, k_all, value)]

        def run(backend: SDPBackend | None, views: list = views, mask: torch.Tensor | None = mask,
                native: bool = native) -> torch.Tensor:
            with _under(backend):
                return F.scaled_dot_product_attention(*views, attn_mask=mask, is_causal=causal, scale=scale,
                                                      enable_gqa=native)

        backend = backends[hop] if backends is not None else None
        if on_hop is not None:
            backend = on_hop(hop, run)
        out = run(backend)
        value = _unslices_view(out, batch, dims, axis) if native else _unhop_view(out, batch, heads, total)
        if mask is not None:
            # A padded query whose slice has no valid key must give 0, not NaN (spec, "Masks").
            value = value.masked_fill(~valid.view(1, 1, total, 1), 0)
    return value[:, :, :n]


def _under(backend: SDPBackend | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if backend is None else sdpa_kernel([backend])


def choose_backends(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dims: Sequence[int],
    causal: bool,
    scale: float | None,
    candidates: Sequence[SDPBackend],
    seconds: Callable[[Callable[[], torch.Tensor]], float],
) -> tuple[SDPBackend | None, ...]:
    """For each hop in turn, the candidate backend that `seconds` finds fastest on that hop's views
    (the later hops get the chosen backend's output as their value); None for a hop that no
    candidate accepts (SDPA's own dispatch then)."""
    chosen: list[SDPBackend | None] = []

    def pick(hop: int, run: Callable[[SDPBackend | None], torch.Tensor]) -> SDPBackend | None:
        best, best_s = None, math.inf
        for backend in candidates:
            try:
                took = seconds(lambda backend=backend: run(backend))
            except RuntimeError:  # the backend does not take this shape, dtype or layout
                continue
            if took < best_s:
                best, best_s = backend, took
        chosen.append(best)
        return best

    tensorized_attention_sdpa(q, k, v, dims, causal, scale, on_hop=pick)
    return tuple(chosen)
