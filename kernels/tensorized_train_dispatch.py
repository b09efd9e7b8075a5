"""Tensorized attention for training with each hop's forward and backward on the backend that runs the
pair fastest: tbench's Triton hop or cuDNN through SDPA (tbench calls FA3's forward op only; the
fa3-fwd wheel has no backward).

The fused Triton chain (kernels/tensorized_autograd.py) keeps dq and dk in float32 accumulators
across its hops; a chain that mixes backends runs each hop as its own differentiable op, and
autograd adds the hops' dq and dk shares (an elementwise pass over each per extra hop). So the choice is made
in two steps, on the hop's real views: per hop, the backend whose forward + backward is fastest; then,
if that mixes in another backend, the mixed chain against the fused Triton chain, end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn.attention import SDPBackend

from ..core.folding import hop_axes
from .hop_backend import HopBackend, all_triton
from .tensorized_autograd import tensorized_attention_train, tensorized_hop_train
from .tensorized_dispatch import backend_for_hop, fastest_per_hop, sdpa_hop
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
    backends: Sequence[HopBackend], sdpa_backend: SDPBackend = SDPBackend.CUDNN_ATTENTION,
) -> torch.Tensor:
    """The operator, differentiable, with hop t's forward and backward on backends[t]; all Triton is
    the fused Triton chain. (B, H, N, D) in q's dtype."""
    dims, scale = checked_arguments(q, k, v, dims, causal, scale)
    if len(backends) != len(dims):
        raise ValueError(f"{len(backends)} hop backends for {len(dims)} hops")
    _check_trainable(backends)
    if all_triton(backends):
        return tensorized_attention_train(q, k, v, dims, causal, scale)
    value = v
    for axis, backend in zip(hop_axes(len(dims)), backends, strict=True):
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


def choose_train_backends(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: Sequence[int], causal: bool, scale: float | None,
    seconds: Seconds, candidates: Sequence[HopBackend] = TRAIN_BACKENDS,
    sdpa_backend: SDPBackend = SDPBackend.CUDNN_ATTENTION,
) -> tuple[HopBackend, ...]:
    """Per hop, the candidate whose forward + backward `seconds` finds fastest on the hop's real views
    (the next hop gets the chosen backend's output as its value); if that mixes backends, the mixed
    chain is kept only if `seconds` finds its training step faster than the fused Triton chain's.
    A backend that refuses a hop (RuntimeError) is skipped; Triton runs every hop."""
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

    mixed = fastest_per_hop(q, k, v.detach(), dims, candidates, seconds, trial, advance)
    fused = (HopBackend.TRITON,) * len(dims)
    if mixed == fused:
        return fused

    def chain(backends: tuple[HopBackend, ...]) -> Callable[[], object]:
        return _step(lambda q_, k_, v_: tensorized_attention_train_dispatch(q_, k_, v_, dims, causal, scale, backends,
                                                                          sdpa_backend), (q, k, v), d_out)

    return mixed if seconds(chain(mixed)) < seconds(chain(fused)) else fused
