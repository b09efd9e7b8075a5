"""Flops and minimum bytes of each operator (docs/spec-tensorized-attention.md, "Cost"), so TFLOP/s
and TB/s figures are honest: only the work on the N real tokens counts. Masked work is not counted
as done, and neither is work on the padding a tensorized method adds to fold N into the product P
of its dims (for N = 5000 folded as 64 x 128, P = 8192: counting P would overstate the rate 1.64x).

Conventions, per family (B batch, H query heads, H_kv key/value heads, N length, D head dim):
- exact and approximate: 4*B*H*N^2*D (QK^T and PV), times (N+1)/(2N) when causal. Approximate
  methods compute the same operator, so they are credited the same work whatever their arithmetic.
- tensorized: the same per hop, over the (query, key) pairs of real tokens in each slice.
- sparse (a causal window of W keys): 4*B*H*D times the number of (query, key) pairs inside the
  window, sum over t of min(t+1, W).
- linear: the recurrent form, 4*B*H*N*D^2: per token and head, the state update k v^T and the
  read-out q^T S, each 2*D^2. Chunked kernels do somewhat more; gates and normalisation are not
  counted.
Minimum bytes: each input read once and the output written once; for linear methods the gates
are not counted (they are small next to q, k and v, or, for GLA, of the size of k).

Layer and model scope (Case.scope): K decoder layers (K = 1 for a layer) are credited K times the
attention's flops plus the dense products of each layer, 2 flops per weight per token (Q, K, V, O
and the MLP's three; norms, RoPE and the embedding lookup are not counted); minimum bytes are K
times each layer's weights read once plus its input and output hidden states.

Modes (the pass timed, Case.mode), by the convention FlashAttention's and tritonbench's benchmarks
use: the backward is credited 2.5 times the forward's flops (its five matrix products against the
forward's two; recomputing the scores is not credited), so `bwd` counts 2.5x and `fwd_bwd` 3.5x the
forward's flops, the causal and padding discounts included. Minimum bytes of the backward of one
attention pass: it reads q, k, v, the output o and its gradient dO, and writes dq, dk and dv (the
per-row log-sum-exp is small and not counted). A tensorized backward is one such pass per hop,
whose value is the previous hop's output (H heads after the first hop). `fwd_bwd` is the forward's
bytes plus the backward's. Linear methods get the same reads and writes per pass as exact ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .case import Case, Family, Mode, Scope, sliding_window
from .shapes import layer_forward_flops, model_shape


def causal_fraction(n: int) -> float:
    """Fraction of an n x n score matrix a causal mask keeps: (n + 1) / (2n)."""
    return (n + 1) / (2 * n)


def _pairs(r: int, causal: bool) -> int:
    """Query-key pairs among the r real positions of one slice (real positions are its first r)."""
    return r * (r + 1) // 2 if causal else r * r


def hop_pairs(n: int, dims: Sequence[int], axis: int, causal: bool) -> int:
    """Query-key pairs of the hop over `axis` where both positions are real (< n), per (batch, head).

    A slice along the axis is {base + j * stride}, j < dims[axis]; it holds real positions j < r with
    r = ceil((n - base) / stride) clipped to [0, dims[axis]]. Blocks of dims[axis] * stride positions
    below n hold only full slices, blocks beyond n none, and the one block that n cuts holds
    `t` slices with q + 1 real positions and stride - t with q, where n - block start = q * stride + t."""
    size = dims[axis]
    stride = math.prod(dims[axis + 1 :])
    block = size * stride
    full_blocks, rem = divmod(n, block)
    total = full_blocks * stride * _pairs(size, causal)
    if rem:
        q, t = divmod(rem, stride)
        total += t * _pairs(q + 1, causal) + (stride - t) * _pairs(q, causal)
    return total


def window_pairs(n: int, window: int, causal: bool = True) -> int:
    """(query, key) pairs inside a window of `window` keys ending at the query (causal), or
    centred on it with `window` keys either side (non-causal)."""
    w = min(window, n)
    if causal:
        return w * (w + 1) // 2 + (n - w) * w
    return sum(min(n - 1, t + window) - max(0, t - window) + 1 for t in range(n))


# Flops of each mode as a multiple of the forward's.
MODE_FLOP_FACTOR: dict[Mode, float] = {Mode.FWD: 1.0, Mode.BWD: 2.5, Mode.FWD_BWD: 3.5}


def flops(case: Case) -> float:
    """Flops of the pass the case times (see the module's docstring for the modes)."""
    return MODE_FLOP_FACTOR[case.mode] * forward_flops(case)


def forward_flops(case: Case) -> float:
    if case.scope is not Scope.OP:
        dense = layer_forward_flops(model_shape(case.model), case.batch, case.seq_len)
        return case.layers * (dense + attention_forward_flops(case))
    return attention_forward_flops(case)


def attention_forward_flops(case: Case) -> float:
    b, h, d = case.batch, case.heads, case.head_dim
    n = case.seq_len
    if case.family is Family.TENSORIZED:
        assert case.dims is not None
        pairs = sum(hop_pairs(case.seq_len, case.dims, axis, case.causal) for axis in range(len(case.dims)))
        return 4.0 * b * h * d * pairs
    if case.family is Family.LINEAR:
        return 4.0 * b * h * n * d * d
    if case.family is Family.SPARSE:
        return 4.0 * b * h * d * window_pairs(n, sliding_window(n), case.causal)
    return 4.0 * b * h * n * n * d * (causal_fraction(n) if case.causal else 1.0)


def min_bytes(case: Case) -> float:
    """Fewest bytes through device memory of the pass the case times, for the N real tokens."""
    if case.scope is not Scope.OP:
        shape = model_shape(case.model)
        per_layer = (shape.layer_params() + 2 * case.batch * case.seq_len * shape.hidden) * case.element_size
        return float(case.layers * per_layer)
    if case.mode is Mode.FWD:
        return forward_min_bytes(case)
    if case.mode is Mode.BWD:
        return backward_min_bytes(case)
    return forward_min_bytes(case) + backward_min_bytes(case)


def backward_min_bytes(case: Case) -> float:
    """The backward reads q, k, v, o and dO and writes dq, dk and dv, per hop for tensorized methods
    (hop 1's value has H_kv heads, the later hops' values H)."""
    b, h, hkv, d, es = case.batch, case.heads, case.kv_heads, case.head_dim, case.element_size
    rows = b * case.seq_len * d * es

    def one_pass(value_heads: int) -> int:
        reads = h + hkv + value_heads + h + h  # q, k, value, output, output's gradient
        writes = h + hkv + value_heads  # dq, dk, d(value)
        return (reads + writes) * rows

    if case.family is Family.TENSORIZED:
        assert case.dims is not None
        return float(one_pass(hkv) + one_pass(h) * (len(case.dims) - 1))
    return float(one_pass(hkv))


def forward_min_bytes(case: Case) -> float:
    """Fewest bytes through device memory: each input read once, each output written once, for the
    N real tokens. For tensorized methods the hops are separate passes (the value of hop t feeds
    hop t+1)."""
    b, h, hkv, d, es = case.batch, case.heads, case.kv_heads, case.head_dim, case.element_size
    rows = b * case.seq_len * d * es
    if case.family is Family.TENSORIZED:
        assert case.dims is not None
        first = (h + hkv + hkv + h) * rows
        later = (h + hkv + h + h) * rows
        return float(first + later * (len(case.dims) - 1))
    return float((2 * h + 2 * hkv) * rows)
