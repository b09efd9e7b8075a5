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
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tbench.core.folding import auto_dims, format_dims
from tbench.core.sweep import parse_ints, parse_lengths
from tbench.harness.timing import CudaEventTimer
from tbench.kernels import tensorized_backward as tb
from tbench.kernels.tensorized_autograd import tensorized_attention_train
from tbench.kernels.tensorized_dispatch import choose_hop_backends, library_candidates, tensorized_attention_dispatch
from tbench.kernels.tensorized_sdpa import choose_plans, tensorized_attention_sdpa
from tbench.kernels.tensorized_train_dispatch import _step
from tbench.kernels.tensorized_triton import tensorized_attention_triton
from tbench.methods.tensorized import HOP_CANDIDATES, _median_cuda_seconds

B, H, H_KV, D = 1, 32, 8, 128
BUSY_MS = 20.0  # GPU kept busy this long while the profiled calls are issued


def host_ms(timer: CudaEventTimer, fn: Callable[[], object]) -> float:
    """The host's time to issue `fn` with the GPU busy, as tbench measures it for every row
    (`CudaEventTimer.prepare`), after one untimed call (tuning, first launches)."""
    fn()
    return timer.prepare(fn).host_ms


def profile(timer: CudaEventTimer, fns: list[Callable[[], object]], top: int) -> str:
    pr = cProfile.Profile()
    for _ in range(10):
        torch.cuda._sleep(int(BUSY_MS * timer.cycles_per_ms))
        pr.enable()
        for fn in fns:
            fn()
        pr.disable()
        torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(pr, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def _cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def measure(timer: CudaEventTimer, n: int, m: int, top: int) -> None:
    q = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn_like(q)
    dims = auto_dims(n, m)
    scale = D**-0.5
    # the choices the methods' binds make: `tensorized`'s hop backends, `tensorized-sdpa`'s training plans
    candidates = library_candidates()
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
         _step(lambda q_, k_, v_: tensorized_attention_train(q_, k_, v_, dims, True), (q, k, v), grad)),
        ("tensorized-sdpa: step under autograd",
         _step(lambda q_, k_, v_: tensorized_attention_sdpa(q_, k_, v_, dims, True, plans=plans), (q, k, v), grad)),
        ("cuDNN SDPA forward", lambda: _cudnn(q, k, v)),
        ("cuDNN SDPA step under autograd", _step(_cudnn, (q, k, v), grad)),
    ]
    for name, fn in calls:
        print(f"N={n} m={m} {format_dims(dims)} | {name} | host {host_ms(timer, fn):.3f} ms", flush=True)
    if top:
        print(profile(timer, [train_forward, train_backward], top), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4k,16k")
    parser.add_argument("--orders", default="2,3")
    parser.add_argument("--top", type=int, default=25, help="cProfile rows per shape (0: none)")
    args = parser.parse_args()
    timer = CudaEventTimer(torch.device("cuda"))
    for n in parse_lengths(args.lengths):
        for m in parse_ints(args.orders, "orders"):
            measure(timer, n, m, args.top)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
