"""Tensorized attention composed from PyTorch SDPA: one SDPA call per hop on strided views.

This is the version a user would write by hand, and the bar the Triton kernel must beat.
Folding is a reshape; the hop over axis j views the folded (B, H, A, n_j, C, D) tensor as
(B*H*A, C, n_j, D), i.e. the C inner coordinates play the role of heads and n_j is the
sequence. No permute copies are made; SDPA backends that need another layout copy on their own.

With GQA, hop 1 lets SDPA pair the H query heads with the H_kv key/value heads itself
(`enable_gqa`) whenever the slices can be its batch axis (B = 1, or one of the outer and inner
extents is 1). Later hops pair H_kv key heads with an H-head value (the previous output): cuDNN and
the math backend take that too, FlashAttention-2 and the memory-efficient kernel do not, so by
default (the readable reference) those hops get K repeated to H heads, one copy of K.

Each hop can run under its own plan (`HopPlan`: SDPA backend, and whether SDPA pairs the heads
itself), and `choose_plans` picks, hop by hop, the fastest of the candidates by timing them on the
hop's real views.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class HopPlan:
    """How one hop runs: the SDPA backend (None: SDPA's own dispatch) and whether SDPA pairs the
    query heads with fewer key heads itself (`native_gqa`) instead of getting K repeated."""

    backend: SDPBackend | None = None
    native_gqa: bool = False


HopRun = Callable[[HopPlan, torch.Tensor], torch.Tensor]


def tensorized_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dims: Sequence[int],
    causal: bool,
    scale: float | None = None,
    plans: Sequence[HopPlan] | None = None,
    on_hop: Callable[[int, bool, HopRun, torch.Tensor], HopPlan] | None = None,
) -> torch.Tensor:
    """The operator, one SDPA call per hop. `plans[t]` is hop t's plan; without plans, SDPA's own
    dispatch, native GQA on hop 1 where it can be had and K repeated on later hops. `on_hop(t,
    native_ok, run, value)`, when given, decides hop t's plan instead: `run(plan, value)` gives the
    hop's output under a plan from its input value (the previous hop's output; v on hop 1), making
    any copy of K the plan needs unless a hop chosen before made it; native_ok says whether native
    GQA is possible on that hop. With on_hop the hops' outputs are detached from one another (a
    choice times hops; it does not differentiate the chain)."""
    batch, heads, n, d = q.shape
    kv_heads = k.shape[1]
    dims = tuple(dims)
    total = math.prod(dims)
    scale = d**-0.5 if scale is None else scale
    group = heads // kv_heads
    pad = total - n
    axes = hop_axes(len(dims))
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (t.contiguous() for t in (q, k, v))
    # K (and, on hop 1, V) expanded to H heads once, only if some hop needs it
    repeated: dict[str, torch.Tensor] = {}

    def heads_of(x: torch.Tensor, cache: dict[str, torch.Tensor]) -> torch.Tensor:
        if x.shape[1] == heads:
            return x
        if x is not k and x is not v:
            return _repeat_heads(x, group)  # another hop-1 value (a plan choice's own copy of v)
        name = "k" if x is k else "v"
        if name not in cache:
            cache[name] = _repeat_heads(x, group)
        return cache[name]

    position = torch.arange(total, device=q.device)
    valid = position < n
    value = v
    for hop, axis in enumerate(axes):
        # SDPA pairs the heads itself when the slices can be its batch axis and no key mask is needed
        native_ok = group > 1 and (causal or not pad) and _one_stride(batch, dims, axis)
        mask = None
        if pad and not causal:
            # Keys at padded positions never count; the mask varies per slice, not per head.
            keys = _hop_view(valid.view(1, 1, total, 1), dims, axis)[..., 0]  # (A, C, n_axis)
            keys = keys.unsqueeze(0).expand(batch * heads, *keys.shape)
            mask = keys.reshape(-1, keys.shape[-2], 1, keys.shape[-1])

        def run(plan: HopPlan, value: torch.Tensor, cache: dict[str, torch.Tensor] = repeated, axis: int = axis,
                mask: torch.Tensor | None = mask, native_ok: bool = native_ok) -> torch.Tensor:
            native = plan.native_gqa and native_ok
            if native:
                views = [_slices_view(t, dims, axis) for t in (q, k, value)]
            else:
                views = [_hop_view(heads_of(t, cache), dims, axis) for t in (q, k, value)]
            with _under(plan.backend):
                out = F.scaled_dot_product_attention(*views, attn_mask=mask, is_causal=causal, scale=scale,
                                                     enable_gqa=native)
            return _unslices_view(out, batch, dims, axis) if native else _unhop_view(out, batch, heads, total)

        if on_hop is not None:
            # each trial starts from the copies the hops chosen so far made, so it pays for its own
            plan = on_hop(hop, native_ok, lambda plan, value, run=run: run(plan, value, dict(repeated)), value)
            value = run(plan, value).detach()
        else:
            value = run(plans[hop] if plans is not None else HopPlan(None, native_gqa=hop == 0), value)
        if mask is not None:
            # A padded query whose slice has no valid key must give 0, not NaN (spec, "Masks").
            value = value.masked_fill(~valid.view(1, 1, total, 1), 0)
    return value[:, :, :n]


def _under(backend: SDPBackend | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if backend is None else sdpa_kernel([backend])


def choose_plans(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dims: Sequence[int],
    causal: bool,
    scale: float | None,
    candidates: Sequence[SDPBackend],
    seconds: Callable[[Callable[[], object]], float],
    train: bool = False,
) -> tuple[HopPlan, ...]:
    """For each hop in turn, the plan that `seconds` finds fastest on that hop's views, trying each
    candidate backend with native GQA (where the hop allows it) and with K repeated (the later hops
    get the chosen plan's output as their value); SDPA's own dispatch for a hop that no candidate
    accepts. With `train`, a plan's time is its hop's forward and backward (the gradients of q, k
    and the hop's input value, K's summed over the repeated heads), not the forward alone."""
    chosen: list[HopPlan] = []
    if train:
        q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
        d_out = torch.randn(q.shape[0], q.shape[1], math.prod(dims), q.shape[-1], device=q.device, dtype=q.dtype,
                            generator=torch.Generator(device=q.device).manual_seed(0))

    def timed(run: HopRun, plan: HopPlan, value: torch.Tensor) -> Callable[[], object]:
        if not train:
            return lambda: run(plan, value)
        leaf = value.detach().requires_grad_()
        # retain_graph: the padding and the repeated K are shared by every step of the choice
        return lambda: torch.autograd.grad(run(plan, leaf), (q, k, leaf), d_out, retain_graph=True)

    def pick(hop: int, native_ok: bool, run: HopRun, value: torch.Tensor) -> HopPlan:
        best, best_s = HopPlan(None, native_gqa=False), math.inf
        for backend in candidates:
            for native in (True, False) if native_ok else (False,):
                plan = HopPlan(backend, native)
                try:
                    with warnings.catch_warnings():
                        # a backend that refuses says why in a warning before it raises; the choice is the record
                        warnings.simplefilter("ignore", UserWarning)
                        took = seconds(timed(run, plan, value))
                except RuntimeError:  # the backend does not take this shape, dtype, layout or head pairing
                    continue
                if took < best_s:
                    best, best_s = plan, took
        chosen.append(best)
        return best

    with torch.set_grad_enabled(train):
        tensorized_attention_sdpa(q, k, v, dims, causal, scale, on_hop=pick)
    return tuple(chosen)
