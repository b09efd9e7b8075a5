"""The backward pass of tensorized attention (docs/spec-tensorized-attention.md) as Triton kernels.

The forward is m hops, V_t = softmax(s Q K^T) V_{t-1} along one folded axis each (V_0 = v). The
backward walks the hops in reverse; each is an ordinary attention backward whose "value" is the
previous hop's output, saved by the training forward together with the log-sum-exp of every row
of every hop (docs/kernel-backward.md has the math). Per hop, with dO the gradient of the hop's
output O = V_t, Delta = rowsum(dO * O) and P recomputed from the saved log-sum-exp:

    dV_{t-1} = P^T dO,   dS = P * (dO V_{t-1}^T - Delta),   dQ += s dS K,   dK += s dS^T Q

dQ and dK are accumulated across hops in float32 buffers; dK (every hop) and dV_0 (the first hop,
whose value has H_kv heads) sum over the query heads of each GQA group. Slices are addressed as in
kernels/tensorized_triton.py: slice (a, c) of the hop over an axis of length L holds the
positions a*L*C + i*C + c, and positions >= N are never read or written.

Two kernels per hop, neither with atomics: one program per (batch, kv head, slice, key block)
computes dK and dV (looping over the group's query heads and the query blocks), one program per
(batch, head, slice, query block) computes dQ (and Delta, on the one hop whose Delta no later hop
handed it, see `Deltas`), and runs first. Short slices take one packed kernel that does all of it
per tile of whole slices. A variant (`BackwardBlocks.fused_dq`, measured slower and not the
default) adds dQ from the dK/dV kernel with float32 atomics instead of running the dQ kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ..core.folding import hop_axes
from .hop_backend import PackedBackward
from .tensorized_triton import (
    _INTERPRET,
    _LOG2E,
    _dot,
    _hop_descriptors,
    _launch_hop,
    _loop_bound,
    _narrow,
    _packed_blocks,
    _packed_box_fits,
    _row_major,
    _rows_load,
    _rows_store,
    _slice_coords,
    _slice_layout,
    _tile_allowed,
    _tile_load,
    _tile_place,
    _tile_rows,
    _tile_store,
)

# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _add_and_store_block(src, dst, plane, a, c, start, offset, pos, stride_n, offs_d, ok, value,
                         ACCUMULATE: tl.constexpr, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, DESC: tl.constexpr):
    """value (plus, with ACCUMULATE, what src holds there) stored to dst in dst's dtype. Each
    program owns its rows of the accumulators: a plain read-add-write, no atomics."""
    if ACCUMULATE:
        value += _rows_load(src, plane, a, c, start, offset, pos, stride_n, offs_d, ok, BLOCK, HEAD_DIM,
                            DESC).to(tl.float32)
    _rows_store(dst, plane, a, c, start, offset, pos, stride_n, offs_d, ok, value, 1, BLOCK, HEAD_DIM, HEAD_DIM,
                DESC)


@triton.jit
def _add_and_store_tile(src, dst, plane, offset, a, c, pos, stride_n, offs_d, ok, value, ACCUMULATE: tl.constexpr,
                        ROWS: tl.constexpr, BLOCK_L: tl.constexpr, HEAD_DIM: tl.constexpr, DESC: tl.constexpr,
                        INNER: tl.constexpr):
    """`_add_and_store_block` for a packed tile (see `_tile_load`, `_tile_store`)."""
    if ACCUMULATE:
        value += _tile_load(src, plane, offset, a, c, pos, stride_n, offs_d, ok, ROWS, HEAD_DIM, DESC,
                            INNER).to(tl.float32)
    _tile_store(dst, plane, offset, a, c, pos, stride_n, offs_d, ok, value, ROWS, BLOCK_L, HEAD_DIM, DESC, INNER)


@triton.jit
def _program_block(L, NUM_SLICES, BLOCK: tl.constexpr):
    """This program's block of BLOCK rows as (block of its slice, slice, the rest): programs walk a
    slice's blocks first, then the slices, then (the rest) the heads and the batch."""
    pid = tl.program_id(0)
    blocks = tl.cdiv(L, BLOCK)
    block = pid % blocks
    t = pid // blocks
    return block, t % NUM_SLICES, t // NUM_SLICES


@triton.jit
def _block_rows(start, base, valid, C, BLOCK: tl.constexpr):
    """Coordinates, realness and positions of the BLOCK rows from `start` of a slice at `base`."""
    offs = start + tl.arange(0, BLOCK)
    ok = offs < valid
    return offs, ok, base + offs * C


@triton.jit
def _dkdv_tile(
    k, v, dk, dv, prev, q_src, do_src, q_offset, do_offset, lse_base, delta_base, dq_base, plane, a, c, base, valid,
    offs_n, offs_d, start, stop, stride_qn, stride_don, stride_dqn, C, qk_scale, sm_scale,
    CAUSAL_MASK: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
    DESC: tl.constexpr, DELTA_OUT: tl.constexpr, DQ_ATOMIC: tl.constexpr,
):
    """dK and dV of one key block over the query blocks in [start, stop), and with DELTA_OUT the key
    rows' sums of P * dP (`prev`: the previous hop's Delta, see `_packed_kernel`); with DQ_ATOMIC
    the block's share of each query block's dQ, added atomically at dq_base. Without CAUSAL_MASK no
    score is masked: rows past the slice's end load as zero (q, dO, lse and Delta), which adds
    exactly zero to dK, dV and `prev`, and key rows past it are never stored; they add nothing to
    dQ either, since their K rows load as zero (their dS is not zero), and query rows past the end
    are masked out of the atomics."""
    for q_at in range(_loop_bound(start), _loop_bound(stop), BLOCK_M):
        offs_m = q_at + tl.arange(0, BLOCK_M)
        row_ok = offs_m < valid
        pos_m = base + offs_m * C
        q = _rows_load(q_src, plane, a, c, q_at, q_offset, pos_m, stride_qn, offs_d, row_ok, BLOCK_M, HEAD_DIM,
                       DESC)
        do = _rows_load(do_src, plane, a, c, q_at, do_offset, pos_m, stride_don, offs_d, row_ok, BLOCK_M,
                        HEAD_DIM, DESC)
        lse = tl.load(lse_base + pos_m, mask=row_ok, other=0.0)
        delta = tl.load(delta_base + pos_m, mask=row_ok, other=0.0)
        # transposed tiles (keys x queries), so that dK and dV come out row-major
        s_t = _dot(k, tl.trans(q), None, DOT_PRECISION)
        p_t = tl.exp2(s_t * qk_scale - lse[None, :])
        if CAUSAL_MASK:
            p_t = tl.where((offs_n[:, None] <= offs_m[None, :]) & row_ok[None, :], p_t, 0.0)
        dv = _dot(_narrow(p_t, do.dtype), do, dv, DOT_PRECISION)
        dp_t = _dot(v, tl.trans(do), None, DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        if DELTA_OUT:
            prev += tl.sum(p_t * dp_t, axis=1)
        dk = _dot(_narrow(ds_t, q.dtype), q, dk, DOT_PRECISION)
        if DQ_ATOMIC:
            # dQ = dS K: five products a tile instead of the seven of two kernels that each rebuild P
            # and dP; other key blocks add to the same rows, hence the float32 atomics. Formed as
            # (K^T dS^T)^T (`_grad_product` transposed) so that its product is as tall as the head dim
            # (a warpgroup's wgmma; the query block's 16 rows are too few), which also spills less
            dq = _grad_rows(_grad_product(_narrow(ds_t, k.dtype), k, None, True, DOT_PRECISION), True) * sm_scale
            tl.atomic_add(dq_base + pos_m[:, None] * stride_dqn + offs_d[None, :], dq, mask=row_ok[:, None],
                          sem="relaxed")
    return dk, dv, prev


@triton.jit
def _dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, delta_out_ptr, dk_src_ptr, dk_dst_ptr, dv_ptr, dq_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_lb, stride_lh,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    stride_dqb, stride_dqh, stride_dqn,
    B, H_KV, GROUP, V_GROUP, N, L, C, NUM_SLICES, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, SUM_DV: tl.constexpr,
    ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DESC: tl.constexpr = False,
    DELTA_OUT: tl.constexpr = False, DQ_ATOMIC: tl.constexpr = False,
):
    """dK and dV of one key block of one slice for one kv head (with DQ_ATOMIC also the block's dQ
    share, added atomically to the float32 sum at dq_ptr). dK is this hop's share plus, with
    ACCUMULATE, what dk_src holds, written to dk_dst in its dtype. With SUM_DV the value has one head
    per kv head (first hop), and dV sums over the group's query heads; otherwise the value has one
    head per query head and each gets its own dV rows, and with DELTA_OUT the previous hop's Delta
    goes to delta_out. With DESC the (B, heads, N, D) operands are TMA descriptors over their
    (B * heads, A, L, C * D) views."""
    kb, g, t = _program_block(L, NUM_SLICES, BLOCK_N)
    hk = t % H_KV
    b = t // H_KV
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)
    heads = H_KV * GROUP
    kv_plane = b * H_KV + hk

    base, valid = _slice_layout(g, N, L, C)
    a, c = _slice_coords(g, C)
    k_start = kb * BLOCK_N
    if k_start < valid:
        offs_d = tl.arange(0, HEAD_DIM)
        offs_n, key_ok, pos_n = _block_rows(k_start, base, valid, C, BLOCK_N)
        k = _rows_load(k_ptr, kv_plane, a, c, k_start, b64 * stride_kb + hk64 * stride_kh, pos_n, stride_kn,
                       offs_d, key_ok, BLOCK_N, HEAD_DIM, DESC)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        prev = tl.zeros([BLOCK_N], tl.float32)
        # causal: query blocks before the key block see none of it; those that meet the diagonal
        # are masked; from the first query at or after the block's last key on, none is
        lo = 0
        diagonal_end = 0
        if CAUSAL:
            lo = (k_start // BLOCK_M) * BLOCK_M
            diagonal_end = tl.minimum(tl.cdiv(k_start + BLOCK_N - 1, BLOCK_M) * BLOCK_M, valid)
            diagonal_end = tl.maximum(diagonal_end, lo)
        for hg in range(0, _loop_bound(GROUP)):
            h = hk * GROUP + hg
            h64 = h.to(tl.int64)
            plane = b * heads + h
            hv = h // V_GROUP
            v_plane = b * (heads // V_GROUP) + hv
            v = _rows_load(v_ptr, v_plane, a, c, k_start, b64 * stride_vb + hv.to(tl.int64) * stride_vh, pos_n,
                           stride_vn, offs_d, key_ok, BLOCK_N, HEAD_DIM, DESC)
            q_offset = b64 * stride_qb + h64 * stride_qh
            do_offset = b64 * stride_dob + h64 * stride_doh
            lse_base = lse_ptr + b64 * stride_lb + h64 * stride_lh
            delta_base = delta_ptr + b64 * stride_lb + h64 * stride_lh
            dq_base = dq_ptr + b64 * stride_dqb + h64 * stride_dqh
            if CAUSAL:
                dk, dv, prev = _dkdv_tile(k, v, dk, dv, prev, q_ptr, do_ptr, q_offset, do_offset, lse_base,
                                          delta_base, dq_base, plane, a, c, base, valid, offs_n, offs_d, lo,
                                          diagonal_end, stride_qn, stride_don, stride_dqn, C, qk_scale, sm_scale,
                                          True, DOT_PRECISION, BLOCK_M, HEAD_DIM, DESC, DELTA_OUT, DQ_ATOMIC)
            dk, dv, prev = _dkdv_tile(k, v, dk, dv, prev, q_ptr, do_ptr, q_offset, do_offset, lse_base, delta_base,
                                      dq_base, plane, a, c, base, valid, offs_n, offs_d, diagonal_end, valid, stride_qn,
                                      stride_don, stride_dqn, C, qk_scale, sm_scale, False, DOT_PRECISION, BLOCK_M,
                                      HEAD_DIM, DESC, DELTA_OUT, DQ_ATOMIC)
            if not SUM_DV:
                _rows_store(dv_ptr, v_plane, a, c, k_start, b64 * stride_dvb + hv.to(tl.int64) * stride_dvh, pos_n,
                            stride_dvn, offs_d, key_ok, dv, 1, BLOCK_N, HEAD_DIM, HEAD_DIM, DESC)
                if DELTA_OUT:
                    tl.store(delta_out_ptr + b64 * stride_lb + hv.to(tl.int64) * stride_lh + pos_n, prev, mask=key_ok)
                    prev = tl.zeros([BLOCK_N], tl.float32)
                dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        if SUM_DV:
            _rows_store(dv_ptr, kv_plane, a, c, k_start, b64 * stride_dvb + hk64 * stride_dvh, pos_n, stride_dvn,
                        offs_d, key_ok, dv, 1, BLOCK_N, HEAD_DIM, HEAD_DIM, DESC)
        _add_and_store_block(dk_src_ptr, dk_dst_ptr, kv_plane, a, c, k_start, b64 * stride_dkb + hk64 * stride_dkh,
                             pos_n, stride_dkn, offs_d, key_ok, dk * sm_scale, ACCUMULATE, BLOCK_N, HEAD_DIM, DESC)


@triton.jit
def _row_delta(do, o):
    """Delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, the softmax backward's row term."""
    return tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)


@triton.jit
def _delta_kernel(
    o_ptr, do_ptr, delta_ptr,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don,
    stride_lb, stride_lh,
    HEADS, N,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
):
    """Delta = rowsum(dO * O) of BLOCK rows of one (batch, head) plane: for a hop whose dQ the dK/dV
    kernel adds (so no dQ kernel forms it) and whose Delta no later hop handed over."""
    plane = tl.program_id(1)
    b = (plane // HEADS).to(tl.int64)
    h = (plane % HEADS).to(tl.int64)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < N
    offs_d = tl.arange(0, HEAD_DIM)
    o = tl.load(o_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_d[None, :],
                mask=ok[:, None], other=0.0)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + rows[:, None] * stride_don + offs_d[None, :],
                 mask=ok[:, None], other=0.0)
    tl.store(delta_ptr + b * stride_lb + h * stride_lh + rows, _row_delta(do, o), mask=ok)


@triton.jit
def _dq_tile(
    q, do, lse, delta, dq, k_src, v_src, k_offset, v_offset, kv_plane, v_plane, a, c, base, valid, offs_m,
    offs_d, start, stop, stride_kn, stride_vn, C, qk_scale,
    MASK: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr, DESC: tl.constexpr,
):
    """dQ of one query block over the key blocks in [start, stop). Without MASK every key of those
    blocks is real and visible to every query of the block."""
    for k_at in range(_loop_bound(start), _loop_bound(stop), BLOCK_N):
        offs_n = k_at + tl.arange(0, BLOCK_N)
        pos_n = base + offs_n * C
        key_ok = offs_n < valid
        k = _rows_load(k_src, kv_plane, a, c, k_at, k_offset, pos_n, stride_kn, offs_d, key_ok, BLOCK_N, HEAD_DIM,
                       DESC, MASK)
        v = _rows_load(v_src, v_plane, a, c, k_at, v_offset, pos_n, stride_vn, offs_d, key_ok, BLOCK_N, HEAD_DIM,
                       DESC, MASK)
        s = _dot(q, tl.trans(k), None, DOT_PRECISION)
        p = tl.exp2(s * qk_scale - lse[:, None])
        if MASK:
            ok = (offs_m[:, None] < valid) & key_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(ok, p, 0.0)
        dp = _dot(do, tl.trans(v), None, DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = _dot(_narrow(ds, k.dtype), k, dq, DOT_PRECISION)
    return dq


@triton.jit
def _dq_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dq_src_ptr, dq_dst_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don,
    stride_lb, stride_lh,
    stride_dqb, stride_dqh, stride_dqn,
    B, H_KV, GROUP, V_GROUP, N, L, C, NUM_SLICES, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DESC: tl.constexpr = False, DELTA_IN: tl.constexpr = False,
):
    """dQ of one query block of one slice for one query head (plus, with ACCUMULATE, what dq_src
    holds), written to dq_dst in its dtype. It also forms the block's Delta = rowsum(dO * O) and
    stores it for the dK/dV kernel, which runs after it; with DELTA_IN, Delta is already there
    (formed by the next hop's backward) and O is not read. With DESC the (B, heads, N, D) operands
    are TMA descriptors over their (B * heads, A, L, C * D) views."""
    qb, g, t = _program_block(L, NUM_SLICES, BLOCK_M)
    heads = H_KV * GROUP
    h = t % heads
    b = t // heads
    hk = h // GROUP
    hv = h // V_GROUP
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    plane = b * heads + h

    base, valid = _slice_layout(g, N, L, C)
    a, c = _slice_coords(g, C)
    q_start = qb * BLOCK_M
    if q_start < valid:
        offs_d = tl.arange(0, HEAD_DIM)
        offs_m, row_ok, pos_m = _block_rows(q_start, base, valid, C, BLOCK_M)
        q = _rows_load(q_ptr, plane, a, c, q_start, b64 * stride_qb + h64 * stride_qh, pos_m, stride_qn, offs_d,
                       row_ok, BLOCK_M, HEAD_DIM, DESC)
        do = _rows_load(do_ptr, plane, a, c, q_start, b64 * stride_dob + h64 * stride_doh, pos_m, stride_don,
                        offs_d, row_ok, BLOCK_M, HEAD_DIM, DESC)
        row_at = b64 * stride_lb + h64 * stride_lh + pos_m
        if DELTA_IN:
            delta = tl.load(delta_ptr + row_at, mask=row_ok, other=0.0)
        else:
            o = _rows_load(o_ptr, plane, a, c, q_start, b64 * stride_ob + h64 * stride_oh, pos_m, stride_on, offs_d,
                           row_ok, BLOCK_M, HEAD_DIM, DESC)
            delta = _row_delta(do, o)
            tl.store(delta_ptr + row_at, delta, mask=row_ok)
        lse = tl.load(lse_ptr + row_at, mask=row_ok, other=0.0)
        k_offset = b64 * stride_kb + hk.to(tl.int64) * stride_kh
        v_offset = b64 * stride_vb + hv.to(tl.int64) * stride_vh
        kv_plane = b * H_KV + hk
        v_plane = b * (heads // V_GROUP) + hv
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        # key blocks wholly below the diagonal (causal) or wholly real (not causal) need no mask
        if CAUSAL:
            bulk_end = ((q_start + 1) // BLOCK_N) * BLOCK_N
            hi = tl.minimum(valid, q_start + BLOCK_M)
        else:
            bulk_end = (valid // BLOCK_N) * BLOCK_N
            hi = valid
        dq = _dq_tile(q, do, lse, delta, dq, k_ptr, v_ptr, k_offset, v_offset, kv_plane, v_plane, a, c, base, valid,
                      offs_m, offs_d, 0, bulk_end, stride_kn, stride_vn, C, qk_scale, False, CAUSAL, DOT_PRECISION,
                      BLOCK_N, HEAD_DIM, DESC)
        dq = _dq_tile(q, do, lse, delta, dq, k_ptr, v_ptr, k_offset, v_offset, kv_plane, v_plane, a, c, base, valid,
                      offs_m, offs_d, bulk_end, hi, stride_kn, stride_vn, C, qk_scale, True, CAUSAL, DOT_PRECISION,
                      BLOCK_N, HEAD_DIM, DESC)
        _add_and_store_block(dq_src_ptr, dq_dst_ptr, plane, a, c, q_start, b64 * stride_dqb + h64 * stride_dqh,
                             pos_m, stride_dqn, offs_d, row_ok, dq * sm_scale, ACCUMULATE, BLOCK_M, HEAD_DIM, DESC)


@triton.jit
def _grad_zeros(ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, TRANSPOSED: tl.constexpr):
    """A float32 gradient accumulator of ROWS rows, held as its transpose with TRANSPOSED."""
    return tl.zeros([HEAD_DIM, ROWS], tl.float32) if TRANSPOSED else tl.zeros([ROWS, HEAD_DIM], tl.float32)


@triton.jit
def _grad_product(a, b, acc, TRANSPOSED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """a^T b (rows x head dim) added to acc; with TRANSPOSED formed and held as its transpose b^T a,
    a product as tall as the head dim: a warpgroup's wgmma takes it where a tile of fewer than 64
    rows is too short for one (Ampere-style mma.sync instead)."""
    return _dot(tl.trans(b), a, acc, DOT_PRECISION) if TRANSPOSED else _dot(tl.trans(a), b, acc, DOT_PRECISION)


@triton.jit
def _grad_rows(acc, TRANSPOSED: tl.constexpr):
    """An accumulator of `_grad_product` as rows x head dim."""
    if TRANSPOSED:
        acc = tl.trans(acc)
    return acc


@triton.jit
def _packed_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, delta_in_ptr, delta_out_ptr, dq_src_ptr, dq_dst_ptr, dk_src_ptr,
    dk_dst_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don,
    stride_lb, stride_lh,
    stride_dqb, stride_dqh, stride_dqn,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    B, H_KV, GROUP, V_GROUP, N, L, C, NUM_SLICES, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SUM_DV: tl.constexpr, ACCUMULATE: tl.constexpr, ROWS: tl.constexpr,
    DESC: tl.constexpr = False, INNER: tl.constexpr = False, DELTA_IN: tl.constexpr = False,
    DELTA_OUT: tl.constexpr = False, TRANSPOSED: tl.constexpr = False,
):
    """Short slices: one tile holds ROWS // BLOCK_L whole slices (BLOCK_L >= L coordinates each),
    so one program computes dQ, dK and dV of its slices for one kv head and the group's query heads,
    with no second kernel and no atomics. Scores between different slices of a tile are masked.
    dQ and dK are this hop's share plus, with ACCUMULATE, what the src buffers hold, written to the
    dst buffers in their dtype. With DESC every (B, heads, N, D) operand is a TMA descriptor over
    its (B * heads, A, L, C * D) view, as in the forward's packed kernel (rows coordinate-major
    unless INNER), which keeps the pointer tiles out of the registers. With DELTA_IN the rows'
    Delta is read from delta_in (formed by the next hop's backward) instead of from dO and O; with
    DELTA_OUT (value on the query heads) the previous hop's Delta is written to delta_out. With
    TRANSPOSED, dQ, dK and dV are formed as their transposes (see `_grad_product`)."""
    SLICES: tl.constexpr = ROWS // BLOCK_L
    slice_of_row, coord = _tile_rows(ROWS, BLOCK_L, DESC and not INNER)
    offs_d = tl.arange(0, HEAD_DIM)
    allowed = _tile_allowed(slice_of_row, coord, CAUSAL)

    pid = tl.program_id(0)
    hk = pid % H_KV
    t = pid // H_KV
    b = t % B
    tile = t // B
    a, c, pos, row_ok = _tile_place(tile, slice_of_row, coord, N, L, C, NUM_SLICES, SLICES)
    ok = allowed & row_ok[:, None] & row_ok[None, :]
    heads = H_KV * GROUP
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)
    kv_plane = b * H_KV + hk

    k = _tile_load(k_ptr, kv_plane, b64 * stride_kb + hk64 * stride_kh, a, c, pos, stride_kn, offs_d, row_ok,
                   ROWS, HEAD_DIM, DESC, INNER)
    dk = _grad_zeros(ROWS, HEAD_DIM, TRANSPOSED)
    dv = _grad_zeros(ROWS, HEAD_DIM, TRANSPOSED)
    for hg in range(0, _loop_bound(GROUP)):
        h = hk * GROUP + hg
        h64 = h.to(tl.int64)
        plane = b * heads + h
        hv = h // V_GROUP
        v_plane = b * (heads // V_GROUP) + hv
        q = _tile_load(q_ptr, plane, b64 * stride_qb + h64 * stride_qh, a, c, pos, stride_qn, offs_d, row_ok,
                       ROWS, HEAD_DIM, DESC, INNER)
        do = _tile_load(do_ptr, plane, b64 * stride_dob + h64 * stride_doh, a, c, pos, stride_don, offs_d, row_ok,
                        ROWS, HEAD_DIM, DESC, INNER)
        v = _tile_load(v_ptr, v_plane, b64 * stride_vb + hv.to(tl.int64) * stride_vh, a, c, pos, stride_vn, offs_d,
                       row_ok, ROWS, HEAD_DIM, DESC, INNER)
        row_at = b64 * stride_lb + h64 * stride_lh + pos
        lse = tl.load(lse_ptr + row_at, mask=row_ok, other=0.0)
        if DELTA_IN:
            delta = tl.load(delta_in_ptr + row_at, mask=row_ok, other=0.0)
        else:
            o = _tile_load(o_ptr, plane, b64 * stride_ob + h64 * stride_oh, a, c, pos, stride_on, offs_d, row_ok,
                           ROWS, HEAD_DIM, DESC, INNER)
            delta = _row_delta(do, o)
        s = _dot(q, tl.trans(k), None, DOT_PRECISION)
        p = tl.where(ok, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), None, DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        if DELTA_OUT:
            # the previous hop's O is this hop's value V and its dO this hop's dV = P^T dO, so its
            # Delta = rowsum(dV * V) is the column sums of P * dP (dP = dO V^T), already at hand
            tl.store(delta_out_ptr + b64 * stride_lb + hv.to(tl.int64) * stride_lh + pos, tl.sum(p * dp, axis=0),
                     mask=row_ok)
        dq_offset = b64 * stride_dqb + h64 * stride_dqh
        dq = _grad_rows(_grad_product(_narrow(tl.trans(ds), k.dtype), k, None, TRANSPOSED, DOT_PRECISION),
                        TRANSPOSED) * sm_scale
        _add_and_store_tile(dq_src_ptr, dq_dst_ptr, plane, dq_offset, a, c, pos, stride_dqn, offs_d, row_ok, dq,
                            ACCUMULATE, ROWS, BLOCK_L, HEAD_DIM, DESC, INNER)
        dk = _grad_product(_narrow(ds, q.dtype), q, dk, TRANSPOSED, DOT_PRECISION)
        dv = _grad_product(_narrow(p, do.dtype), do, dv, TRANSPOSED, DOT_PRECISION)
        if not SUM_DV:
            _tile_store(dv_ptr, v_plane, b64 * stride_dvb + hv.to(tl.int64) * stride_dvh, a, c, pos, stride_dvn,
                        offs_d, row_ok, _grad_rows(dv, TRANSPOSED), ROWS, BLOCK_L, HEAD_DIM, DESC, INNER)
            dv = _grad_zeros(ROWS, HEAD_DIM, TRANSPOSED)
    if SUM_DV:
        _tile_store(dv_ptr, kv_plane, b64 * stride_dvb + hk64 * stride_dvh, a, c, pos, stride_dvn, offs_d, row_ok,
                    _grad_rows(dv, TRANSPOSED), ROWS, BLOCK_L, HEAD_DIM, DESC, INNER)
    _add_and_store_tile(dk_src_ptr, dk_dst_ptr, kv_plane, b64 * stride_dkb + hk64 * stride_dkh, a, c, pos,
                        stride_dkn, offs_d, row_ok, _grad_rows(dk, TRANSPOSED) * sm_scale, ACCUMULATE, ROWS, BLOCK_L,
                        HEAD_DIM, DESC, INNER)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One blocked kernel's launch shape: query rows and key rows per tile, warps and stages."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class BackwardBlocks:
    """Tile shapes of the two blocked kernels: dK/dV holds BLOCK_N keys and walks query blocks of
    BLOCK_M rows; dQ holds BLOCK_M queries and walks key blocks of BLOCK_N rows. With `fused_dq` no
    dQ kernel runs: the dK/dV kernel also forms each tile's dQ share (five products a tile instead of
    seven) and adds it to the float32 dQ accumulator atomically, which must therefore hold the sum
    so far, or zeros (see `plan_hop_backward`)."""

    dkdv: Tile
    dq: Tile
    fused_dq: bool = False


# Longest slice the packed kernel takes; its tiles hold whole slices (a module-level value so that
# tests can send every hop through the blocked kernels).
PACKED_MAX_LEN = 64


def backward_blocks(length: int, dtype: torch.dtype) -> BackwardBlocks:
    """The blocked kernels' launch shapes. 16-bit operands: dK/dV walks 32 queries at a time past
    64 keys, dQ walks 32 keys past 64 queries, 4 warps, 2 stages: the fastest pair on an H200 at
    L = 128, 256 and 512 (benchmarks/backward_tiles.py; docs/kernel-backward.md has the table).
    fp32 operands take twice the shared memory, hence 32 x 32 tiles; the interpreter takes those too."""
    if dtype == torch.float32 or _INTERPRET:
        block = min(32, max(16, triton.next_power_of_2(length)))
        stages = 1 if _INTERPRET else 2
        return BackwardBlocks(Tile(block, block, 4, stages), Tile(block, block, 4, stages))
    return BackwardBlocks(dkdv=Tile(32, 64, 4, 2), dq=Tile(64, 32, 4, 2))


def fused_blocks(length: int, dtype: torch.dtype) -> BackwardBlocks:
    """The blocked kernels' launch shapes with dQ fused into the dK/dV kernel. 16-bit operands: 16
    queries at a time past 64 keys, whose fused kernel spills 0 and 56 bytes per thread with TMA
    boxes on the slices of 512 and 256 at 128k against 80 and 232 with 32 queries (compiled for
    sm_90). Measured slower than the two kernels on an H100 (docs/kernel-log.md), so not the table.
    fp32 and the interpreter: the table's shapes."""
    table = backward_blocks(length, dtype)
    if dtype == torch.float32 or _INTERPRET:
        return replace(table, fused_dq=True)
    return replace(table, dkdv=Tile(16, 64, 4, 2), fused_dq=True)


@dataclass(frozen=True)
class PackedTile:
    """The packed kernel's launch shape: rows per tile (whole slices), warps and stages, and whether
    its tiles move as TMA boxes where they fit one."""

    rows: int
    num_warps: int = 4
    num_stages: int = 1
    boxes: bool = False
    transposed: bool = False  # dQ, dK and dV formed as their transposes (`_grad_product`)


def packed_tile(length: int, dtype: torch.dtype) -> PackedTile:
    """Tiles of whole slices of next_power_of_2(length) >= 16 rows. 16-bit operands: 32 rows and
    4 warps up to L = 32, 64 rows and 8 warps up to 64, one stage (the fastest on an H200, 2.5-2.8x
    faster than 64 rows and 4 warps at L = 32). fp32: at least 32 rows, 4 warps. The interpreter
    takes big tiles (fewer programs run faster there). Tiles load through pointers: in one stage
    as TMA boxes, the backward of the m = 3 training steps (every hop on this kernel) measured
    20-45 % slower on an H200, against the blocked kernels' 16-24 % faster (docs/kernel-log.md).
    The same tile in two stages with boxes is `staged_packed_tile`, which `tensorized` times
    against this one per shape."""
    block_l = max(16, triton.next_power_of_2(length))
    if _INTERPRET:
        return PackedTile(max(block_l, 128), 8, 1)
    if dtype == torch.float32:
        return PackedTile(max(block_l, 32), 4, 1)
    return PackedTile(32, 4, 1) if block_l <= 32 else PackedTile(block_l, 8, 1)


def staged_packed_tile(length: int, dtype: torch.dtype) -> PackedTile:
    """The table's packed tile in two pipeline stages with its tiles as TMA boxes where they fit one
    (PackedBackward.STAGED_BOXES): the second stage keeps the next tile's loads in flight, which the
    one-stage boxes (20-45 % slower, see `packed_tile`) lacked at one program of 8 warps per SM. On
    an H100 a hop's backward measured 12 % faster than the table's tile on 32k m = 3's slices of
    32 and 22-23 % on 128k m = 3's slices of 64, but 4 % slower on 128k's slices of 32 (4096 apart),
    and whole m = 3 training steps 0-12 % faster (4k-128k, docs/kernel-log.md). Not the table, since
    it is not faster on every hop and has not been measured on every GPU: the
    training dispatch times it hop by hop against the table (kernels/tensorized_train_dispatch.py),
    and `tensorized-triton` keeps the table. 16-bit operands only: float32 tiles already take twice
    their shared memory, and two stages double it again (untried)."""
    return replace(packed_tile(length, dtype), num_stages=2, boxes=True)


def _packed_launch(length: int, dtype: torch.dtype, packed: PackedBackward) -> PackedTile | None:
    """The packed tile a hop of slices of `length` launches under `packed` (None: the table's);
    float32 operands keep the table's (see `staged_packed_tile`)."""
    if packed is PackedBackward.TABLE or length > PACKED_MAX_LEN or dtype == torch.float32:
        return None
    return staged_packed_tile(length, dtype)


def check_packed_forms(packed: Sequence[PackedBackward], dims: Sequence[int]) -> None:
    """Per-hop packed forms name every hop, or none (the table's tile on every hop)."""
    if packed and len(packed) != len(dims):
        raise ValueError(f"{len(packed)} packed backward forms for {len(dims)} hops")


def _new_gradient_buffer(like: torch.Tensor) -> torch.Tensor:
    """The gradient of an intermediate value (a module-level hook so tests can hand in a poisoned one)."""
    return torch.empty_like(like, memory_format=torch.contiguous_format)


@dataclass(frozen=True)
class Gradients:
    """Where a hop's backward reads and writes dq and dk: it adds its share to what the src buffers
    hold (unless `accumulate` is off, for the first hop of the backward) and writes the sum to the
    dst buffers, float32 accumulators between hops and the inputs' dtypes on the last one, so that
    no buffer is zeroed and no final conversion pass is needed. src and dst have the same strides.
    (A hop with dQ fused into its dK/dV kernel adds dQ atomically into dq_dst, which must be dq_src,
    whatever `accumulate` says; see `BackwardBlocks`.)"""

    dq_src: torch.Tensor
    dq_dst: torch.Tensor
    dk_src: torch.Tensor
    dk_dst: torch.Tensor
    accumulate: bool


@dataclass(frozen=True)
class Deltas:
    """Delta = rowsum(dO * O) handed from one hop's backward to the previous hop's, in float32
    (B, heads, N) buffers strided as the log-sum-exps: `given` holds this hop's, formed by the next
    hop's backward (None: formed here from dO and O, which costs a read of O); `previous` receives
    the previous hop's, whose O is this hop's value (None: not formed)."""

    given: torch.Tensor | None = None
    previous: torch.Tensor | None = None


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch, whole: the kernel, its grid, its positional and keyword arguments."""

    kernel: triton.runtime.JITFunction
    grid: tuple[int]
    args: tuple
    kwargs: dict[str, object]

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.kwargs)


def _launch_hop_backward(
    q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, out: torch.Tensor, d_out: torch.Tensor,
    lse: torch.Tensor, grads: Gradients, d_value: torch.Tensor,
    dims: tuple[int, ...], axis: int, causal: bool, scale: float, blocks: BackwardBlocks | None = None,
    packed: PackedTile | None = None, tma: bool | None = None, deltas: Deltas = Deltas(),
) -> None:
    """The backward of one hop (see `plan_hop_backward`), launched."""
    for launch in plan_hop_backward(q, k, value, out, d_out, lse, grads, d_value, dims, axis, causal, scale,
                                    blocks, packed, tma, deltas):
        launch()


def plan_hop_backward(
    q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, out: torch.Tensor, d_out: torch.Tensor,
    lse: torch.Tensor, grads: Gradients, d_value: torch.Tensor,
    dims: tuple[int, ...], axis: int, causal: bool, scale: float, blocks: BackwardBlocks | None = None,
    packed: PackedTile | None = None, tma: bool | None = None, deltas: Deltas = Deltas(),
) -> list[KernelLaunch]:
    """The launches of one hop's backward, in order: its share of dq and dk (see Gradients) and
    d_value. Slices of at most PACKED_MAX_LEN go through the packed kernel unless `blocks` asks for
    the blocked ones; `blocks` and `packed` replace the tables' launch shapes
    (benchmarks/backward_tiles.py). Where the dims fill N and the operands are contiguous, the
    blocked kernels move their tiles as TMA boxes, which keeps the pointer tiles out of the
    registers, and the packed kernel does where its tile asks for boxes and its slices fit one box;
    `tma=True` moves every tile that can as a box, `tma=False` loads through pointers (comparisons).
    `deltas` hands Delta between the hops of one backward (see Deltas)."""
    batch, heads, n, d = q.shape
    kv_heads = k.shape[1]
    value_heads = value.shape[1]
    _check_deltas(deltas, lse, value_heads == heads)
    length = dims[axis]
    inner = math.prod(dims[axis + 1:])
    num_slices = math.prod(dims) // length
    assert grads.dq_src.stride() == grads.dq_dst.stride() and grads.dk_src.stride() == grads.dk_dst.stride()
    dq, dk = grads.dq_dst, grads.dk_dst
    strides = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        value.stride(0), value.stride(1), value.stride(2),
    )
    sizes = (batch, kv_heads, heads // kv_heads, heads // value_heads, n, length, inner, num_slices,
             scale * _LOG2E, scale)
    precision = "ieee" if q.dtype == torch.float32 else None
    if length <= PACKED_MAX_LEN and blocks is None:
        block_l = max(16, triton.next_power_of_2(length))
        packed = packed or packed_tile(length, q.dtype)
        if packed.rows < block_l:
            raise ValueError(f"packed tile of {packed.rows} rows cannot hold a slice of {length}")
        grid = (triton.cdiv(num_slices, packed.rows // block_l) * batch * kv_heads,)
        operands = (q, k, value, out, d_out, grads.dq_src, dq, grads.dk_src, dk, d_value)
        boxed = (packed.boxes if tma is None else tma) and _packed_box_fits(packed.rows, block_l, inner, d)
        descs = _hop_descriptors(operands, dims, axis) if boxed else None
        if descs is not None:
            _packed_blocks(descs, packed.rows, block_l, inner == 1, d)
            operands = tuple(descs)
        return [KernelLaunch(_packed_kernel, grid, (
            *operands[:5], lse, _or(deltas.given, lse), _or(deltas.previous, lse), *operands[5:], *strides,
            out.stride(0), out.stride(1), out.stride(2),
            d_out.stride(0), d_out.stride(1), d_out.stride(2),
            lse.stride(0), lse.stride(1),
            dq.stride(0), dq.stride(1), dq.stride(2),
            dk.stride(0), dk.stride(1), dk.stride(2),
            d_value.stride(0), d_value.stride(1), d_value.stride(2), *sizes,
        ), {"HEAD_DIM": d, "BLOCK_L": block_l, "CAUSAL": causal, "DOT_PRECISION": precision,
            "SUM_DV": value_heads != heads, "ACCUMULATE": grads.accumulate, "ROWS": packed.rows,
            "DESC": descs is not None, "INNER": descs is not None and inner == 1,
            "DELTA_IN": deltas.given is not None, "DELTA_OUT": deltas.previous is not None,
            "TRANSPOSED": packed.transposed, "num_warps": packed.num_warps, "num_stages": packed.num_stages})]
    blocks = blocks or backward_blocks(length, q.dtype)
    if blocks.fused_dq and (grads.dq_src is not grads.dq_dst or grads.dq_dst.dtype != torch.float32):
        names = [str(x.dtype).removeprefix("torch.") for x in (grads.dq_src, grads.dq_dst)]
        raise ValueError("with dQ fused into the dK/dV kernel each hop adds its dQ to one float32 accumulator: "
                         f"dq_src and dq_dst must be the same float32 tensor, got {names[0]} and {names[1]}"
                         f"{'' if grads.dq_src is grads.dq_dst else ', two tensors'}")
    # filled by the dQ kernel (or the Delta kernel) for the dK/dV kernel, which runs after it on the same
    # stream, unless given
    delta = deltas.given if deltas.given is not None else torch.empty_like(lse)
    assert delta.stride() == lse.stride()
    common = {"HEAD_DIM": d, "CAUSAL": causal, "DOT_PRECISION": precision, "ACCUMULATE": grads.accumulate}
    dq_tile, dkdv_tile = blocks.dq, blocks.dkdv
    launches = []
    if not blocks.fused_dq:
        dq_ops = _boxes(((q, dq_tile.block_m), (k, dq_tile.block_n), (value, dq_tile.block_n), (out, dq_tile.block_m),
                         (d_out, dq_tile.block_m), (grads.dq_src, dq_tile.block_m), (dq, dq_tile.block_m)),
                        dims, axis, d, tma)
        dq_grid = (batch * heads * num_slices * triton.cdiv(length, dq_tile.block_m),)
        launches.append(KernelLaunch(_dq_kernel, dq_grid, (
            *dq_ops[:5], lse, delta, *dq_ops[5:], *strides,
            out.stride(0), out.stride(1), out.stride(2),
            d_out.stride(0), d_out.stride(1), d_out.stride(2),
            lse.stride(0), lse.stride(1),
            dq.stride(0), dq.stride(1), dq.stride(2), *sizes,
        ), {**common, "BLOCK_M": dq_tile.block_m, "BLOCK_N": dq_tile.block_n,
            "DESC": isinstance(dq_ops[0], TensorDescriptor), "DELTA_IN": deltas.given is not None,
            "num_warps": dq_tile.num_warps, "num_stages": dq_tile.num_stages}))
    elif deltas.given is None:
        rows = 64
        launches.append(KernelLaunch(_delta_kernel, (triton.cdiv(n, rows), batch * heads), (
            out, d_out, delta, out.stride(0), out.stride(1), out.stride(2), d_out.stride(0), d_out.stride(1),
            d_out.stride(2), lse.stride(0), lse.stride(1), heads, n),
            {"HEAD_DIM": d, "BLOCK": rows, "num_warps": 4, "num_stages": 1}))
    dkdv_ops = _boxes(((q, dkdv_tile.block_m), (k, dkdv_tile.block_n), (value, dkdv_tile.block_n),
                       (d_out, dkdv_tile.block_m), (grads.dk_src, dkdv_tile.block_n), (dk, dkdv_tile.block_n),
                       (d_value, dkdv_tile.block_n)), dims, axis, d, tma)
    dkdv_grid = (batch * kv_heads * num_slices * triton.cdiv(length, dkdv_tile.block_n),)
    launches.append(KernelLaunch(_dkdv_kernel, dkdv_grid, (
        *dkdv_ops[:4], lse, delta, _or(deltas.previous, lse), *dkdv_ops[4:], dq, *strides,
        d_out.stride(0), d_out.stride(1), d_out.stride(2),
        lse.stride(0), lse.stride(1),
        dk.stride(0), dk.stride(1), dk.stride(2),
        d_value.stride(0), d_value.stride(1), d_value.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2), *sizes,
    ), {"SUM_DV": value_heads != heads, **common, "BLOCK_M": dkdv_tile.block_m,
        "BLOCK_N": dkdv_tile.block_n, "DESC": isinstance(dkdv_ops[0], TensorDescriptor),
        "DELTA_OUT": deltas.previous is not None, "DQ_ATOMIC": blocks.fused_dq,
        "num_warps": dkdv_tile.num_warps, "num_stages": dkdv_tile.num_stages}))
    return launches


def _or(tensor: torch.Tensor | None, default: torch.Tensor) -> torch.Tensor:
    """`tensor`, or for a pointer argument the kernel will not touch, `default`."""
    return default if tensor is None else tensor


def _check_deltas(deltas: Deltas, lse: torch.Tensor, value_on_query_heads: bool) -> None:
    for name, buffer in (("given", deltas.given), ("previous", deltas.previous)):
        if buffer is not None and (buffer.shape != lse.shape or buffer.stride() != lse.stride()
                                   or buffer.dtype != torch.float32):
            raise ValueError(f"Deltas.{name} must be float32 {tuple(lse.shape)} with strides {lse.stride()}, "
                             f"got {buffer.dtype} {tuple(buffer.shape)} with strides {buffer.stride()}")
    if (deltas.given is not None and deltas.previous is not None and deltas.given.device.type != "meta"
            and deltas.given.untyped_storage().data_ptr() == deltas.previous.untyped_storage().data_ptr()):
        # the blocked kernels' programs of one slice read rows of `given` that others write in `previous`
        raise ValueError("Deltas.given and Deltas.previous must be different buffers")
    if deltas.previous is not None and not value_on_query_heads:
        # the value of the first hop has the kv heads, and there is no hop before it
        raise ValueError("Deltas.previous needs a value with one head per query head")


def _boxes(operands: tuple[tuple[torch.Tensor, int], ...], dims: tuple[int, ...], axis: int, head_dim: int,
           tma: bool | None) -> tuple:
    """The (tensor, rows per block) operands of a blocked kernel as TMA descriptors with boxes of
    those rows where the dims fill N and every tensor is contiguous (see `_hop_descriptors`), else
    the tensors themselves."""
    tensors = tuple(t for t, _ in operands)
    descs = _hop_descriptors(tensors, dims, axis) if tma is not False else None
    if descs is None:
        return tensors
    for desc, (_, rows) in zip(descs, operands, strict=True):
        desc.block_shape = [1, 1, rows, head_dim]
    return tuple(descs)


@dataclass(frozen=True)
class SavedForward:
    """What the training forward keeps for the backward: every hop's output (the last is the
    result) in the input dtype, and every hop's per-row log-sum-exp (log2 units, float32)."""

    outputs: tuple[torch.Tensor, ...]
    lses: tuple[torch.Tensor, ...]


def forward_with_saved(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: tuple[int, ...], causal: bool, scale: float,
    hops: int | None = None,
) -> SavedForward:
    """The forward of kernels/tensorized_triton.py, keeping each hop's output and log-sum-exp; only
    its first `hops` hops when given."""
    batch, heads, n, _ = q.shape
    outputs, lses = [], []
    value = v
    for axis in hop_axes(len(dims))[:hops]:
        target = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device)
        _launch_hop(q, k, value, target, dims, axis, causal, scale, lse=lse)
        outputs.append(target)
        lses.append(lse)
        value = target
    return SavedForward(tuple(outputs), tuple(lses))


def recompute_intermediates(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: tuple[int, ...], causal: bool, scale: float
) -> tuple[torch.Tensor, ...]:
    """The outputs of hops 1..m-1 again, for a forward that kept only the result and the log-sum-exps:
    the same hops of `forward_with_saved`, so the same kernels and configs produce the same bits."""
    return forward_with_saved(q, k, v, dims, causal, scale, hops=len(dims) - 1).outputs


def backward_from_saved(
    d_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, saved: SavedForward,
    dims: tuple[int, ...], causal: bool, scale: float, hand_deltas: bool = True, fused_dq: bool = False,
    packed: Sequence[PackedBackward] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the inputs' dtypes, from the gradient of the output and the saved forward.
    With `hand_deltas` each hop's backward forms the previous hop's Delta from the value and d_value
    it holds anyway, so that no hop but the last reads its output back (one (B, H, N, D) read fewer
    per hop; off for comparisons). With `fused_dq` the hops on the blocked kernels (slices longer
    than PACKED_MAX_LEN) add their dQ from the dK/dV kernel (`fused_blocks`); the float32 dQ sum is
    then zeroed first if the first hop of the backward is one of them, and converted to q's dtype
    last if the last is. `packed[t]` says how hop t, if its slices are at most PACKED_MAX_LEN long,
    launches the packed kernel (empty: the table's tile on every hop)."""
    check_packed_forms(packed, dims)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    hops = hop_axes(len(dims))
    fused = [fused_dq and dims[axis] > PACKED_MAX_LEN for axis in hops]
    # float32 sums between hops; one hop alone writes the results directly, unless it adds atomically
    dq_acc = dq
    if fused[-1]:
        dq_acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    elif len(hops) > 1:
        dq_acc = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    dk_acc = torch.empty(k.shape, dtype=torch.float32, device=k.device) if len(hops) > 1 else dk
    d_value = _row_major(d_out.to(q.dtype))
    # two buffers in turn (one for m = 2): a hop reads its own Delta while it writes the previous hop's
    handed: list[torch.Tensor | None] = [None, None]
    given = None
    for t in reversed(range(len(hops))):
        value = v if t == 0 else saved.outputs[t - 1]
        d_prev = _new_gradient_buffer(value)
        grads = Gradients(dq_acc, dq if t == 0 and not fused[t] else dq_acc, dk_acc, dk if t == 0 else dk_acc,
                          accumulate=t < len(hops) - 1)
        previous = None
        if hand_deltas and t > 0:
            if handed[t % 2] is None:
                handed[t % 2] = torch.empty_like(saved.lses[0])
            previous = handed[t % 2]
        _launch_hop_backward(q, k, value, saved.outputs[t], d_value, saved.lses[t], grads, d_prev,
                             dims, hops[t], causal, scale, blocks=fused_blocks(dims[hops[t]], q.dtype) if fused[t]
                             else None, packed=_packed_launch(dims[hops[t]], q.dtype,
                                                              packed[t] if packed else PackedBackward.TABLE),
                             deltas=Deltas(given, previous))
        d_value, given = d_prev, previous
    if fused[0]:
        dq.copy_(dq_acc)
    return dq, dk, d_value
