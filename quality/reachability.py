"""Which earlier positions influence each output of causal tensorized attention, measured: the
gradient of each output row of the float64 reference with respect to q, k and v."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..kernels.reference import tensorized_attention_f64


def measured_reach(n: int, dims: Sequence[int], head_dim: int = 4, seed: int = 0,
                   threshold: float = 1e-12) -> list[list[bool]]:
    """reach[p][x]: whether the output at p changes with q, k or v at x (|gradient| above threshold),
    on seeded random inputs; causal, float64."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 1, n, head_dim, generator=generator, dtype=torch.float64).requires_grad_()
               for _ in range(3))
    out = tensorized_attention_f64(q, k, v, dims, causal=True)
    projection = torch.randn(head_dim, generator=generator, dtype=torch.float64)
    reach = []
    for p in range(n):
        grads = torch.autograd.grad(out[0, 0, p] @ projection, (q, k, v), retain_graph=True)
        size = sum(g[0, 0].abs().sum(dim=-1) for g in grads)  # (n,): influence of each input position
        reach.append([bool(s > threshold) for s in size.tolist()])
    return reach
