"""Each forward hop of tensorized attention under each backend that can run it, timed alone.

For B=1, H=32, H_kv=8, D=128, bf16, causal and the given lengths and orders (auto dims), every hop
runs as tbench's Triton kernel (autotuned), as FlashAttention-3 (on strided views of the folded
tensors, writing into a view of the output, no copies where the slices are one stride apart), and
as cuDNN SDPA and FlashAttention-2 on the same views (kernels/tensorized_dispatch.py runs each).
Here FA3 and SDPA pair H query heads with H_kv key heads only when the value has H_kv heads too
(hop 1); later hops get K repeated to H heads, that copy timed on its own, and the script asks
whether cuDNN pairs 8 key heads with a 32-head value itself. Each output is compared with the Triton hop's. Also times
whole compositions (Triton only; FA3 where it runs, Triton elsewhere; the SDPA composition) and,
with --profile, lists the CUDA kernels of the SDPA composition at the largest length.

    python3 benchmarks/hop_backends.py [--lengths 16k,64k,128k] [--orders 2,3] [--profile]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

from tbench.core.folding import auto_dims, format_dims, hop_axes
from tbench.core.sweep import parse_ints, parse_lengths
from tbench.kernels import tensorized_dispatch as td
from tbench.kernels import tensorized_triton as tt
from tbench.kernels.tensorized_sdpa import tensorized_attention_sdpa

B, H, H_KV, D = 1, 32, 8, 128


def _ms(fn: Callable[[], object], rep_ms: int = 200) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


@dataclass
class Operands:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_all: torch.Tensor  # K repeated to H heads
    dims: tuple[int, ...]
    scale: float
    have_fa3: bool

    def triton_hop(self, value: torch.Tensor, out: torch.Tensor, axis: int) -> None:
        td.run_hop(td.HopBackend.TRITON, self.q, self.k, value, out, self.dims, axis, True, self.scale)

    def fa3_hop(self, value: torch.Tensor, out: torch.Tensor, axis: int) -> None:
        """FA3 on views; a later hop (an H-head value) gets K repeated, which FA3 needs."""
        keys = self.k if value.shape[1] == self.k.shape[1] else self.k_all
        td.run_hop(td.HopBackend.FA3, self.q, keys, value, out, self.dims, axis, True, self.scale)


def time_hop(ops: Operands, value: torch.Tensor, t: int, axis: int) -> tuple[torch.Tensor, str]:
    """Times hop t (0-based) under every backend; returns the Triton output and the fastest backend."""
    dims, q = ops.dims, ops.q
    n = q.shape[2]
    label = f"| {n} | {format_dims(dims)} | {t + 1} | {dims[axis]} | {math.prod(dims[axis + 1:])} |"
    ours = torch.empty_like(q)
    ops.triton_hop(value, ours, axis)
    best_ms, best = _ms(lambda: ops.triton_hop(value, ours, axis)), "triton"
    print(f"{label} Triton | {best_ms:.4f} | |", flush=True)
    if t > 0:
        copy_ms = _ms(lambda: ops.k[:, :, None].expand(B, H_KV, H // H_KV, n, D).reshape(B, H, n, D).contiguous())
        print(f"{label} (K repeated to H heads, the copy alone) | {copy_ms:.4f} | |", flush=True)
    if td.slices_view(q, dims, axis) is None:
        return ours, best
    if ops.have_fa3:
        theirs = torch.empty_like(q)
        try:
            ops.fa3_hop(value, theirs, axis)
            diff = (theirs.float() - ours.float()).abs().max().item()
            fa3_ms = _ms(lambda: ops.fa3_hop(value, theirs, axis))
            print(f"{label} FA3 (views, into the output) | {fa3_ms:.4f} | {diff:.2e} |", flush=True)
            if fa3_ms < best_ms:
                best_ms, best = fa3_ms, "fa3"
        except RuntimeError as exc:
            print(f"{label} FA3 | failed: {str(exc).splitlines()[0][:120]} | |", flush=True)
    keys = ops.k if value.shape[1] == H_KV else ops.k_all
    sdpa_views = [td.slices_view(x, dims, axis).transpose(1, 2) for x in (q, keys, value)]  # (slices, heads, L, D)
    expected = td.slices_view(ours, dims, axis).transpose(1, 2).float()
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
        def call(views=sdpa_views) -> torch.Tensor:
            return F.scaled_dot_product_attention(*views, is_causal=True, scale=ops.scale, enable_gqa=True)

        try:
            with sdpa_kernel([backend]):
                diff = (call().float() - expected).abs().max().item()
                sdpa_ms = _ms(call)
            print(f"{label} SDPA {backend.name} (views) | {sdpa_ms:.4f} | {diff:.2e} |", flush=True)
        except RuntimeError as exc:
            print(f"{label} SDPA {backend.name} | failed: {str(exc).splitlines()[0][:100]} | |", flush=True)
    if t > 0:
        # would SDPA pair H_kv key heads with an H-head value? (it would save the K copy)
        mixed_views = [sdpa_views[0], td.slices_view(ops.k, dims, axis).transpose(1, 2), sdpa_views[2]]
        try:
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                F.scaled_dot_product_attention(*mixed_views, is_causal=True, scale=ops.scale, enable_gqa=True)
            print(f"{label} SDPA cuDNN, 8 key heads and 32 value heads | accepted | |", flush=True)
        except RuntimeError as exc:
            print(f"{label} SDPA cuDNN, 8 key heads and 32 value heads | refused: {str(exc).splitlines()[0][:100]} | |",
                  flush=True)
    return ours, best


def time_operator(ops: Operands) -> None:
    dims = ops.dims
    n = ops.q.shape[2]
    value, chosen = ops.v, []
    for t, axis in enumerate(hop_axes(len(dims))):
        value, best = time_hop(ops, value, t, axis)
        chosen.append(best)
    bufs = [torch.empty_like(ops.q), torch.empty_like(ops.q)]

    def mixed() -> torch.Tensor:
        src = ops.v
        for i, (axis, best) in enumerate(zip(hop_axes(len(dims)), chosen, strict=True)):
            (ops.fa3_hop if best == "fa3" else ops.triton_hop)(src, bufs[i % 2], axis)
            src = bufs[i % 2]
        return src

    def whole() -> torch.Tensor:
        return tt.tensorized_attention_triton(ops.q, ops.k, ops.v, dims, True, ops.scale)

    def composition() -> torch.Tensor:
        return tensorized_attention_sdpa(ops.q, ops.k, ops.v, dims, True, ops.scale)

    diff = (mixed().float() - whole().float()).abs().max().item()
    row = f"| {n} | {format_dims(dims)} | all | | |"
    print(f"{row} Triton, whole operator | {_ms(whole):.4f} | |")
    print(f"{row} fastest per hop {'+'.join(chosen)} (K copy of FA3 hops > 1 not included) | {_ms(mixed):.4f} | "
          f"{diff:.2e} |")
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        print(f"{row} SDPA composition (cuDNN) | {_ms(composition):.4f} | |", flush=True)


def profile_composition(n: int, scale: float) -> None:
    q = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
    dims = auto_dims(n, 2)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for _ in range(3):
            tensorized_attention_sdpa(q, k, v, dims, True, scale)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                tensorized_attention_sdpa(q, k, v, dims, True, scale)
            torch.cuda.synchronize()
    print(f"\nSDPA composition, N={n}, dims {format_dims(dims)}, 10 calls:")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="16k,64k,128k")
    parser.add_argument("--orders", default="2,3")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    have_fa3 = td.fa3_forward() is not None
    if not have_fa3:
        print("FA3 not available")
    torch.manual_seed(0)
    scale = D**-0.5
    lengths = parse_lengths(args.lengths)
    print("| N | dims | hop | L | C | backend | ms | max abs diff vs Triton |")
    print("|---|---|---|---|---|---|---:|---:|")
    for n in lengths:
        q = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
        k_all = k[:, :, None].expand(B, H_KV, H // H_KV, n, D).reshape(B, H, n, D).contiguous()
        for m in parse_ints(args.orders, "orders"):
            dims = auto_dims(n, m)
            if math.prod(dims) == n:
                time_operator(Operands(q, k, v, k_all, dims, scale, have_fa3))
        del q, k, v, k_all
    if args.profile:
        profile_composition(lengths[-1], scale)


if __name__ == "__main__":
    main()
