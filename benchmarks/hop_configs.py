"""Every flash-hop config of the Triton kernel, timed alone on each flash hop of the benchmark shape.

For B=1, H=32, H_kv=8, D=128, bf16, causal and the given lengths and orders (auto dims), each hop
whose slice length takes the flash kernel (L > 128) is run with each config of the autotune list
, checked against the autotuned hop, and timed with
`triton.testing.do_bench` (median, L2 flushed before each rep). Prints one row per (hop, config).

    python3 benchmarks/hop_configs.py [--lengths 32k,128k] [--orders 2] [--configs "128,64,8,3;64,64,4,2,168"]

`--configs` times the given (BLOCK_M, BLOCK_N, warps, stages[, maxnreg]) configs instead of the
autotune list, to try candidates before they go into it.
"""

from __future__ import annotations

import argparse
import functools
import math

import torch
import triton
import triton.testing

from tbench.core.folding import auto_dims, format_dims, hop_axes
from tbench.core.sweep import parse_lengths
from tbench.kernels import tensorized_triton as tt

B, H, H_KV, D = 1, 32, 8, 128


def parse_configs(text: str) -> list[triton.Config]:
    configs = []
    for item in text.split(";"):
        fields = [int(x) for x in item.split(",")]
        if len(fields) not in (4, 5):
            raise SystemExit(f"config {item!r}: expected BLOCK_M,BLOCK_N,warps,stages[,maxnreg]")
        bm, bn, warps, stages, *reg = fields
        configs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages,
                                     maxnreg=reg[0] if reg else None, pre_hook=tt._desc_blocks))
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="32k,64k,128k")
    parser.add_argument("--orders", default="2")
    parser.add_argument("--rep-ms", type=int, default=300)
    parser.add_argument("--configs", default=None, help="';'-separated BLOCK_M,BLOCK_N,warps,stages[,maxnreg]")
    args = parser.parse_args()
    configs = parse_configs(args.configs) if args.configs else tt._flash_configs()
    torch.manual_seed(0)
    print("| N | dims | hop axis | L | config | ms | TFLOP/s | max abs diff |")
    print("|---|---|---|---|---|---:|---:|---:|")
    for n in parse_lengths(args.lengths):
        q = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)  # a later hop's value
        for m in (int(x) for x in args.orders.split(",")):
            dims = auto_dims(n, m)
            for axis in hop_axes(m):
                length = dims[axis]
                if length <= tt.PACKED_MAX_LEN:
                    continue
                reference = torch.empty_like(q)
                tt._launch_hop(q, k, v, reference, dims, axis, True, D**-0.5)
                flops = 4 * B * H * math.prod(dims) * length * D * (length + 1) / (2 * length)
                for cfg in configs:
                    out = torch.empty_like(q)
                    hop = functools.partial(tt._launch_hop, q, k, v, out, dims, axis, True, D**-0.5, config=cfg)
                    hop()
                    diff = (out.float() - reference.float()).abs().max().item()
                    ms = triton.testing.do_bench(hop, rep=args.rep_ms, return_mode="median")
                    print(f"| {n} | {format_dims(dims)} | {axis} | {length} | {tt._config_text(cfg)} | {ms:.3f} | "
                          f"{flops / ms / 1e9:.0f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
