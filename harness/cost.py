"""Flops and minimum bytes of each operator (docs/spec-tensorized-attention.md, "Cost"), so TFLOP/s
and TB/s figures are honest: masked work is not counted as done."""

from __future__ import annotations

import math

from .config import Case


def causal_fraction(n: int) -> float:
    """Fraction of an n x n score matrix a causal mask keeps: (n + 1) / (2n)."""
    return (n + 1) / (2 * n)


def flops(case: Case) -> float:
    b, h, d = case.batch, case.heads, case.head_dim
    if case.family == "tensorized":
        assert case.dims is not None
        total = math.prod(case.dims)
        per_hop = (4.0 * b * h * total * n * d * (causal_fraction(n) if case.causal else 1.0) for n in case.dims)
        return float(sum(per_hop))
    n = case.seq_len
    return 4.0 * b * h * n * n * d * (causal_fraction(n) if case.causal else 1.0)


def min_bytes(case: Case) -> float:
    """Fewest bytes through device memory: each input read once, each output written once.
    For tensorized methods the hops are separate passes (the value of hop t feeds hop t+1)."""
    b, h, hkv, d, es = case.batch, case.heads, case.kv_heads, case.head_dim, case.element_size
    if case.family == "tensorized":
        assert case.dims is not None
        rows = b * math.prod(case.dims) * d * es
        first = (h + hkv + hkv + h) * rows
        later = (h + hkv + h + h) * rows
        return float(first + later * (len(case.dims) - 1))
    return float((2 * h + 2 * hkv) * b * case.seq_len * d * es)
