"""Flops and minimum bytes of each operator (docs/spec-tensorized-attention.md, "Cost"), so TFLOP/s
and TB/s figures are honest: masked work is not counted as done.

Conventions, per family (B batch, H query heads, H_kv key/value heads, N length, D head dim):
- exact and approximate: 4*B*H*N^2*D (QK^T and PV), times (N+1)/(2N) when causal. Approximate
  methods compute the same operator, so they are credited the same work whatever their arithmetic.
- tensorized: the same per hop, over the hop's slice length (see the spec).
- sparse (a causal window of W keys): 4*B*H*D times the number of (query, key) pairs inside the
  window, sum over t of min(t+1, W).
- linear: the recurrent form, 4*B*H*N*D^2: per token and head, the state update k v^T and the
  read-out q^T S, each 2*D^2. Chunked kernels do somewhat more; gates and normalisation are not
  counted.
Minimum bytes: each input read once and the output written once; for linear methods the gates
are not counted (they are small next to q, k and v, or, for GLA, of the size of k).
"""

from __future__ import annotations

import math

from .case import Case, Family, sliding_window


def causal_fraction(n: int) -> float:
    """Fraction of an n x n score matrix a causal mask keeps: (n + 1) / (2n)."""
    return (n + 1) / (2 * n)


def window_pairs(n: int, window: int, causal: bool = True) -> int:
    """(query, key) pairs inside a window of `window` keys ending at the query (causal), or
    centred on it with `window` keys either side (non-causal)."""
    w = min(window, n)
    if causal:
        return w * (w + 1) // 2 + (n - w) * w
    return sum(min(n - 1, t + window) - max(0, t - window) + 1 for t in range(n))


def flops(case: Case) -> float:
    b, h, d = case.batch, case.heads, case.head_dim
    n = case.seq_len
    if case.family is Family.TENSORIZED:
        assert case.dims is not None
        total = math.prod(case.dims)
        per_hop = (4.0 * b * h * total * m * d * (causal_fraction(m) if case.causal else 1.0) for m in case.dims)
        return float(sum(per_hop))
    if case.family is Family.LINEAR:
        return 4.0 * b * h * n * d * d
    if case.family is Family.SPARSE:
        return 4.0 * b * h * d * window_pairs(n, sliding_window(n), case.causal)
    return 4.0 * b * h * n * n * d * (causal_fraction(n) if case.causal else 1.0)


def min_bytes(case: Case) -> float:
    """Fewest bytes through device memory: each input read once, each output written once.
    For tensorized methods the hops are separate passes (the value of hop t feeds hop t+1)."""
    b, h, hkv, d, es = case.batch, case.heads, case.kv_heads, case.head_dim, case.element_size
    if case.family is Family.TENSORIZED:
        assert case.dims is not None
        rows = b * math.prod(case.dims) * d * es
        first = (h + hkv + hkv + h) * rows
        later = (h + hkv + h + h) * rows
        return float(first + later * (len(case.dims) - 1))
    return float((2 * h + 2 * hkv) * b * case.seq_len * d * es)
