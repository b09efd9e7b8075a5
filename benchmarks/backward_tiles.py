"""Launch shapes of the tensorized backward kernels, timed hop by hop on the benchmark shape.

For B=1, H=32, H_kv=8, D=128, bf16, causal and the given lengths and orders (auto dims), every hop's
backward (kernels/tensorized_backward.py) runs with each candidate launch shape: the dQ kernel's
shapes with the dK/dV kernel at the table's shape, then the dK/dV kernel's with dQ at the best one
found, and the packed kernel's for slices it takes. Each candidate's gradients are compared with
the table's (max abs difference) and timed with `triton.testing.do_bench` (median, L2 flushed before
each rep). Prints one Markdown row per (hop, kernel, shape), and the best shape per slice length.

    python3 benchmarks/backward_tiles.py [--lengths 32k,128k] [--orders 2,3] [--rep-ms 100]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton.testing

from tbench.core.folding import auto_dims, format_dims, hop_axes
from tbench.core.sweep import parse_ints, parse_lengths
from tbench.kernels import tensorized_backward as tb

B, H, H_KV, D = 1, 32, 8, 128

DQ_TILES = [tb.Tile(*x) for x in [(64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (128, 32, 4, 2),
                                  (128, 32, 8, 2), (128, 32, 8, 3), (128, 64, 8, 2), (64, 64, 8, 3)]]
DKDV_TILES = [tb.Tile(*x) for x in [(64, 64, 4, 2), (32, 64, 4, 2), (32, 64, 4, 3), (16, 64, 4, 2),
                                    (32, 128, 8, 2), (64, 128, 8, 2), (32, 128, 4, 3), (64, 64, 8, 3)]]
PACKED_TILES = [tb.PackedTile(*x) for x in [(64, 4, 1), (64, 4, 2), (128, 8, 1), (128, 8, 2), (32, 4, 1),
                                            (32, 2, 1), (64, 8, 1)]]


def _ms(fn: Callable[[], None], rep_ms: int) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


@dataclass
class HopSweep:
    """One hop's backward with everything but the launch shape fixed."""

    q: torch.Tensor
    k: torch.Tensor
    value: torch.Tensor
    out: torch.Tensor
    d_out: torch.Tensor
    lse: torch.Tensor
    dims: tuple[int, ...]
    axis: int
    rep_ms: int
    label: str

    def __post_init__(self) -> None:
        self.acc_q = torch.zeros(self.q.shape, dtype=torch.float32, device="cuda")
        self.acc_k = torch.zeros(self.k.shape, dtype=torch.float32, device="cuda")
        self.d_prev = torch.empty_like(self.value)
        self.reference = self.fresh()

    def run(self, blocks=None, packed=None, grads: tb.Gradients | None = None, d_prev=None) -> None:
        grads = grads or tb.Gradients(self.acc_q, self.acc_q, self.acc_k, self.acc_k, True)
        tb._launch_hop_backward(self.q, self.k, self.value, self.out, self.d_out, self.lse, grads,
                                self.d_prev if d_prev is None else d_prev, self.dims, self.axis, True, D**-0.5,
                                blocks=blocks, packed=packed)

    def fresh(self, blocks=None, packed=None) -> torch.Tensor:
        """Gradients written from nothing (no accumulation), flattened into one tensor."""
        dq, dk, dp = torch.empty_like(self.acc_q), torch.empty_like(self.acc_k), torch.empty_like(self.value)
        self.run(blocks, packed, tb.Gradients(dq, dq, dk, dk, False), dp)
        return torch.cat([dq.flatten(), dk.flatten(), dp.float().flatten()])

    def trial(self, kernel: str, shape: object, blocks=None, packed=None) -> float:
        try:
            diff = (self.fresh(blocks, packed) - self.reference).abs().max().item()
            took = _ms(lambda: self.run(blocks, packed), self.rep_ms)
        except Exception as exc:  # a shape that does not fit (shared memory, registers)
            print(f"{self.label} {kernel} | {shape} | failed: {type(exc).__name__} | |", flush=True)
            return math.inf
        print(f"{self.label} {kernel} | {shape} | {took:.4f} | {diff:.2e} |", flush=True)
        return took


def sweep(hop: HopSweep, best: dict[tuple[int, str], tuple[float, object]]) -> None:
    length = hop.dims[hop.axis]

    def keep(kernel: str, shape: object, took: float) -> None:
        if took < best.get((length, kernel), (math.inf, None))[0]:
            best[(length, kernel)] = (took, shape)

    if length <= tb.PACKED_MAX_LEN:
        for tile in PACKED_TILES:
            if tile.rows >= max(16, triton.next_power_of_2(length)):
                keep("packed", tile, hop.trial("packed", tile, packed=tile))
        return
    table = tb.backward_blocks(length, torch.bfloat16)
    times = {}
    for tile in DQ_TILES:
        times[tile] = hop.trial("dq (+ table dkdv)", tile, blocks=tb.BackwardBlocks(table.dkdv, tile))
        keep("dq (+ table dkdv)", tile, times[tile])
    dq_best = min(times, key=times.__getitem__)
    for tile in DKDV_TILES:
        keep("dkdv (+ best dq)", tile, hop.trial("dkdv (+ best dq)", tile, blocks=tb.BackwardBlocks(tile, dq_best)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="32k,128k")
    parser.add_argument("--orders", default="2,3")
    parser.add_argument("--rep-ms", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(0)
    best: dict[tuple[int, str], tuple[float, object]] = {}
    print("| N | dims | hop | L | C | kernel | shape | ms | max abs diff |")
    print("|---|---|---|---|---|---|---|---:|---:|")
    for n in parse_lengths(args.lengths):
        q = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
        d_out = torch.randn_like(q)
        for m in parse_ints(args.orders, "orders"):
            dims = auto_dims(n, m)
            saved = tb.forward_with_saved(q, k, v, dims, True, D**-0.5)
            axes = hop_axes(m)
            for t in reversed(range(m)):
                axis = axes[t]
                label = f"| {n} | {format_dims(dims)} | {t + 1} | {dims[axis]} | {math.prod(dims[axis + 1:])} |"
                value = v if t == 0 else saved.outputs[t - 1]
                sweep(HopSweep(q, k, value, saved.outputs[t], d_out, saved.lses[t], dims, axis, args.rep_ms, label),
                      best)
    print("\nBest shape per slice length (the time includes the other kernel where one is named):")
    for (length, kernel), (took, shape) in sorted(best.items()):
        print(f"L={length} {kernel}: {shape} {took:.4f} ms")


if __name__ == "__main__":
    main()
