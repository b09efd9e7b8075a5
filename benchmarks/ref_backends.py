"""The SDPA composition of tensorized attention under each SDPA backend, against the Triton kernel.

`tensorized-ref` is meant to be the bar a hand-written PyTorch version sets, so it must use the
fastest SDPA backend for the shape. This prints, for B=1, H=32, H_kv=8, D=128, bf16, causal and
auto dims, the whole operator under each backend (default dispatch, cuDNN, FlashAttention-2,
memory-efficient) and each hop alone under each backend, next to the Triton kernel's hops.
Times are triton.testing.do_bench medians with the L2 flushed and inputs rotated.

    python3 benchmarks/ref_backends.py [--lengths 16384,131072] [--orders 2,3] [--rep-ms 300]
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch
import torch.nn.functional as F
import triton.testing
from kernel_bench import CAUSAL, H_KV, MIN_ROTATION_BYTES, B, D, H, bench_rotating, make_inputs
from torch.nn.attention import SDPBackend, sdpa_kernel

from tbench.core.folding import auto_dims, format_dims, hop_axes
from tbench.kernels import tensorized_triton as tt
from tbench.kernels.tensorized_sdpa import _hop_view, _repeat_heads, tensorized_attention_sdpa

BACKENDS = {
    "default": None,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def under(backend: SDPBackend | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if backend is None else sdpa_kernel([backend])


def time_or_reason(fn, *args, **kwargs) -> str:
    try:
        return f"{fn(*args, **kwargs):8.3f}"
    except Exception as exc:  # a backend that refuses the shape says so and the table goes on
        return f"{'-':>8} ({type(exc).__name__}: {str(exc).splitlines()[0][:60]})"


def operator_ms(sets, dims, backend, rep_ms: int) -> float:
    def call(q, k, v):
        with under(backend):
            return tensorized_attention_sdpa(q, k, v, dims, CAUSAL)

    call(*sets[0])
    return bench_rotating(call, sets, rep_ms)


def sdpa_hop_ms(q, k, value, dims, axis, backend, rep_ms: int) -> float:
    views = [_hop_view(t, dims, axis) for t in (q, k, value)]

    def call():
        with under(backend):
            return F.scaled_dot_product_attention(*views, is_causal=CAUSAL)

    call()
    return triton.testing.do_bench(call, warmup=25, rep=rep_ms, return_mode="median")


def triton_hop_ms(q, k, value, dims, axis, rep_ms: int) -> float:
    out = torch.empty_like(q)

    def call():
        tt._launch_hop(q, k, value, out, dims, axis, CAUSAL, D**-0.5)

    call()
    return triton.testing.do_bench(call, warmup=25, rep=rep_ms, return_mode="median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="16384,131072")
    parser.add_argument("--orders", default="2,3")
    parser.add_argument("--rep-ms", type=int, default=300)
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"cuDNN {torch.backends.cudnn.version()}")
    for n in (int(x) for x in args.lengths.split(",")):
        per_set = (H + 2 * H_KV) * B * n * D * 2
        sets = make_inputs(n, max(1, math.ceil(MIN_ROTATION_BYTES / per_set)))
        for m in (int(x) for x in args.orders.split(",")):
            dims = auto_dims(n, m)
            print(f"\nN={n} m={m} dims={format_dims(dims)}")
            ours = bench_rotating(lambda q, k, v, dims=dims: tt.tensorized_attention_triton(q, k, v, dims, CAUSAL),
                                  sets, args.rep_ms)
            print(f"  operator  triton   {ours:8.3f}")
            for name, backend in BACKENDS.items():
                print(f"  operator  {name:9s}{time_or_reason(operator_ms, sets, dims, backend, args.rep_ms)}")
            q, k, v = sets[0]
            group = H // H_KV
            k_full, v_full = _repeat_heads(k, group), _repeat_heads(v, group)
            for t, axis in enumerate(hop_axes(m)):
                value_full = v_full if t == 0 else torch.randn_like(q)
                value_ours = v if t == 0 else value_full
                mine = triton_hop_ms(q, k, value_ours, dims, axis, args.rep_ms)
                line = f"  hop {t} L={dims[axis]:4d} triton {mine:7.3f}"
                for name, backend in BACKENDS.items():
                    theirs = time_or_reason(sdpa_hop_ms, q, k_full, value_full, dims, axis, backend, args.rep_ms)
                    line += f" | {name} {theirs}"
                print(line, flush=True)
            del k_full, v_full
        del sets
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
