"""GPU benchmark of a training step's attention: forward, and forward + backward, of the fused Triton
tensorized chain (kernels/tensorized_autograd.py: `tensorized-triton`), kept or recomputed
intermediates, with the blocked hops' dQ fused into their dK/dV kernel, or behind each hop's fastest
forward on the libraries (FA3, cuDNN: "library fwd"); of `tensorized` (the training chain its bind
chooses: kernels/tensorized_train_dispatch.py); against the SDPA composition under autograd
(kernels/tensorized_sdpa.py; `tensorized-sdpa` with the per-hop plans its bind chooses in training,
by forward + backward, and `tensorized-sdpa-fwdplan` with those chosen by the forward alone;
`tensorized-ref` with K repeated on later hops) and cuDNN SDPA.

For B=1, H=32, H_kv=8, D=128, bf16, causal and the given lengths and orders (auto dims): checks the
Triton and the tensorized-sdpa gradients against tensorized-ref's (relative L2 of dQ, dK, dV), then times with
triton.testing.do_bench (median, L2 flushed before every rep). Prints one line per configuration.

    python3 benchmarks/train_bench.py [--lengths 16k,32k,128k] [--orders 2,3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import triton.testing

from tbench.core.folding import auto_dims, format_dims
from tbench.core.sweep import parse_ints, parse_lengths
from tbench.kernels.hop_backend import HopBackend, TrainChain
from tbench.kernels.tensorized_autograd import tensorized_attention_train
from tbench.kernels.tensorized_dispatch import choose_hop_backends, library_candidates
from tbench.kernels.tensorized_sdpa import HopPlan, choose_plans, tensorized_attention_sdpa
from tbench.kernels.tensorized_train_dispatch import choose_train_chain, tensorized_attention_train_dispatch
from tbench.methods.tensorized import HOP_CANDIDATES, _median_cuda_seconds

B, H, H_KV, D = 1, 32, 8, 128


@dataclass
class Row:
    n: int
    m: int
    dims: str
    method: str
    fwd_ms: float
    fwd_bwd_ms: float
    ratio: float  # fwd_bwd / fwd
    grad_rel_l2: float | None  # worst of dQ, dK, dV against tensorized-ref's (SDPA, K repeated)


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    make = lambda h: torch.randn(B, h, n, D, device="cuda", dtype=torch.bfloat16).requires_grad_()  # noqa: E731
    return make(H), make(H_KV), make(H_KV)


def _time(fn: Callable[[], torch.Tensor], q, k, v, backward: bool) -> float:
    grad = torch.randn_like(q)

    def step() -> None:
        out = fn()
        if backward:
            torch.autograd.grad(out, (q, k, v), grad)

    if not backward:
        with torch.no_grad():
            return float(triton.testing.do_bench(step, return_mode="median"))
    return float(triton.testing.do_bench(step, return_mode="median"))


def _grads(fn: Callable[[], torch.Tensor], q, k, v, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(fn(), (q, k, v), grad)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _measure(n: int, orders: list[int]) -> list[Row]:
    q, k, v = _inputs(n)
    rows: list[Row] = []

    def cudnn() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    if n <= 32768:  # exact attention's backward at 128k takes seconds per rep
        rows.append(Row(n, 0, "", "sdpa", _time(cudnn, q, k, v, False), _time(cudnn, q, k, v, True), 0.0, None))
    for m in orders:
        dims = auto_dims(n, m)

        def triton_fn(dims: tuple[int, ...] = dims) -> torch.Tensor:
            return tensorized_attention_train(q, k, v, dims, True)

        # the plans tensorized-sdpa's bind chooses in training, and in forward mode
        plans = choose_plans(q, k, v, dims, True, None, HOP_CANDIDATES, _median_cuda_seconds, train=True)
        fwd_plans = choose_plans(q, k, v, dims, True, None, HOP_CANDIDATES, _median_cuda_seconds)
        chain = choose_train_chain(q, k, v, dims, True, None, _median_cuda_seconds)
        with torch.no_grad():
            forward = choose_hop_backends(q, k, v.detach(), dims, True, None, library_candidates(),
                                          _median_cuda_seconds)
        print(f"N={n} m={m}: tensorized-sdpa plans {plans} (forward-chosen {fwd_plans}); tensorized chain "
              f"{[b.value for b in chain.forward]}, fused backward {chain.fused_backward} (packed kernel in two "
              f"stages with boxes on hops {[t + 1 for t in chain.staged_hops]}); fastest forward "
              f"{[b.value for b in forward]}", flush=True)

        def dispatch_fn(dims: tuple[int, ...] = dims, chain: TrainChain = chain) -> torch.Tensor:
            return tensorized_attention_train_dispatch(q, k, v, dims, True, None, chain)

        def library_fwd_fn(dims: tuple[int, ...] = dims, forward: tuple[HopBackend, ...] = forward) -> torch.Tensor:
            return tensorized_attention_train(q, k, v, dims, True, forward_backends=forward)

        def with_plans(plans: tuple[HopPlan, ...], dims: tuple[int, ...] = dims) -> Callable[[], torch.Tensor]:
            return lambda: tensorized_attention_sdpa(q, k, v, dims, True, plans=plans)

        sdpa_fn, sdpa_fwd_fn = with_plans(plans), with_plans(fwd_plans)

        def ref_fn(dims: tuple[int, ...] = dims) -> torch.Tensor:
            return tensorized_attention_sdpa(q, k, v, dims, True)

        def recompute_fn(dims: tuple[int, ...] = dims) -> torch.Tensor:
            return tensorized_attention_train(q, k, v, dims, True, recompute=True)

        def fused_fn(dims: tuple[int, ...] = dims) -> torch.Tensor:
            return tensorized_attention_train(q, k, v, dims, True, fused_dq=True)

        grad = torch.randn_like(q)
        reference = _grads(ref_fn, q, k, v, grad)

        def error(fn: Callable[[], torch.Tensor], grad: torch.Tensor = grad,
                  reference: tuple[torch.Tensor, ...] = reference) -> float:
            return max(_rel(a, b) for a, b in zip(_grads(fn, q, k, v, grad), reference, strict=True))

        for name, fn, checked in (("tensorized", dispatch_fn, True), ("tensorized-triton", triton_fn, True),
                                  ("tensorized-triton, library fwd", library_fwd_fn, True),
                                  ("tensorized-recompute", recompute_fn, False),
                                  ("tensorized-triton, dQ fused", fused_fn, True), ("tensorized-sdpa", sdpa_fn, True),
                                  ("tensorized-sdpa-fwdplan", sdpa_fwd_fn, False), ("tensorized-ref", ref_fn, False)):
            rows.append(Row(n, m, format_dims(dims), name, _time(fn, q, k, v, False), _time(fn, q, k, v, True),
                            0.0, error(fn) if checked else None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16k,32k,64k,128k")
    parser.add_argument("--orders", default="2,3")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows: list[Row] = []
    for n in parse_lengths(args.lengths):
        rows += _measure(n, parse_ints(args.orders, "orders"))
        torch.cuda.empty_cache()
    for row in rows:
        row.ratio = row.fwd_bwd_ms / row.fwd_ms
        err = f"{row.grad_rel_l2:.2e}" if row.grad_rel_l2 is not None else "-"
        print(f"N={row.n:>6} m={row.m} {row.dims:>9} {row.method:<27} fwd {row.fwd_ms:8.3f} ms  "
              f"fwd+bwd {row.fwd_bwd_ms:8.3f} ms  x{row.ratio:4.2f}  grad err {err}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
