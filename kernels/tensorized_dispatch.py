"""Tensorized attention with each hop on the backend that runs it fastest: tbench's Triton hop,
FlashAttention-3's forward (the fa3-fwd wheel or upstream's Hopper build) or cuDNN through SDPA.

A hop over axis j is attention inside slices of n_j positions, one stride apart (see
kernels/tensorized_triton.py). When one stride walks all the slices (batch 1 and at most one of the
outer and inner extents above 1, e.g. both hops of m = 2) the slices are the batch axis of a
(slices, L, heads, D) view, which FA3 and cuDNN take without a copy: FA3 writes its output into a
view of the hop's output buffer, cuDNN returns its own tensor. FA3 pairs the H query heads with
H_kv key heads only when the value has H_kv heads too (hop 1); cuDNN also pairs them with an
H-head value (later hops). `choose_hop_backends` times the candidates on the hop's real views, once
per shape; `tensorized_attention_dispatch` runs the chosen ones.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..core.folding import hop_axes
from .hop_backend import HopBackend
from .tensorized_backward import SavedForward
from .tensorized_sdpa import _slices_view, _unslices_view
from .tensorized_triton import _LOG2E, _launch_hop, checked_arguments

FA3_MODULES = ("flash_attn_interface", "fa3_fwd_interface")


def fa3_forward() -> Callable[..., object] | None:
    """FA3's forward op (`torch.ops.<module>.fwd`, registered by importing its interface), or None."""
    for module, namespace in zip(FA3_MODULES, ("flash_attn_3", "fa3_fwd"), strict=True):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        ops = getattr(torch.ops, namespace, None)
        if ops is not None and hasattr(ops, "fwd"):
            return ops.fwd
    return None


def library_candidates() -> tuple[HopBackend, ...]:
    """The libraries besides Triton that a forward hop may run on here: cuDNN, and FA3 where installed."""
    return (HopBackend.CUDNN, HopBackend.FA3) if fa3_forward() is not None else (HopBackend.CUDNN,)


def slices_view(x: torch.Tensor, dims: Sequence[int], axis: int) -> torch.Tensor | None:
    """(B, Hx, N, D) with N = prod(dims) -> (slices, L, Hx, D), FA3's layout, as a view; None unless one
    stride walks the slices (see tensorized_sdpa._slices_view) and each row's D elements are contiguous."""
    if x.shape[2] != math.prod(dims) or x.stride(-1) != 1:
        return None
    view = _slices_view(x, dims, axis)
    return None if view is None else view.transpose(1, 2)


def _unslices(y: torch.Tensor, batch: int, dims: Sequence[int], axis: int) -> torch.Tensor:
    """Inverse of slices_view for a (slices, L, H, D) tensor of any strides (a view where they allow)."""
    return _unslices_view(y.transpose(1, 2), batch, dims, axis)


def hop_accepts(backend: HopBackend, q: torch.Tensor, k: torch.Tensor, value: torch.Tensor,
                dims: Sequence[int], axis: int) -> bool:
    """Whether `backend` can run this hop as a view (the backend may still refuse it when called)."""
    if backend is HopBackend.TRITON:
        return True
    if any(slices_view(x, dims, axis) is None for x in (q, k, value)):
        return False
    return backend is HopBackend.CUDNN or value.shape[1] == k.shape[1]


def backend_for_hop(backend: HopBackend, q: torch.Tensor, k: torch.Tensor, value: torch.Tensor,
                    dims: Sequence[int], axis: int) -> HopBackend:
    """`backend`, or Triton where it cannot take this hop as a view: inputs laid out otherwise than
    those a choice was timed on may not make views."""
    return backend if hop_accepts(backend, q, k, value, dims, axis) else HopBackend.TRITON


def writes_into_buffer(backend: HopBackend) -> bool:
    """Whether `backend` writes a hop's output into a buffer it is given (cuDNN returns its own)."""
    return backend is not HopBackend.CUDNN


def _new_output(like: torch.Tensor) -> torch.Tensor:
    """A hop's output buffer (a module-level hook so that tests can count them)."""
    return torch.empty_like(like, memory_format=torch.contiguous_format)


def run_hop(backend: HopBackend, q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, out: torch.Tensor | None,
            dims: tuple[int, ...], axis: int, causal: bool, scale: float) -> torch.Tensor:
    """One hop on `backend`; returns its output, (B, H, N, D): `out` itself where the backend
    `writes_into_buffer` (then `out` is required), else a new tensor."""
    if writes_into_buffer(backend) and out is None:
        raise ValueError(f"hop backend {backend.value!r} writes into an output buffer; none was given")
    if backend is HopBackend.TRITON:
        _launch_hop(q, k, value, out, dims, axis, causal, scale)
        return out
    if backend is HopBackend.FA3:
        _fa3_hop(q, k, value, out, dims, axis, causal, scale)
        return out
    return sdpa_hop(q, k, value, dims, axis, causal, scale, SDPBackend.CUDNN_ATTENTION)


def _fa3_hop(q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, out: torch.Tensor, dims: tuple[int, ...],
             axis: int, causal: bool, scale: float) -> torch.Tensor:
    """FA3's forward on the hop's views, writing into `out`; returns its log-sum-exps, (slices, H, L)
    float32, natural log of the softmax denominator of the scaled scores."""
    forward = fa3_forward()
    if forward is None:
        raise RuntimeError("FlashAttention-3 is not installed")
    views = [slices_view(x, dims, axis) for x in (q, k, value)]
    result = forward(*views, None, None, None, slices_view(out, dims, axis), None, None, None, None, None, None, None,
                     None, None, None, None, None, None, None, None, None, scale, causal, -1, -1, 0, 0.0, True, None,
                     1, None, 0)
    return result[1]


def _sdpa_hop_with_lse(q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, dims: tuple[int, ...], axis: int,
                       causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The hop as one cuDNN attention call on the slices views (on a CPU, ATen's flash kernel for the
    CPU stands in), asking for its log-sum-exps: ((B, H, N, D) output, (slices, H, L) natural-log
    log-sum-exps). cuDNN pairs the heads itself, as SDPA's GQA does; the CPU kernel pairs them only
    when key and value have the same heads, so there K is repeated for the value's heads."""
    views = _sdpa_views(q, k, value, dims, axis)
    if q.is_cuda:
        y, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(*views, None, True, 0.0, causal, False,
                                                                     scale=scale)[:2]
    else:
        q_view, k_view, v_view = views
        if k_view.shape[1] != v_view.shape[1]:
            k_view = k_view.repeat_interleave(v_view.shape[1] // k_view.shape[1], dim=1)
        y, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q_view, k_view, v_view, 0.0, causal,
                                                                            scale=scale)[:2]
    return _unslices_view(y, q.shape[0], dims, axis), lse


def _store_lse(lse: torch.Tensor, hop_lse: torch.Tensor, dims: tuple[int, ...], axis: int) -> None:
    """A library's (slices, H, L) natural-log log-sum-exps into `lse`, (B, H, N) in the Triton kernels'
    units (log2, as their weights are exp2(s * scale * log2(e) - lse))."""
    slices, heads = hop_lse.shape[0], hop_lse.shape[1]
    rows = hop_lse.reshape(slices, heads, dims[axis]).transpose(1, 2).unsqueeze(-1)
    torch.mul(_unslices(rows, lse.shape[0], dims, axis).squeeze(-1), _LOG2E, out=lse)


def run_hop_saving(backend: HopBackend, q: torch.Tensor, k: torch.Tensor, value: torch.Tensor,
                   out: torch.Tensor | None, lse: torch.Tensor, dims: tuple[int, ...], axis: int, causal: bool,
                   scale: float) -> torch.Tensor:
    """One hop on `backend` as `run_hop` does (`out` as there), also writing the per-row log-sum-exps
    the Triton backward needs into `lse`, (B, H, N) float32; returns its output."""
    if writes_into_buffer(backend) and out is None:
        raise ValueError(f"hop backend {backend.value!r} writes into an output buffer; none was given")
    if backend is HopBackend.TRITON:
        _launch_hop(q, k, value, out, dims, axis, causal, scale, lse=lse)
        return out
    if backend is HopBackend.FA3:
        _store_lse(lse, _fa3_hop(q, k, value, out, dims, axis, causal, scale), dims, axis)
        return out
    result, hop_lse = _sdpa_hop_with_lse(q, k, value, dims, axis, causal, scale)
    _store_lse(lse, hop_lse, dims, axis)
    return result


def saved_forward_on(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: tuple[int, ...], causal: bool,
                     scale: float, backends: Sequence[HopBackend]) -> SavedForward:
    """The forward with hop t on backends[t] (Triton where that backend cannot take the hop as a
    view), keeping what the fused Triton backward reads: every hop's output and log-sum-exps, as
    tensorized_backward.forward_with_saved does with the Triton hops alone."""
    batch, heads, n, _ = q.shape
    outputs, lses = [], []
    value = v
    for axis, backend in zip(hop_axes(len(dims)), backends, strict=True):
        chosen = backend_for_hop(backend, q, k, value, dims, axis)
        out = _new_output(q) if writes_into_buffer(chosen) else None
        lse = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device)
        value = run_hop_saving(chosen, q, k, value, out, lse, dims, axis, causal, scale)
        outputs.append(value)
        lses.append(lse)
    return SavedForward(tuple(outputs), tuple(lses))


def sdpa_hop(q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, dims: tuple[int, ...], axis: int, causal: bool,
             scale: float, backend: SDPBackend) -> torch.Tensor:
    """One hop as one SDPA call on the slices views, SDPA pairing the heads itself; (B, H, N, D)."""
    with sdpa_kernel([backend]):
        y = F.scaled_dot_product_attention(*_sdpa_views(q, k, value, dims, axis), is_causal=causal, scale=scale,
                                           enable_gqa=True)
    return _unslices_view(y, q.shape[0], dims, axis)


def _sdpa_views(q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, dims: tuple[int, ...], axis: int
                ) -> list[torch.Tensor]:
    """The hop's q, k and value as (slices, heads, L, D) views, SDPA's layout; RuntimeError (a backend
    refusing the hop) unless one stride walks the slices."""
    views = [slices_view(x, dims, axis) for x in (q, k, value)]
    if any(view is None for view in views):
        raise RuntimeError("the slices of this hop are not one stride apart")
    return [view.transpose(1, 2) for view in views]


def tensorized_attention_dispatch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: Sequence[int],
                                  causal: bool, scale: float | None, backends: Sequence[HopBackend]) -> torch.Tensor:
    """The operator with hop t on backends[t]; (B, H, N, D) in q's dtype."""
    dims, scale = checked_arguments(q, k, v, dims, causal, scale)
    value, value_is_ours = v, False
    # a buffer of ours whose contents no hop reads any more: the next hop that needs one writes there,
    # so that no more than two are alive and none is made for a hop cuDNN runs (it returns its own)
    spare: torch.Tensor | None = None
    for axis, backend in zip(hop_axes(len(dims)), backends, strict=True):
        chosen = backend_for_hop(backend, q, k, value, dims, axis)
        if writes_into_buffer(chosen):
            out, spare = (spare if spare is not None else _new_output(q)), None
        else:
            # cuDNN makes its own output: the spare's memory goes back to the allocator for it
            out, spare = None, None
        result = run_hop(chosen, q, k, value, out, dims, axis, causal, scale)
        if value_is_ours:
            spare = value
        value, value_is_ours = result, out is not None
    return value


HopAction = Callable[[HopBackend, torch.Tensor, int, int], object]  # (backend, value, axis, hop index)


def fastest_per_hop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: tuple[int, ...],
                    candidates: Sequence[HopBackend], seconds: Callable[[Callable[[], object]], float],
                    trial: HopAction, advance: Callable[[HopBackend, torch.Tensor, int, int], torch.Tensor]
                    ) -> tuple[HopBackend, ...]:
    """For each hop in turn, the backend (Triton or one of `candidates` that takes the hop's views)
    whose `trial(backend, value, axis, t)` step `seconds` finds fastest; `advance` runs the chosen
    one to give the next hop its value. A backend that raises RuntimeError (it refuses the dtype,
    head dim, layout or, in training, the backward) is skipped; Triton takes every hop."""
    chosen: list[HopBackend] = []
    value = v
    for t, axis in enumerate(hop_axes(len(dims))):
        best, best_s = HopBackend.TRITON, math.inf
        for backend in (HopBackend.TRITON, *(c for c in candidates if c is not HopBackend.TRITON)):
            if not hop_accepts(backend, q, k, value, dims, axis):
                continue
            try:
                took = seconds(trial(backend, value, axis, t))
            except RuntimeError:
                continue
            if took < best_s:
                best, best_s = backend, took
        chosen.append(best)
        value = advance(best, value, axis, t)
    return tuple(chosen)


def choose_hop_backends(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: Sequence[int], causal: bool,
                        scale: float | None, candidates: Sequence[HopBackend],
                        seconds: Callable[[Callable[[], object]], float]) -> tuple[HopBackend, ...]:
    """For each hop in turn, the candidate that `seconds` finds fastest on that hop's real views
    (the next hop gets the chosen backend's output as its value); Triton where no other runs."""
    dims, scale = checked_arguments(q, k, v, dims, causal, scale)
    buffers = [torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(2)]

    def advance(backend: HopBackend, value: torch.Tensor, axis: int, t: int) -> torch.Tensor:
        return run_hop(backend, q, k, value, buffers[t % 2], dims, axis, causal, scale)

    def trial(backend: HopBackend, value: torch.Tensor, axis: int, t: int) -> Callable[[], object]:
        return lambda: advance(backend, value, axis, t)

    return fastest_per_hop(q, k, v, dims, candidates, seconds, trial, advance)
