"""Launch shapes of the tensorized backward kernels, timed hop by hop on the benchmark shape.

For B=1, H=32, H_kv=8, D=128, bf16, causal and the given lengths and orders (auto dims), every hop's
backward (kernels/tensorized_backward.py) runs with each candidate launch shape: the dQ kernel's
shapes with the dK/dV kernel at the table's shape, then the dK/dV kernel's with dQ at the best one
found, and the table's pair through pointer loads; for slices the packed kernel takes, its shapes
(each with TMA boxes where the dims fill N, and through pointer loads) and the blocked kernels'
too. Each candidate is
timed with `triton.testing.do_bench` (median, L2 flushed before each rep), and its gradients (dQ, dK
and the hop value's) are compared with the same hop's backward run in float32 from float32 inputs:
the relative L2 error of each, beside the table shape's own. On slices longer than the packed
kernel's the dK/dV kernel also runs with dQ fused into it (no dQ kernel), at each of its shapes;
the packed kernel's shapes run with their gradients' products transposed too. Shapes differ in the
order in which they sum (pipelining, tile sizes, atomics), so a bf16 candidate is not bit-equal to
the table's; it is kept only if each of its three errors is within 1.25x of the table's (one
error for all three would hide a worse dQ under dV's larger rounding). Prints one Markdown row per (hop, kernel,
shape), and the best kept shape per slice length. With --table-only each hop runs the table's shapes
alone (what a training step launches), and beside it the same hop's backward on cuDNN where the hop
is a view: where a step's backward time goes, hop by hop, against the other backend. With --levers
each packed hop runs only its table tile and the two changes to it not yet timed on those hops
(gradient products transposed; two pipeline stages) alone and together, through pointer loads as
the table runs, and the two-stage tiles with TMA boxes, each judged against float32 as above; a
blocked hop runs its table's shapes.

    python3 benchmarks/backward_tiles.py [--lengths 32k,128k] [--orders 2,3] [--rep-ms 100] [--hops 1,2]
                                         [--table-only | --levers]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

import torch
import triton
import triton.testing

from tbench.core.folding import auto_dims, format_dims, hop_axes
from tbench.core.sweep import parse_ints, parse_lengths
from tbench.kernels import tensorized_backward as tb
from tbench.kernels.hop_backend import HopBackend
from tbench.kernels.tensorized_train_dispatch import train_hop
from tbench.kernels.tensorized_triton import _launch_hop

B, H, H_KV, D = 1, 32, 8, 128

DQ_TILES = [tb.Tile(*x) for x in [(64, 32, 4, 2), (64, 32, 4, 3), (64, 64, 4, 2), (128, 32, 4, 2),
                                  (128, 32, 8, 2), (128, 32, 8, 3), (128, 64, 8, 2), (64, 64, 8, 3)]]
DKDV_TILES = [tb.Tile(*x) for x in [(64, 64, 4, 2), (32, 64, 4, 2), (32, 64, 4, 3), (16, 64, 4, 2),
                                    (32, 128, 8, 2), (64, 128, 8, 2), (32, 128, 4, 3), (64, 64, 8, 3)]]
PACKED_TILES = [tb.PackedTile(*x) for x in [(64, 4, 1), (64, 4, 2), (128, 8, 1), (32, 4, 1), (32, 4, 2),
                                            (32, 2, 1), (64, 8, 1), (64, 8, 2), (64, 8, 3)]]
# the dK/dV kernel with dQ fused into it (no dQ kernel; its dQ shape is unused)
FUSED_TILES = [tb.Tile(*x) for x in [(16, 64, 4, 2), (16, 64, 4, 3), (32, 64, 4, 2), (16, 32, 4, 2), (32, 32, 4, 2),
                                     (16, 128, 8, 2), (32, 128, 8, 2), (64, 64, 8, 2)]]
# the blocked kernels on slices the packed kernel takes: (dK/dV, dQ) shapes no taller than the slice
SHORT_BLOCKS = [tb.BackwardBlocks(tb.Tile(*a), tb.Tile(*b)) for a, b in [
    ((16, 32, 4, 2), (32, 16, 4, 2)), ((32, 32, 4, 2), (32, 32, 4, 2)), ((16, 64, 4, 2), (64, 16, 4, 2)),
    ((32, 64, 4, 2), (64, 32, 4, 2)), ((64, 64, 4, 2), (64, 64, 4, 2)), ((32, 64, 8, 2), (64, 32, 8, 2))]]
ACCEPT = 1.25  # a candidate's error may be this many times the table shape's


class Scope(Enum):
    """Which shapes a hop runs."""

    ALL = "all"  # every candidate shape
    LEVERS = "levers"  # the packed table tile, its products transposed and/or two stages, boxes
    TABLE = "table"  # the table's shapes alone, beside cuDNN's backward of the hop


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
    # as in a whole backward: Delta from the next hop's backward, the previous hop's Delta handed on
    deltas: tb.Deltas
    # judge each candidate against a float32 backward; off where only the table's shapes run (they
    # are the tested ones) and the float32 kernels' compilation would take most of the time
    check: bool = True

    def __post_init__(self) -> None:
        self.acc_q = torch.zeros(self.q.shape, dtype=torch.float32, device=self.q.device)
        self.acc_k = torch.zeros(self.k.shape, dtype=torch.float32, device=self.q.device)
        self.d_prev = torch.empty_like(self.value)
        if self.check:
            self.reference = self.float32_reference()
            self.table_error = self.error(self.fresh())

    def run(self, blocks=None, packed=None, grads: tb.Gradients | None = None, d_prev=None,
            tma: bool | None = None, deltas: tb.Deltas | None = None) -> None:
        grads = grads or tb.Gradients(self.acc_q, self.acc_q, self.acc_k, self.acc_k, True)
        tb._launch_hop_backward(self.q, self.k, self.value, self.out, self.d_out, self.lse, grads,
                                self.d_prev if d_prev is None else d_prev, self.dims, self.axis, True, D**-0.5,
                                blocks=blocks, packed=packed, tma=tma, deltas=self.deltas if deltas is None else deltas)

    def fresh(self, blocks=None, packed=None, tma: bool | None = None,
              deltas: tb.Deltas | None = None) -> tuple[torch.Tensor, ...]:
        """(dQ, dK, the value's gradient) written from nothing (no accumulation; a fused dQ is added to
        zeros)."""
        dq, dk, dp = torch.zeros_like(self.acc_q), torch.empty_like(self.acc_k), torch.empty_like(self.value)
        self.run(blocks, packed, tb.Gradients(dq, dq, dk, dk, False), dp, tma, deltas)
        return dq, dk, dp

    def float32_reference(self) -> tuple[torch.Tensor, ...]:
        """The hop again from float32 copies of its inputs: forward (its own output and log-sum-exp)
        and backward with the float32 tables' shapes and IEEE products."""
        q, k, value, d_out = (x.float() for x in (self.q, self.k, self.value, self.d_out))
        out = torch.empty_like(q)
        lse = torch.empty_like(self.lse)
        _launch_hop(q, k, value, out, self.dims, self.axis, True, D**-0.5, lse=lse)
        dq, dk, dp = torch.empty_like(q), torch.empty_like(k), torch.empty_like(value)
        tb._launch_hop_backward(q, k, value, out, d_out, lse, tb.Gradients(dq, dq, dk, dk, False), dp, self.dims,
                                self.axis, True, D**-0.5)
        return dq, dk, dp

    def error(self, grads: tuple[torch.Tensor, ...]) -> tuple[float, ...]:
        """Relative L2 errors of (dQ, dK, the value's gradient) against the float32 backward."""
        return tuple(float((g.float() - r).norm() / r.norm()) for g, r in zip(grads, self.reference, strict=True))

    def trial(self, kernel: str, shape: object, blocks=None, packed=None, tma: bool | None = None,
              deltas: tb.Deltas | None = None) -> float:
        """The candidate's time, or inf if it fails or its error is above ACCEPT x the table's."""
        try:
            err = self.error(self.fresh(blocks, packed, tma, deltas)) if self.check else None
            took = _ms(lambda: self.run(blocks, packed, tma=tma, deltas=deltas), self.rep_ms)
        except Exception as exc:  # a shape that does not fit (shared memory, registers)
            print(f"{self.label} {kernel} | {shape} | failed: {type(exc).__name__} | | |", flush=True)
            return math.inf
        if err is None:
            print(f"{self.label} {kernel} | {shape} | {took:.4f} | not checked | |", flush=True)
            return took
        kept = all(e <= ACCEPT * t for e, t in zip(err, self.table_error, strict=True))
        print(f"{self.label} {kernel} | {shape} | {took:.4f} | {_errors(err)} | {_errors(self.table_error)}"
              f"{'' if kept else ' (not kept)'} |", flush=True)
        return took if kept else math.inf

    def cudnn_backward(self) -> None:
        """The same hop's backward on cuDNN, as the mixed training chain runs it (`train_hop`: SDPA's
        autograd on the hop's views; the forward done outside the timed region): the hop's time on the
        other backend, beside the Triton one."""
        q, k, value = (x.detach().requires_grad_() for x in (self.q, self.k, self.value))
        try:
            y = train_hop(HopBackend.CUDNN, q, k, value, self.dims, self.axis, True, D**-0.5)
            took = _ms(lambda: torch.autograd.grad(y, (q, k, value), self.d_out, retain_graph=True), self.rep_ms)
        except RuntimeError as exc:  # the hop is not a view, or cuDNN refuses it
            print(f"{self.label} cuDNN backward | | refused: {exc} | | |", flush=True)
            return
        print(f"{self.label} cuDNN backward | | {took:.4f} | | |", flush=True)


def _errors(err: tuple[float, ...]) -> str:
    return " / ".join(f"{e:.2e}" for e in err)


def packed_levers(tile: tb.PackedTile) -> list[tuple[tb.PackedTile, bool]]:
    """(tile, TMA boxes) pairs: the table tile through pointer loads (as the table runs it), then
    with its gradient products transposed, with two pipeline stages, and both; and the two-stage
    tiles with boxes, whose latency the second stage may hide (with one stage the boxes measured
    slower, but they spill nothing where pointer loads spill 200-264 bytes a thread)."""
    transposed, staged = replace(tile, transposed=True), replace(tile, num_stages=2)
    both = replace(staged, transposed=True)
    # the boxed tiles say so in their shape too (the launch takes boxes from `tma` either way)
    boxed = [(replace(t, boxes=True), True) for t in (staged, both)]
    return [(tile, False), (transposed, False), (staged, False), (both, False), *boxed]


def sweep(hop: HopSweep, best: dict[tuple[int, str], tuple[float, object]], scope: Scope = Scope.ALL) -> None:
    length = hop.dims[hop.axis]

    def keep(kernel: str, shape: object, took: float) -> None:
        if took < best.get((length, kernel), (math.inf, None))[0]:
            best[(length, kernel)] = (took, shape)

    if scope is Scope.LEVERS:
        if length <= tb.PACKED_MAX_LEN:
            for tile, boxes in packed_levers(tb.packed_tile(length, torch.bfloat16)):
                kernel = "packed, boxes" if boxes else "packed, pointer loads"
                keep("packed", (tile, kernel), hop.trial(kernel, tile, packed=tile, tma=boxes))
        else:
            table = tb.backward_blocks(length, torch.bfloat16)
            keep("table", table, hop.trial("table", table))
        return
    if scope is Scope.TABLE:
        # what a run launches: the table's shapes and loads, Delta as a whole backward hands it over
        shape = (tb.packed_tile(length, torch.bfloat16) if length <= tb.PACKED_MAX_LEN
                 else tb.backward_blocks(length, torch.bfloat16))
        hop.trial("table", shape)
        hop.cudnn_backward()
        return

    if hop.deltas.given is not None or hop.deltas.previous is not None:
        # the table's shapes with Delta handed between hops (as runs do) and with this hop forming its own
        keep("table, Delta handed", None, hop.trial("table, Delta handed", None))
        keep("table, Delta formed here", None, hop.trial("table, Delta formed here", None, deltas=tb.Deltas()))
    if length <= tb.PACKED_MAX_LEN:
        block_l = max(16, triton.next_power_of_2(length))
        for tile in PACKED_TILES:
            if tile.rows >= block_l:
                # each tile with TMA boxes and through pointer loads (what the table runs), with the
                # gradients' products as the table forms them and transposed
                for t in (tile, replace(tile, transposed=True)):
                    keep("packed, boxes", t, hop.trial("packed, boxes", t, packed=t, tma=True))
                    keep("packed, pointer loads", t, hop.trial("packed, pointer loads", t, packed=t, tma=False))
        for blocks in SHORT_BLOCKS:
            if max(blocks.dkdv.block_m, blocks.dkdv.block_n, blocks.dq.block_m, blocks.dq.block_n) <= block_l:
                keep("blocked", blocks, hop.trial("blocked", blocks, blocks=blocks))
        return
    table = tb.backward_blocks(length, torch.bfloat16)
    # the table's shapes through pointer loads (the kernels before their TMA boxes)
    keep("dq + dkdv, pointer loads", table, hop.trial("dq + dkdv, pointer loads", table, blocks=table, tma=False))
    times = {}
    for tile in DQ_TILES:
        times[tile] = hop.trial("dq (+ table dkdv)", tile, blocks=tb.BackwardBlocks(table.dkdv, tile))
        keep("dq (+ table dkdv)", tile, times[tile])
    dq_best = min(times, key=times.__getitem__)
    for tile in DKDV_TILES:
        keep("dkdv (+ best dq)", tile, hop.trial("dkdv (+ best dq)", tile, blocks=tb.BackwardBlocks(tile, dq_best)))
    # dQ added by the dK/dV kernel (five products a tile instead of seven, float32 atomics); Delta from
    # its own small kernel where no later hop hands it over
    for tile in FUSED_TILES:
        keep("dkdv, dQ fused", tile, hop.trial("dkdv, dQ fused", tile, blocks=tb.BackwardBlocks(tile, dq_best, True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="32k,128k")
    parser.add_argument("--orders", default="2,3")
    parser.add_argument("--rep-ms", type=int, default=100)
    parser.add_argument("--hops", default=None,
                        help="only these hops, numbered in the forward's order (e.g. 1,2); default every hop")
    scopes = parser.add_mutually_exclusive_group()
    scopes.add_argument("--table-only", action="store_true",
                        help="each hop's backward as runs launch it (no other shape) and on cuDNN")
    scopes.add_argument("--levers", action="store_true",
                        help="packed hops: the table tile, products transposed, two stages, both; boxes")
    args = parser.parse_args()
    scope = Scope.TABLE if args.table_only else Scope.LEVERS if args.levers else Scope.ALL
    orders = parse_ints(args.orders, "orders")
    only = None if args.hops is None else set(parse_ints(args.hops, "hops"))
    if only is not None and not only <= set(range(1, min(orders) + 1)):
        raise SystemExit(f"--hops {args.hops}: m = {min(orders)} has hops 1..{min(orders)}")
    torch.manual_seed(0)
    best: dict[tuple[int, str], tuple[float, object]] = {}
    print("| N | dims | hop | L | C | kernel | shape | ms | rel err vs float32 (dQ / dK / dV) | table shape's |")
    print("|---|---|---|---|---|---|---|---:|---:|---:|")
    for n in parse_lengths(args.lengths):
        q = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
        d_out = torch.randn_like(q)
        for m in orders:
            dims = auto_dims(n, m)
            saved = tb.forward_with_saved(q, k, v, dims, True, D**-0.5)
            axes = hop_axes(m)
            for t in reversed(range(m)):
                if only is not None and t + 1 not in only:
                    continue
                axis = axes[t]
                label = f"| {n} | {format_dims(dims)} | {t + 1} | {dims[axis]} | {math.prod(dims[axis + 1:])} |"
                value = v if t == 0 else saved.outputs[t - 1]
                out = saved.outputs[t]
                given = (d_out.float() * out.float()).sum(-1) if t < m - 1 else None
                previous = torch.empty_like(saved.lses[t]) if t > 0 else None
                sweep(HopSweep(q, k, value, out, d_out, saved.lses[t], dims, axis, args.rep_ms, label,
                               tb.Deltas(given, previous), scope is not Scope.TABLE), best, scope)
    if scope is Scope.TABLE:
        return  # one shape a hop: nothing to choose between
    print("\nBest shape per slice length (the time includes the other kernel where one is named):")
    for (length, kernel), (took, shape) in sorted(best.items()):
        print(f"L={length} {kernel}: {shape} {took:.4f} ms")


if __name__ == "__main__":
    main()
