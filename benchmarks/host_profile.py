"""Host time of the tensorized kernels' calls: what the CPU spends issuing one forward or one training
step while the GPU is kept busy (a sleep kernel queued first, so that no wait on the GPU is counted),
and where the time of the Triton chain's own calls goes.

For B=1, H=32, H_kv=8, D=128, bf16, causal and the given lengths and orders (auto dims), prints the
median host time of: the Triton kernel's forward (`tensorized-triton`), `tensorized`'s forward on the
hops' chosen backends, the Triton chain's training forward and its backward called directly, the same
step under autograd, the SDPA composition's step under autograd, and cuDNN SDPA's forward and step
(a floor: one kernel each way). A step whose host time exceeds its GPU time is host-bound: its speed
is the host's. Then, with `--top K`, cProfile's K heaviest functions (own time) over ten direct
calls of the training forward and backward (the autograd engine runs a CUDA backward on its own
thread, which cProfile does not follow, hence direct calls).

    python3 benchmarks/host_profile.py [--lengths 4k,16k] [--orders 2,3] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tbench.core.folding import auto_dims, format_dims
from tbench.core.sweep import parse_ints, parse_lengths
from tbench.kernels import tensorized_backward as tb
from tbench.kernels.hop_backend import HopBackend
from tbench.kernels.tensorized_autograd import tensorized_attention_train
from tbench.kernels.tensorized_dispatch import choose_hop_backends, fa3_forward, tensorized_attention_dispatch
from tbench.kernels.tensorized_sdpa import choose_plans, tensorized_attention_sdpa
from tbench.kernels.tensorized_triton import tensorized_attention_triton
from tbench.methods.tensorized import HOP_CANDIDATES, _median_cuda_seconds

B, H, H_KV, D = 1, 32, 8, 128
SLEEP_CYCLES = 40_000_000  # about 20 ms of GPU time: longer than any call's issue here


def host_ms(fn: Callable[[], object], reps: int = 15) -> float:
    """Median wall time of issuing `fn` with the GPU busy (never waiting on it)."""
    fn()
    torch.cuda.synchronize()
    took = []
    for _ in range(reps):
        torch.cuda._sleep(SLEEP_CYCLES)
        start = time.perf_counter()
        fn()
        took.append(time.perf_counter() - start)
        torch.cuda.synchronize()
    return 1e3 * statistics.median(took)


def profile(fns: list[Callable[[], object]], top: int) -> str:
    pr = cProfile.Profile()
    for _ in range(10):
        torch.cuda._sleep(SLEEP_CYCLES)
        pr.enable()
        for fn in fns:
            fn()
        pr.disable()
        torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(pr, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def _step(run: Callable[[], torch.Tensor], leaves: tuple[torch.Tensor, ...], grad: torch.Tensor
          ) -> Callable[[], object]:
    return lambda: torch.autograd.grad(run(), leaves, grad)


def _cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def measure(n: int, m: int, top: int) -> None:
    q = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(q)
    leaves = tuple(x.detach().requires_grad_() for x in (q, k, v))
    dims = auto_dims(n, m)
    scale = D**-0.5
    # the choices the methods' binds make: `tensorized`'s hop backends, `tensorized-sdpa`'s training plans
    candidates = (HopBackend.CUDNN, HopBackend.FA3) if fa3_forward() is not None else (HopBackend.CUDNN,)
    backends = choose_hop_backends(q, k, v, dims, True, None, candidates, _median_cuda_seconds)
    plans = choose_plans(q, k, v, dims, True, None, HOP_CANDIDATES, _median_cuda_seconds, train=True)
    saved = tb.forward_with_saved(q, k, v, dims, True, scale)

    def train_forward() -> object:
        return tb.forward_with_saved(q, k, v, dims, True, scale)

    def train_backward() -> object:
        return tb.backward_from_saved(grad, q, k, v, saved, dims, True, scale)

    calls: list[tuple[str, Callable[[], object]]] = [
        ("tensorized-triton forward", lambda: tensorized_attention_triton(q, k, v, dims, True)),
        (f"tensorized forward {[b.value for b in backends]}",
         lambda: tensorized_attention_dispatch(q, k, v, dims, True, None, backends)),
        ("Triton chain: training forward (direct)", train_forward),
        ("Triton chain: backward (direct)", train_backward),
        ("Triton chain: step under autograd",
         _step(lambda: tensorized_attention_train(*leaves, dims, True), leaves, grad)),
        ("tensorized-sdpa: step under autograd",
         _step(lambda: tensorized_attention_sdpa(*leaves, dims, True, plans=plans), leaves, grad)),
        ("cuDNN SDPA forward", lambda: _cudnn(q, k, v)),
        ("cuDNN SDPA step under autograd", _step(lambda: _cudnn(*leaves), leaves, grad)),
    ]
    for name, fn in calls:
        print(f"N={n} m={m} {format_dims(dims)} | {name} | host {host_ms(fn):.3f} ms", flush=True)
    if top:
        print(profile([train_forward, train_backward], top), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4k,16k")
    parser.add_argument("--orders", default="2,3")
    parser.add_argument("--top", type=int, default=25, help="cProfile rows per shape (0: none)")
    args = parser.parse_args()
    for n in parse_lengths(args.lengths):
        for m in parse_ints(args.orders, "orders"):
            measure(n, m, args.top)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
