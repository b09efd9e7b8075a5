"""Tensorized attention for training with each hop's forward, and where it pays its backward, on the
backend that runs it fastest: tbench's Triton hop, cuDNN through SDPA, or (forward only: the fa3-fwd
wheel has no backward) FlashAttention-3.

The fused Triton chain (kernels/tensorized_autograd.py) keeps dq and dk in float32 accumulators
across its hops; a chain that mixes backends runs each hop as its own differentiable op, and
autograd adds the hops' dq and dk shares (an elementwise pass over each per extra hop). The fused
Triton backward can also start from a forward whose hops ran on the libraries, since FA3 and cuDNN
return the log-sum-exps it needs. So the choice is made in steps, on the hops' real views: per hop,
the backend whose forward + backward is fastest (the mixed chain), and the backend whose forward is
fastest (the library forward); then, where either differs from the fused Triton chain, the chains
end to end. Where some hop's slices are short enough for the packed backward kernel (16-bit
operands), each chain with the fused backward is also timed with that kernel in two pipeline stages
and TMA boxes on every such hop (hop_backend.PackedBackward), which is not the table's tile: on an
H100 it measured 22-23 % faster on some of those hops and 4 % slower on another. So if such a chain
wins, each of its staged hops is tried back on the table's tile, one at a time, and every change
that made the step faster is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch.nn.attention import SDPBackend

from ..core.folding import hop_axes
from . import tensorized_backward
from .hop_backend import HopBackend, PackedBackward, TrainChain, all_triton
from .tensorized_autograd import tensorized_attention_train, tensorized_hop_train
from .tensorized_dispatch import backend_for_hop, choose_hop_backends, fastest_per_hop, library_candidates, sdpa_hop
from .tensorized_triton import checked_arguments

TRAIN_BACKENDS = (HopBackend.TRITON, HopBackend.CUDNN)

Seconds = Callable[[Callable[[], object]], float]


def train_hop(backend: HopBackend, q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, dims: tuple[int, ...],
              axis: int, causal: bool, scale: float, sdpa_backend: SDPBackend = SDPBackend.CUDNN_ATTENTION
              ) -> torch.Tensor:
    """One differentiable hop on `backend` (Triton, or `sdpa_backend` for HopBackend.CUDNN: the math
    backend stands in for cuDNN on a CPU)."""
    if backend is HopBackend.TRITON:
        return tensorized_hop_train(q, k, value, dims, axis, causal, scale)
    _check_trainable((backend,))
    return sdpa_hop(q, k, value, dims, axis, causal, scale, sdpa_backend)


def _check_trainable(backends: Sequence[HopBackend]) -> None:
    for backend in backends:
        if backend not in TRAIN_BACKENDS:
            raise ValueError(f"hop backend {backend.value!r} has no backward here; use one of "
                             f"{', '.join(b.value for b in TRAIN_BACKENDS)}")


def tensorized_attention_train_dispatch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: Sequence[int], causal: bool, scale: float | None,
    chain: TrainChain, sdpa_backend: SDPBackend = SDPBackend.CUDNN_ATTENTION,
) -> torch.Tensor:
    """The operator, differentiable, run as `chain` says; (B, H, N, D) in q's dtype."""
    dims, scale = checked_arguments(q, k, v, dims, causal, scale)
    if len(chain.forward) != len(dims):
        raise ValueError(f"{len(chain.forward)} hop backends for {len(dims)} hops")
    if chain.fused_backward:
        return tensorized_attention_train(q, k, v, dims, causal, scale, forward_backends=chain.forward,
                                          packed_backward=chain.packed_backward)
    _check_trainable(chain.forward)
    value = v
    for axis, backend in zip(hop_axes(len(dims)), chain.forward, strict=True):
        value = train_hop(backend_for_hop(backend, q, k, value, dims, axis), q, k, value, dims, axis, causal, scale,
                          sdpa_backend)
    return value


def _step(run: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], d_out: torch.Tensor
          ) -> Callable[[], object]:
    """A training step of `run` on leaf copies of `inputs`: forward, then every input's gradient."""
    leaves = [x.detach().requires_grad_() for x in inputs]

    def step() -> object:
        with torch.enable_grad():
            return torch.autograd.grad(run(*leaves), leaves, d_out)

    return step


def choose_train_chain(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: Sequence[int], causal: bool, scale: float | None,
    seconds: Seconds, candidates: Sequence[HopBackend] = TRAIN_BACKENDS,
    sdpa_backend: SDPBackend = SDPBackend.CUDNN_ATTENTION, forward_candidates: Sequence[HopBackend] | None = None,
) -> TrainChain:
    """The training chain whose step `seconds` finds fastest, of up to three, each timed on the real
    inputs: the fused Triton chain; the mixed chain (per hop, the one of `candidates` whose forward +
    backward is fastest on the hop's real views, the next hop getting the chosen backend's output as
    its value); and the fused Triton backward behind the fastest forward of each hop among Triton and
    `forward_candidates` (default: the libraries this machine has, tensorized_dispatch.library_candidates);
    and, where `_staged_forms` gives any, each of those with a fused backward again with its packed
    kernel in two stages and TMA boxes on every packed hop (then per hop: `_unstage_slower_hops`).
    A chain that comes out as the fused Triton chain is not timed again, and when every one does,
    no chain is timed. A backend that refuses a hop (RuntimeError) is skipped; Triton runs every hop."""
    dims, scale = checked_arguments(q, k, v, dims, causal, scale)
    _check_trainable(candidates)
    d_out = torch.randn(q.shape, generator=torch.Generator(device=q.device).manual_seed(0), device=q.device,
                        dtype=q.dtype)

    def advance(backend: HopBackend, value: torch.Tensor, axis: int, t: int) -> torch.Tensor:
        with torch.no_grad():
            return train_hop(backend, q, k, value, dims, axis, causal, scale, sdpa_backend)

    def trial(backend: HopBackend, value: torch.Tensor, axis: int, t: int) -> Callable[[], object]:
        def hop(q_: torch.Tensor, k_: torch.Tensor, value_: torch.Tensor) -> torch.Tensor:
            return train_hop(backend, q_, k_, value_, dims, axis, causal, scale, sdpa_backend)

        return _step(hop, (q, k, value), d_out)

    fused = TrainChain.triton(len(dims))
    chains = [fused]
    mixed = fastest_per_hop(q, k, v.detach(), dims, candidates, seconds, trial, advance)
    if not all_triton(mixed):
        chains.append(TrainChain(mixed, fused_backward=False))
    if forward_candidates is None:
        forward_candidates = library_candidates()
    if forward_candidates:
        with torch.no_grad():
            forward = choose_hop_backends(q, k, v.detach(), dims, causal, scale, forward_candidates, seconds)
        if not all_triton(forward):
            chains.append(TrainChain(forward, fused_backward=True))
    staged = _staged_forms(q, dims)
    if staged:
        chains += [replace(chain, packed_backward=staged) for chain in chains if chain.fused_backward]
    if len(chains) == 1:
        return fused

    def timed(chain: TrainChain) -> float:
        return seconds(_step(lambda q_, k_, v_: tensorized_attention_train_dispatch(
            q_, k_, v_, dims, causal, scale, chain, sdpa_backend), (q, k, v), d_out))

    times = [timed(chain) for chain in chains]
    best = chains[times.index(min(times))]
    return _unstage_slower_hops(best, min(times), timed) if best.staged_hops else best


def _staged_forms(q: torch.Tensor, dims: Sequence[int]) -> tuple[PackedBackward, ...]:
    """Per hop, two stages and TMA boxes on the hops whose slices the packed kernel takes, or () when
    there is none or the operands are not 16-bit (see tensorized_backward.staged_packed_tile)."""
    if q.dtype not in (torch.bfloat16, torch.float16) or min(dims) > tensorized_backward.PACKED_MAX_LEN:
        return ()
    return tuple(PackedBackward.STAGED_BOXES if dims[axis] <= tensorized_backward.PACKED_MAX_LEN
                 else PackedBackward.TABLE for axis in hop_axes(len(dims)))


def _unstage_slower_hops(chain: TrainChain, took: float, timed: Callable[[TrainChain], float]) -> TrainChain:
    """`chain` (timed at `took`) with each of its staged hops put back on the table's tile where that
    alone made the step faster; where several did, the chain with all of them is timed too, and the
    fastest of those timed is kept."""
    best, best_took = chain, took
    faster: list[int] = []
    for t in chain.staged_hops:
        one = _on_table(chain, (t,))
        one_took = timed(one)
        if one_took < took:
            faster.append(t)
            if one_took < best_took:
                best, best_took = one, one_took
    if len(faster) > 1:
        every = _on_table(chain, faster)
        if timed(every) < best_took:
            best = every
    return best


def _on_table(chain: TrainChain, hops: Sequence[int]) -> TrainChain:
    """`chain` with `hops` on the table's packed tile (and no per-hop forms once none is staged)."""
    forms = tuple(PackedBackward.TABLE if t in hops else form for t, form in enumerate(chain.packed_backward))
    return replace(chain, packed_backward=forms if PackedBackward.STAGED_BOXES in forms else ())
