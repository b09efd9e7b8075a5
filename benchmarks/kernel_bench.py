"""GPU benchmark of the Triton tensorized-attention kernel against the SDPA composition.

For B=1, H=32, H_kv=8, D=128, bf16, causal, N = 4k..128k and m in {2, 3} (auto dims): checks the
kernel against tensorized_attention_sdpa (relative L2), times both with triton.testing.do_bench
(median; L2 flushed before every rep and inputs rotated), and prints ms, TB/s against the spec's
minimum bytes, TFLOP/s with the spec's flops, and the floors from the measured copy bandwidth and
bf16 matmul rate.

    python3 benchmarks/kernel_bench.py [--quick] [--hops] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
import triton
import triton.testing

from tbench.core.folding import auto_dims, format_dims, hop_axes
from tbench.kernels import tensorized_triton as tt
from tbench.kernels.tensorized_sdpa import tensorized_attention_sdpa

B, H, H_KV, D = 1, 32, 8, 128
DTYPE = torch.bfloat16
CAUSAL = True
# input sets rotated through, so that even the small sizes cannot live in L2 between calls
MIN_ROTATION_BYTES = 512 * 2**20


@dataclass
class Row:
    n: int
    m: int
    dims: str
    bytes_min: float
    flops: float
    floor_bw_ms: float
    floor_flop_ms: float
    triton_ms: float
    sdpa_ms: float
    rel_err_vs_sdpa: float
    hop_ms: list[float]
    hop_floor_ms: list[float]
    triton_host_ms: float
    sdpa_host_ms: float


def hop_cost(dims: tuple[int, ...], axis: int, first: bool) -> tuple[float, float]:
    """(minimum bytes, flops) of one hop, per the spec's cost section."""
    p = math.prod(dims)
    n_j = dims[axis]
    elem = torch.tensor([], dtype=DTYPE).element_size()
    value_heads = H_KV if first else H
    nbytes = (H + H_KV + value_heads + H) * B * p * D * elem
    flops = 4 * B * H * p * n_j * D * ((n_j + 1) / (2 * n_j) if CAUSAL else 1.0)
    return float(nbytes), float(flops)


def measure_copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus written."""
    src = torch.randn(2**30 // 2, dtype=torch.bfloat16, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=500, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def measure_matmul_peak() -> float:
    """bf16 matmul FLOP/s on random data (8192^3)."""
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = triton.testing.do_bench(lambda: a @ b, warmup=100, rep=1000, return_mode="median")
    return 2 * 8192**3 / (ms * 1e-3)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return ((a64 - b64).norm() / b64.norm()).item()


def make_inputs(n: int, copies: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator(device="cuda").manual_seed(n)

    def draw(heads: int) -> torch.Tensor:
        return torch.randn(B, heads, n, D, device="cuda", dtype=DTYPE, generator=gen)

    return [(draw(H), draw(H_KV), draw(H_KV)) for _ in range(copies)]


def bench_rotating(fn, sets, rep_ms: int) -> float:
    state = {"i": 0}

    def call() -> None:
        q, k, v = sets[state["i"] % len(sets)]
        state["i"] += 1
        fn(q, k, v)

    return triton.testing.do_bench(call, warmup=50, rep=rep_ms, return_mode="median")


def host_ms(fn, inputs, calls: int = 50) -> float:
    """Host time per call to issue the work (the GPU queue does not fill in 50 calls)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*inputs)
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e3


def bench_hops(sets, dims: tuple[int, ...], rep_ms: int) -> list[float]:
    """Each hop alone, in hop order, on the values the previous hop really produced."""
    q, k, v = sets[0]
    scale = D**-0.5
    values = [v] + [torch.empty_like(q) for _ in range(2)]
    axes = hop_axes(len(dims))

    def buffers(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        src = values[0] if t == 0 else values[1 + (t - 1) % 2]
        return src, values[1 + t % 2]

    for t, axis in enumerate(axes):
        tt._launch_hop(q, k, *buffers(t), dims, axis, CAUSAL, scale)
    times = []
    for t, axis in enumerate(axes):
        src, dst = buffers(t)
        times.append(triton.testing.do_bench(
            lambda src=src, dst=dst, axis=axis: tt._launch_hop(q, k, src, dst, dims, axis, CAUSAL, scale),
            warmup=25, rep=rep_ms, return_mode="median"))
    return times


SWEEP_PACKED = [  # (ROWS, warps, stages, programs per SM); each alone and with K shared by a kv group
    (64, 4, 2, 8), (64, 4, 3, 4), (64, 4, 2, 64), (64, 4, 1, 64), (32, 4, 3, 64), (128, 8, 2, 1),
]
SWEEP_DIMS = ((2**17, (256, 512)), (2**17, (32, 64, 64)), (2**12, (64, 64)), (2**12, (16, 16, 16)))
SWEEP_FLASH = [  # (BLOCK_M, BLOCK_N, warps, stages, maxnreg)
    (64, 64, 4, 3, None), (64, 32, 4, 3, None), (64, 32, 4, 3, 168), (64, 32, 4, 4, None), (64, 32, 4, 2, 168),
    (128, 64, 8, 3, None),
]


def sweep(n: int, dims: tuple[int, ...], bw: float, peak: float, rep_ms: int) -> None:
    """Every candidate config on every hop of one folding: the data behind the autotune lists.
    Each hop reads its real value (v on the first hop, H heads after), and each candidate's output
    is compared with the autotuned hop's."""
    q, k, v = make_inputs(n, 1)[0]
    scale = D**-0.5
    dst = torch.empty_like(q)
    src = torch.randn_like(q)
    print(f"\nsweep N={n} dims={format_dims(dims)}")
    for t, axis in enumerate(hop_axes(len(dims))):
        value = v if t == 0 else src
        length = dims[axis]
        nbytes, flops = hop_cost(dims, axis, t == 0)
        floor = max(nbytes / bw, flops / peak) * 1e3
        block_l = max(16, triton.next_power_of_2(length))
        if length <= tt.PACKED_MAX_LEN:
            cands = [triton.Config({"ROWS": r, "PROGRAMS_PER_SM": p, "SHARE_KV": share}, num_warps=w,
                                   num_stages=st)
                     for share in (False, True) for r, w, st, p in SWEEP_PACKED if r >= block_l]
        else:
            cands = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st, maxnreg=r)
                     for bm, bn, w, st, r in SWEEP_FLASH]
        reference = torch.empty_like(q)
        tt._launch_hop(q, k, value, reference, dims, axis, CAUSAL, scale)
        # each config with TMA boxes (where they serve) and through pointer loads
        for cfg, tma in ((cfg, tma) for cfg in cands for tma in (True, False)):
            def call(cfg=cfg, value=value, axis=axis, tma=tma) -> None:
                tt._launch_hop(q, k, value, dst, dims, axis, CAUSAL, scale, config=cfg, tma=tma)
            loads = "tma" if tma else "pointers"
            try:
                call()
                diff = (dst.float() - reference.float()).abs().max().item()
                ms = triton.testing.do_bench(call, warmup=25, rep=rep_ms, return_mode="median")
            except Exception as exc:  # out of resources and the like: report and go on
                print(f"  hop {t} L={length:4d} {tt._config_text(cfg)} {loads}: failed "
                      f"({type(exc).__name__}: {str(exc)[:80]})")
                continue
            print(f"  hop {t} L={length:4d} C={math.prod(dims[axis + 1:]):5d} {tt._config_text(cfg)} {loads}: "
                  f"{ms:.3f} ms ({nbytes / ms / 1e9:.2f} TB/s, {flops / ms / 1e9:.0f} TFLOP/s, "
                  f"{ms / floor:.2f}x floor, max abs diff {diff:.1e})", flush=True)


def run_case(n: int, m: int, bw: float, peak: float, rep_ms: int, hops: bool) -> Row:
    dims = auto_dims(n, m)
    per_set = (H + 2 * H_KV) * B * n * D * 2
    copies = max(1, math.ceil(MIN_ROTATION_BYTES / per_set))
    sets = make_inputs(n, copies)
    q, k, v = sets[0]

    # correctness first (this call also autotunes the kernel for these slice lengths)
    ours = tt.tensorized_attention_triton(q, k, v, dims, CAUSAL)
    theirs = tensorized_attention_sdpa(q, k, v, dims, CAUSAL)
    torch.cuda.synchronize()
    err = rel_err(ours, theirs)
    if not math.isfinite(err) or err > 2e-2:
        raise SystemExit(f"N={n} m={m}: kernel differs from the SDPA composition (rel L2 {err:.3e})")
    del ours, theirs

    def ours_fn(q, k, v):
        return tt.tensorized_attention_triton(q, k, v, dims, CAUSAL)

    def sdpa_fn(q, k, v):
        return tensorized_attention_sdpa(q, k, v, dims, CAUSAL)

    t_triton = bench_rotating(ours_fn, sets, rep_ms)
    t_sdpa = bench_rotating(sdpa_fn, sets, rep_ms)
    host_triton, host_sdpa = host_ms(ours_fn, sets[0]), host_ms(sdpa_fn, sets[0])

    costs = [hop_cost(dims, axis, t == 0) for t, axis in enumerate(hop_axes(m))]
    nbytes = sum(c[0] for c in costs)
    flops = sum(c[1] for c in costs)
    hop_floor = [max(b / bw, f / peak) * 1e3 for b, f in costs]
    hop_ms = bench_hops(sets, dims, max(50, rep_ms // 2)) if hops else []
    return Row(n, m, format_dims(dims), nbytes, flops, nbytes / bw * 1e3, flops / peak * 1e3,
               t_triton, t_sdpa, err, hop_ms, hop_floor, host_triton, host_sdpa)


def print_table(rows: list[Row], bw: float, peak: float) -> None:
    print(f"\ndevice: {torch.cuda.get_device_name()}  copy bandwidth {bw / 1e12:.2f} TB/s  "
          f"bf16 matmul {peak / 1e12:.0f} TFLOP/s")
    print(f"B={B} H={H} H_kv={H_KV} D={D} bf16 causal; TB/s = spec minimum bytes / time; "
          "floor = max(bytes/bw, flops/peak)")
    head = (f"{'N':>7} {'m':>2} {'dims':>10} | {'triton ms':>9} {'TB/s':>5} {'TFLOP/s':>7} | "
            f"{'sdpa ms':>8} {'TB/s':>5} | {'speedup':>7} | {'bw floor':>8} {'flop fl.':>8} {'x floor':>7} "
            f"| {'err':>7}")
    print(head)
    print("-" * len(head))
    for r in sorted(rows, key=lambda r: (r.m, r.n)):
        floor = max(r.floor_bw_ms, r.floor_flop_ms)
        print(f"{r.n:>7} {r.m:>2} {r.dims:>10} | {r.triton_ms:9.3f} {r.bytes_min / r.triton_ms / 1e9:5.2f} "
              f"{r.flops / r.triton_ms / 1e9:7.1f} | {r.sdpa_ms:8.3f} {r.bytes_min / r.sdpa_ms / 1e9:5.2f} | "
              f"{r.sdpa_ms / r.triton_ms:6.2f}x | {r.floor_bw_ms:8.3f} {r.floor_flop_ms:8.3f} "
              f"{r.triton_ms / floor:6.2f}x | {r.rel_err_vs_sdpa:.1e}")
    if any(r.hop_ms for r in rows):
        print("\nper hop (innermost first): measured ms / floor ms")
        for r in sorted(rows, key=lambda r: (r.m, r.n)):
            hops = "  ".join(f"{t:.3f}/{f:.3f}" for t, f in zip(r.hop_ms, r.hop_floor_ms, strict=True))
            print(f"{r.n:>7} {r.m:>2} {r.dims:>10} | {hops}   (host per call: triton {r.triton_host_ms:.3f} ms, "
                  f"sdpa {r.sdpa_host_ms:.3f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only N = 16k and 128k")
    parser.add_argument("--hops", action="store_true", help="also time each hop alone")
    parser.add_argument("--orders", default="2,3", help="comma-separated orders m")
    parser.add_argument("--rep-ms", type=int, default=400, help="do_bench repetition time per measurement")
    parser.add_argument("--json", default=None, help="write the rows here as JSON")
    parser.add_argument("--sweep", action="store_true",
                        help="time every candidate config on every hop of 128k m = 2, 3 and 4k m = 2, 3, "
                             "with TMA boxes and with pointer loads")
    parser.add_argument("--no-table", action="store_true", help="skip the main table (with --sweep)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")

    bw = measure_copy_bandwidth()
    peak = measure_matmul_peak()
    print(f"copy {bw / 1e12:.2f} TB/s, bf16 matmul {peak / 1e12:.0f} TFLOP/s", flush=True)
    if args.sweep:
        for n, dims in SWEEP_DIMS:
            sweep(n, dims, bw, peak, max(50, args.rep_ms // 4))
    if args.no_table:
        return
    lengths = [2**e for e in range(12, 18)]
    if args.quick:
        lengths = [2**14, 2**17]
    rows = []
    # longest first (each length is tuned on its own; the order only decides which rows print first)
    for n in sorted(lengths, reverse=True):
        for m in (int(x) for x in args.orders.split(",")):
            row = run_case(n, m, bw, peak, args.rep_ms, args.hops)
            rows.append(row)
            print(f"N={n} m={m} {row.dims}: triton {row.triton_ms:.3f} ms, sdpa {row.sdpa_ms:.3f} ms, "
                  f"err {row.rel_err_vs_sdpa:.1e}", flush=True)
    print("\nautotuned configs:")
    for name, key, cfg in tt.tuned_configs():
        print(f"  {name} {key}: {cfg}")
    print_table(rows, bw, peak)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": torch.cuda.get_device_name(), "copy_bw": bw, "matmul_peak": peak,
                       "triton": triton.__version__, "torch": torch.__version__,
                       "rows": [asdict(r) for r in rows]}, fh, indent=1)


if __name__ == "__main__":
    main()
