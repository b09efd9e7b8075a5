"""Tensorized attention (docs/spec-tensorized-attention.md) as Triton kernels, one launch per hop.

The hop over axis j of dims (n_1..n_m) sees the sequence as (A, L, C) with L = n_j,
A = prod(dims[:j]) and C = prod(dims[j+1:]): the slice (a, c) holds the positions
a*L*C + i*C + c for i < L, so every slice is a strided view of rows that are each D contiguous
elements. Both kernels address rows this way, so the same code runs the innermost axis (C = 1,
block-local attention) and any outer axis (stride C, dilated attention); nothing is permuted,
padded or expanded in memory:

* positions >= N are never read or written: loads are masked and every buffer is N rows long.
  In a slice the real positions are a prefix i < valid_len, so one bound masks the padded keys
  (non-causal) and the rows that are not stored;
* GQA: query head h reads kv head h // (H / H_kv) in place; the value of the first hop is v
  (H_kv heads), later hops read the previous output (H heads);
* two kernels, chosen by L: a "packed" one for L <= 128, where one tile holds the whole slice
  (several slices per tile when L is small) and a persistent grid walks the tiles so the loads of
  the next tile overlap the math of this one; and a flash-style one for longer slices, with an
  online softmax over key blocks and causal block skipping.

Memory: the output plus one intermediate; hops alternate between them so the last lands in the
output.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import triton
import triton.language as tl
import triton.testing
from triton.tools.tensor_descriptor import TensorDescriptor

from ..core.folding import hop_axes
from .tuning_record import TuningRecord, record_folder, tuning_record

SUPPORTED_HEAD_DIMS: tuple[int, ...] = (32, 64, 128)
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)

# Longest slice that the packed kernel holds in a single tile (its score tile is ROWS x ROWS).
PACKED_MAX_LEN = 128

_LOG2E = 1.4426950408889634
# Triton reads this at import too; kernels defined before it is set would compile for a GPU.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# TBENCH_TRITON_AUTOTUNE=0 takes the first config that fits instead of timing them all (quick
# correctness runs on a GPU, where timing every config of every key would dominate).
_AUTOTUNE = os.environ.get("TBENCH_TRITON_AUTOTUNE", "1") != "0"


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

if _INTERPRET:
    # The interpreter holds scalars as 1-element arrays, which recent numpy refuses to turn into a
    # Python int; loop bounds therefore pass through this helper, which is the identity compiled.
    def _as_int(x: tl.tensor | int) -> int:
        return int(x.handle.data.reshape(-1)[0]) if isinstance(x, tl.tensor) else int(x)

    @triton.jit
    def _loop_bound(x):
        return _as_int(x)

    # The interpreter's bf16 products are wrong; exact fp32 products of the same (rounded)
    # operands are what the tensor cores compute anyway.
    @triton.jit
    def _dot(a, b, acc, DOT_PRECISION: tl.constexpr):
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")

    # ... and its fp32 -> bf16 cast truncates; round to nearest even by hand, as the GPU does.
    @triton.jit
    def _narrow(x, dtype: tl.constexpr):
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            x = bits.to(tl.float32, bitcast=True)
        return x.to(dtype)

else:

    @triton.jit
    def _loop_bound(x):
        return x

    @triton.jit
    def _dot(a, b, acc, DOT_PRECISION: tl.constexpr):
        return tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    @triton.jit
    def _narrow(x, dtype: tl.constexpr):
        return x.to(dtype)


@triton.jit
def _load_rows(base_ptr, pos, stride, offs_d, ok, MASK: tl.constexpr):
    """Rows at positions `pos` (D contiguous elements each); with MASK, rows where `ok` is false
    load as zero, else every row is known to be real and loads unmasked."""
    at = base_ptr + pos[:, None] * stride + offs_d[None, :]
    if MASK:
        return tl.load(at, mask=ok[:, None], other=0.0)
    return tl.load(at)


@triton.jit
def _slice_coords(g, C):
    """Slice g as (a, c): its index over the outer axes and over the inner ones."""
    a = g // C
    return a, g - a * C


@triton.jit
def _slice_layout(g, N, L, C):
    """First position of slice g (a, c) and how many of its coordinates are real (< N)."""
    a, c = _slice_coords(g, C)
    base = a * (L * C) + c
    # real positions form a prefix of the slice; written without negative divisions
    valid = tl.where(base < N, tl.minimum((N - base + C - 1) // C, L), 0)
    return base, valid


@triton.jit
def _tile_rows(ROWS: tl.constexpr, BLOCK_L: tl.constexpr, COORD_MAJOR: tl.constexpr):
    """Which slice of a packed tile each row belongs to and its coordinate in that slice: rows are
    slice-major, or coordinate-major where the tile's slices lie side by side in a TMA box."""
    rows = tl.arange(0, ROWS)
    if COORD_MAJOR:
        slice_of_row = rows % (ROWS // BLOCK_L)
        coord = rows // (ROWS // BLOCK_L)
    else:
        slice_of_row = rows // BLOCK_L
        coord = rows % BLOCK_L
    return slice_of_row, coord


@triton.jit
def _tile_allowed(slice_of_row, coord, CAUSAL: tl.constexpr):
    """Which scores of a packed tile count: a row sees only its own slice's keys (and, causal,
    none at a later coordinate)."""
    allowed = slice_of_row[:, None] == slice_of_row[None, :]
    if CAUSAL:
        allowed = allowed & (coord[None, :] <= coord[:, None])
    return allowed


@triton.jit
def _tile_place(tile, slice_of_row, coord, N, L, C, NUM_SLICES, SLICES: tl.constexpr):
    """Where packed tile `tile` lies: (a, c) of its first slice, each row's position, and whether
    the row is real (in a slice that exists, at a position < N)."""
    a, c = _slice_coords(tile * SLICES, C)
    base, valid = _slice_layout(tile * SLICES + slice_of_row, N, L, C)
    valid = tl.where(tile * SLICES + slice_of_row < NUM_SLICES, valid, 0)
    row_ok = coord < valid
    pos = base + coord * C
    return a, c, pos, row_ok


@triton.jit
def _rows_load(src, plane, a, c, start, offset, pos, stride_n, offs_d, ok,
               ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, DESC: tl.constexpr, MASK: tl.constexpr = True):
    """ROWS rows of one head at positions `pos`: through pointers (src + offset: the head's first row;
    rows where `ok` is false load as zero, unless MASK is off and every row is real), or, with DESC,
    as the TMA box at [plane, a, start, c * D] of the (B * heads, A, L, C * D) view (see
    `_hop_descriptors`), in the box's element order whatever its shape; rows past a slice's end
    fall outside the view and load as zero."""
    if DESC:
        rows = src.load([plane, a, start, c * HEAD_DIM]).reshape(ROWS, HEAD_DIM)
    else:
        rows = _load_rows(src + offset, pos, stride_n, offs_d, ok, MASK)
    return rows


@triton.jit
def _rows_store(dst, plane, a, c, start, offset, pos, stride_n, offs_d, ok, value,
                BOX_A: tl.constexpr, BOX_L: tl.constexpr, BOX_W: tl.constexpr, HEAD_DIM: tl.constexpr,
                DESC: tl.constexpr):
    """`value` (float32 rows) stored in dst's dtype where `_rows_load` reads them; with DESC the
    descriptor's box is (1, BOX_A, BOX_L, BOX_W), and rows past a slice's end are dropped."""
    if DESC:
        dst.store([plane, a, start, c * HEAD_DIM], _narrow(value, dst.dtype).reshape(1, BOX_A, BOX_L, BOX_W))
    else:
        tl.store(dst + offset + pos[:, None] * stride_n + offs_d[None, :], _narrow(value, dst.dtype.element_ty),
                 mask=ok[:, None])


@triton.jit
def _tile_load(src, plane, offset, a, c, pos, stride_n, offs_d, row_ok,
               ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, DESC: tl.constexpr, INNER: tl.constexpr):
    """A packed tile's rows of one head. Its box (`_packed_blocks`) holds consecutive slices along A
    when INNER (C = 1, so c = 0), else consecutive slices side by side along C, which the reshape
    turns into coordinate-major rows."""
    return _rows_load(src, plane, a, c, 0, offset, pos, stride_n, offs_d, row_ok, ROWS, HEAD_DIM, DESC)


@triton.jit
def _tile_store(dst, plane, offset, a, c, pos, stride_n, offs_d, row_ok, value,
                ROWS: tl.constexpr, BLOCK_L: tl.constexpr, HEAD_DIM: tl.constexpr, DESC: tl.constexpr,
                INNER: tl.constexpr):
    """`value` (ROWS x D, float32) stored where `_tile_load` reads it; rows past a slice's end or past
    the last slice are dropped."""
    if INNER:
        _rows_store(dst, plane, a, c, 0, offset, pos, stride_n, offs_d, row_ok, value,
                    ROWS // BLOCK_L, BLOCK_L, HEAD_DIM, HEAD_DIM, DESC)
    else:
        _rows_store(dst, plane, a, c, 0, offset, pos, stride_n, offs_d, row_ok, value,
                    1, BLOCK_L, ROWS // BLOCK_L * HEAD_DIM, HEAD_DIM, DESC)


@triton.jit
def _packed_head(
    q_src, o_dst, lse_base, q_plane, q_offset, o_offset, a, c, k, v, stride_qn, stride_on, pos, offs_d,
    row_ok, allowed, qk_scale,
    ROWS: tl.constexpr, BLOCK_L: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr,
    STORE_LSE: tl.constexpr, DESC: tl.constexpr, INNER: tl.constexpr,
):
    """One query head over one tile whose K and value rows are already loaded: exact softmax of
    the tile's allowed scores, the product with the value, the stores."""
    q = _tile_load(q_src, q_plane, q_offset, a, c, pos, stride_qn, offs_d, row_ok, ROWS, HEAD_DIM, DESC, INNER)
    s = _dot(q, tl.trans(k), None, DOT_PRECISION)
    s = tl.where(allowed & row_ok[None, :], s, float("-inf"))
    # the scale (> 0) is applied inside the exponent, one FMA per score
    row_max = tl.max(s, 1) * qk_scale
    # rows without any allowed key (padding only) would give -inf - -inf = NaN
    row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    p = tl.exp2(s * qk_scale - row_max[:, None])
    denom = tl.sum(p, 1)
    denom = tl.where(denom > 0.0, denom, 1.0)
    acc = _dot(_narrow(p, v.dtype), v, None, DOT_PRECISION)
    _tile_store(o_dst, q_plane, o_offset, a, c, pos, stride_on, offs_d, row_ok, acc / denom[:, None],
                ROWS, BLOCK_L, HEAD_DIM, DESC, INNER)
    if STORE_LSE:
        # log2 of the softmax denominator in scaled log2 units: what the backward needs to
        # recompute the weights as exp2(s * qk_scale - lse)
        tl.store(lse_base + pos, row_max + tl.log2(denom), mask=row_ok)


@triton.jit
def _packed_hop_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    lse_ptr, stride_lb, stride_lh,
    B, H_KV, GROUP, V_GROUP, N, L, C, NUM_SLICES, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ROWS: tl.constexpr, PROGRAMS_PER_SM: tl.constexpr,  # the latter only sizes the grid
    STORE_LSE: tl.constexpr = False, SHARE_KV: tl.constexpr = False, V_SHARED: tl.constexpr = False,
    DESC: tl.constexpr = False, INNER: tl.constexpr = False,
):
    """One tile = ROWS // BLOCK_L whole slices of BLOCK_L (>= L) coordinates each; scores between
    different slices of the tile are masked out. A persistent grid walks the tiles.

    With SHARE_KV a program runs a tile for every query head of one kv group, loading the tile's K
    once (and its value once when V_SHARED: the value has the kv heads, as on the first hop); else
    one program per (tile, query head). With DESC, q/k/v/o are TMA descriptors over the tensors
    viewed as (B * heads, A, L, C * D) (see `_hop_descriptors`, `_packed_blocks`), which keeps the
    pointer tiles out of the registers; rows are slice-major when INNER, else coordinate-major."""
    SLICES: tl.constexpr = ROWS // BLOCK_L
    slice_of_row, coord = _tile_rows(ROWS, BLOCK_L, DESC and not INNER)
    offs_d = tl.arange(0, HEAD_DIM)
    allowed = _tile_allowed(slice_of_row, coord, CAUSAL)

    heads_per_tile = 1 if SHARE_KV else GROUP
    heads = H_KV * GROUP
    value_heads = heads // V_GROUP
    tiles = tl.cdiv(NUM_SLICES, SLICES) * B * H_KV * heads_per_tile
    for w in range(_loop_bound(tl.program_id(0)), _loop_bound(tiles), _loop_bound(tl.num_programs(0))):
        # the heads sharing one kv head are neighbours in w, so their K/V reads hit L2
        hg = w % heads_per_tile
        t = w // heads_per_tile
        hk = t % H_KV
        t = t // H_KV
        b = t % B
        tile = t // B

        # with DESC the tile's slices share a (INNER: consecutive a, c = 0); the host makes sure
        a, c, pos, row_ok = _tile_place(tile, slice_of_row, coord, N, L, C, NUM_SLICES, SLICES)
        b64 = b.to(tl.int64)

        k = _tile_load(k_ptr, b * H_KV + hk, b64 * stride_kb + hk.to(tl.int64) * stride_kh, a, c, pos,
                       stride_kn, offs_d, row_ok, ROWS, HEAD_DIM, DESC, INNER)
        if SHARE_KV and V_SHARED:
            v = _tile_load(v_ptr, b * H_KV + hk, b64 * stride_vb + hk.to(tl.int64) * stride_vh, a, c, pos,
                           stride_vn, offs_d, row_ok, ROWS, HEAD_DIM, DESC, INNER)
        # with SHARE_KV the group's heads in turn over the tile's K; else the one head hg
        for member in range(0, _loop_bound(GROUP if SHARE_KV else 1)):
            h = hk * GROUP + hg + member
            if not (SHARE_KV and V_SHARED):
                hv = h // V_GROUP
                v = _tile_load(v_ptr, b * value_heads + hv, b64 * stride_vb + hv.to(tl.int64) * stride_vh, a, c,
                               pos, stride_vn, offs_d, row_ok, ROWS, HEAD_DIM, DESC, INNER)
            h64 = h.to(tl.int64)
            _packed_head(q_ptr, o_ptr, lse_ptr + b64 * stride_lb + h64 * stride_lh, b * heads + h,
                         b64 * stride_qb + h64 * stride_qh, b64 * stride_ob + h64 * stride_oh, a, c, k, v,
                         stride_qn, stride_on, pos, offs_d, row_ok, allowed, qk_scale,
                         ROWS, BLOCK_L, HEAD_DIM, DOT_PRECISION, STORE_LSE, DESC, INNER)


@triton.jit
def _flash_blocks(
    acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn,
    base, C, valid, offs_m, lo, hi,
    qk_scale, k_at, v_at,
    HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DESC: tl.constexpr,
):
    """Online softmax over the key blocks [lo, hi); MASKED blocks straddle the diagonal or the end.
    With DESC, k_base and v_base are tensor descriptors and k_at / v_at the (plane, a, c) of the slice."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start in range(_loop_bound(lo), _loop_bound(hi), BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        pos_n = base + offs_n * C
        if DESC:
            key_ok = offs_n < valid
            k = k_base.load([k_at[0], k_at[1], start, k_at[2] * HEAD_DIM]).reshape(BLOCK_N, HEAD_DIM)
            v = v_base.load([v_at[0], v_at[1], start, v_at[2] * HEAD_DIM]).reshape(BLOCK_N, HEAD_DIM)
        else:
            key_ok = offs_n < valid
            k = _load_rows(k_base, pos_n, stride_kn, offs_d, key_ok, MASKED)
            v = _load_rows(v_base, pos_n, stride_vn, offs_d, key_ok, MASKED)
        s = _dot(q, tl.trans(k), None, DOT_PRECISION)
        if MASKED:
            ok = key_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(ok, s, float("-inf"))
        # statistics are kept in scaled log2 units; the scale (> 0) folds into one FMA per score.
        # Key 0 is allowed for every row and lies in the first block processed, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        m_i = m_new
        acc = _dot(_narrow(p, v.dtype), v, acc, DOT_PRECISION)
    return acc, m_i, l_i


@triton.jit
def _flash_hop_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    lse_ptr, stride_lb, stride_lh,
    B, H_KV, GROUP, V_GROUP, N, L, C, NUM_SLICES, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, DESC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    STORE_LSE: tl.constexpr = False,
):
    """One program per (slice, query block). With DESC, q/k/v/o are TMA tensor descriptors over
    the tensors viewed as (B * heads, A, L, C * D) (see `_hop_descriptors`): the copy engine does
    the strided addressing, which frees the registers pointer tiles would hold."""
    pid = tl.program_id(0)
    q_blocks = tl.cdiv(L, BLOCK_M)
    # neighbours in pid: heads of one kv group, then query blocks of one slice (heaviest causal
    # block first), so K/V blocks are shared through L2
    hg = pid % GROUP
    t = pid // GROUP
    qb = q_blocks - 1 - t % q_blocks
    t = t // q_blocks
    g = t % NUM_SLICES
    t = t // NUM_SLICES
    hk = (t % H_KV).to(tl.int64)
    b = (t // H_KV).to(tl.int64)
    h = hk * GROUP + hg

    base, valid = _slice_layout(g, N, L, C)
    q_start = qb * BLOCK_M
    if q_start < valid:
        offs_m = q_start + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < valid
        pos_m = base + offs_m * C
        a, c = _slice_coords(g, C)
        heads = H_KV * GROUP
        # descriptor coordinates are 32-bit; planes (batch x heads) fit
        q_at = ((b * heads + h).to(tl.int32), a, c)
        k_at = ((b * H_KV + hk).to(tl.int32), a, c)
        v_at = ((b * (heads // V_GROUP) + h // V_GROUP).to(tl.int32), a, c)
        if DESC:
            q = q_ptr.load([q_at[0], a, q_start, c * HEAD_DIM]).reshape(BLOCK_M, HEAD_DIM)
            k_base = k_ptr
            v_base = v_ptr
        else:
            q = tl.load(q_ptr + b * stride_qb + h * stride_qh + pos_m[:, None] * stride_qn + offs_d[None, :],
                        mask=row_ok[:, None], other=0.0)
            k_base = k_ptr + b * stride_kb + hk * stride_kh
            v_base = v_ptr + b * stride_vb + (h // V_GROUP) * stride_vh

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        hi = valid
        if CAUSAL:
            hi = tl.minimum(hi, q_start + BLOCK_M)
        # blocks wholly below the diagonal and inside the real prefix need no mask
        full = (valid // BLOCK_N) * BLOCK_N
        if CAUSAL:
            full = tl.minimum(full, (q_start // BLOCK_N) * BLOCK_N)
        acc, m_i, l_i = _flash_blocks(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn,
                                      base, C, valid, offs_m, 0, full, qk_scale, k_at, v_at,
                                      HEAD_DIM, BLOCK_N, CAUSAL, False, DOT_PRECISION, DESC)
        acc, m_i, l_i = _flash_blocks(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn,
                                      base, C, valid, offs_m, full, hi, qk_scale, k_at, v_at,
                                      HEAD_DIM, BLOCK_N, CAUSAL, True, DOT_PRECISION, DESC)
        out = acc / l_i[:, None]
        if DESC:
            o_ptr.store([q_at[0], a, q_start, c * HEAD_DIM],
                        _narrow(out, o_ptr.dtype).reshape(1, 1, BLOCK_M, HEAD_DIM))
        else:
            tl.store(o_ptr + b * stride_ob + h * stride_oh + pos_m[:, None] * stride_on + offs_d[None, :],
                     _narrow(out, o_ptr.dtype.element_ty), mask=row_ok[:, None])
        if STORE_LSE:
            tl.store(lse_ptr + b * stride_lb + h * stride_lh + pos_m, m_i + tl.log2(l_i), mask=row_ok)


# ---------------------------------------------------------------------------------------------
# Autotuning: keyed by the hop's shape (L, C, D, causal, TMA, dot precision; for packed hops what
# decides their boxes) and the problem's size
# ---------------------------------------------------------------------------------------------


def _dtype_bytes(named_args: dict) -> int:
    q = named_args["q_ptr"]
    return (q.base if isinstance(q, TensorDescriptor) else q).element_size()


def _packed_configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"ROWS": PACKED_MAX_LEN, "PROGRAMS_PER_SM": 4, "SHARE_KV": False}, num_warps=4,
                              num_stages=1, pre_hook=_packed_desc_blocks)]
    # the first that fits is the default when autotuning is off; (128, 8, 1, 2) is there for fp32.
    # (64, 4, 1, 4): with TMA a 64-row program needs about 125 registers and, unpipelined, 48 KB of
    # shared memory, so four share an SM. The shared-K variants run a kv group's query heads in
    # one program (K, and the first hop's value, loaded once per tile instead of once per head).
    # (32, 4, 3, 64): one slice of 32 a tile, a program per tile (the fastest on the last hop of
    # 128k m = 3 in the config sweep, docs/results-h200.md).
    shapes = ((64, 4, 2, 8), (64, 4, 3, 4), (128, 8, 2, 1), (128, 8, 1, 2), (64, 4, 1, 4), (32, 4, 3, 64))
    return [triton.Config({"ROWS": rows, "PROGRAMS_PER_SM": per_sm, "SHARE_KV": share}, num_warps=w, num_stages=st,
                          pre_hook=_packed_desc_blocks)
            for share in (False, True) for rows, w, st, per_sm in shapes]


def _packed_fits(cfg: triton.Config, block_l: int, elem: int) -> bool:
    rows = cfg.kwargs["ROWS"]
    if rows < block_l:
        return False
    if elem == 4:
        # fp32 tiles take twice the shared memory: 64 rows double-buffered, or 128 unpipelined
        return (rows <= 64 and cfg.num_stages <= 2) or cfg.num_stages == 1
    return True


# A TMA box holds at most 256 elements along each dimension.
_TMA_BOX_MAX = 256


def _packed_box_fits(rows: int, block_l: int, inner: int, head_dim: int) -> bool:
    """Whether a packed tile of `rows` can move as one TMA box: on the innermost axis (inner = 1)
    its slices are consecutive along A; on an outer axis they are consecutive along C, so the
    tile's slices must not straddle two values of a (inner divisible by the slices per tile) and
    the box's last dimension (slices x D) must hold at most 256 elements."""
    slices = rows // block_l
    return inner == 1 or (inner % slices == 0 and slices * head_dim <= _TMA_BOX_MAX)


def _packed_blocks(descs: Sequence[TensorDescriptor], rows: int, block_l: int, inner_axis: bool, head_dim: int) -> None:
    """Box shapes of the (q, k, v, out) descriptors of a packed launch (see `_packed_box_fits`)."""
    slices = rows // block_l
    shape = [1, slices, block_l, head_dim] if inner_axis else [1, 1, block_l, slices * head_dim]
    for desc in descs:
        desc.block_shape = list(shape)


def _packed_desc_blocks(nargs: dict) -> None:
    """Autotuner pre-hook: give the descriptors of a DESC packed launch the config's box shapes."""
    if nargs.get("DESC"):
        _packed_blocks([nargs[name] for name in ("q_ptr", "k_ptr", "v_ptr", "o_ptr")], nargs["ROWS"],
                       nargs["BLOCK_L"], nargs["INNER"], nargs["HEAD_DIM"])


def _prune_packed(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    block_l, elem = kwargs["BLOCK_L"], _dtype_bytes(named_args)
    kept = [cfg for cfg in configs if _packed_fits(cfg, block_l, elem)]
    if kwargs.get("DESC"):
        inner, head_dim = named_args["C"], kwargs["HEAD_DIM"]
        kept = [cfg for cfg in kept if _packed_box_fits(cfg.kwargs["ROWS"], block_l, inner, head_dim)]
    return kept or [triton.Config({"ROWS": PACKED_MAX_LEN, "PROGRAMS_PER_SM": 2, "SHARE_KV": False},
                                  num_warps=8, num_stages=1, pre_hook=_packed_desc_blocks)]


def _flash_configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=1, pre_hook=_desc_blocks)]
    # One warpgroup per program and small key blocks: at 168 registers and 64 KB of shared memory
    # three programs share an SM, so one's softmax overlaps another's matrix products.
    shapes = ((64, 32, 4, 3, 168), (64, 32, 4, 2, 168), (64, 64, 4, 3, None), (64, 32, 4, 3, None))
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s, maxnreg=r, pre_hook=_desc_blocks)
            for bm, bn, w, s, r in shapes]


def _shape_descriptors(descs: Sequence[TensorDescriptor], block_m: int, block_n: int, head_dim: int) -> None:
    """Block shapes of the (q, k, v, out) descriptors for a config's query and key blocks."""
    for desc, rows in zip(descs, (block_m, block_n, block_n, block_m), strict=True):
        desc.block_shape = [1, 1, rows, head_dim]


def _desc_blocks(nargs: dict) -> None:
    """Autotuner pre-hook: give the descriptors of a DESC launch the config's block shapes."""
    if nargs.get("DESC"):
        _shape_descriptors([nargs[name] for name in ("q_ptr", "k_ptr", "v_ptr", "o_ptr")],
                           nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["HEAD_DIM"])


def _hop_descriptors(tensors: Sequence[torch.Tensor], dims: tuple[int, ...], axis: int) -> list | None:
    """TMA descriptors over each (B, heads, N, D) tensor viewed as (B * heads, A, L, C * D), so that
    slice (a, c) of the hop is rows [a, :, c*D : (c+1)*D] of plane b * heads + h. Only when the
    dims fill N exactly (no padded slices: the planes would overlap) and every tensor is
    contiguous and 16-byte aligned; else None (pointer loads)."""
    n = tensors[0].shape[2]
    if math.prod(dims) != n:
        return None
    length, inner = dims[axis], math.prod(dims[axis + 1:])
    descs = []
    for t in tensors:
        batch, heads, _, d = t.shape
        if not t.is_contiguous() or t.data_ptr() % 16 or (d * t.element_size()) % 16:
            return None
        descs.append(TensorDescriptor(t, [batch * heads, n // (length * inner), length, inner * d],
                                      [n * d, length * inner * d, inner * d, 1], [1, 1, 16, d]))
    return descs


def _prune_flash(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    length = named_args["L"]
    elem = _dtype_bytes(named_args)
    kept = []
    for cfg in configs:
        bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
        if bm > max(64, triton.next_power_of_2(length)) or bn > bm:
            continue
        if elem == 4 and bm * bn > 64 * 64:
            continue  # fp32 operands take twice the shared memory
        kept.append(cfg)
    return kept or [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2, pre_hook=_desc_blocks)]


def _first_fits(kernel_call: Callable[[], None], quantiles: Sequence[float]) -> list[float]:
    """A stand-in timer for TBENCH_TRITON_AUTOTUNE=0: all equal, so the first pruned config wins."""
    return [0.0] * len(quantiles)


_TIMER = None if _AUTOTUNE else _first_fits

# Tuned per problem size (B, H_kv, GROUP, N) as well as per hop shape: a config that wins on a
# short sequence can lose by 1.7x on a long one (the first hop of 128k m = 3 ran 1.27 ms on the
# config tuned on a shorter sequence, against 0.75 ms on the one tuned at 128k). Triton keeps no
# tuning on disk for configs with a pre-hook, so each process tunes the shapes it runs.
_SIZE_KEY = ["B", "H_KV", "GROUP", "N"]

_packed_tuned = triton.autotune(
    configs=_packed_configs(),
    # C: which configs' boxes fit depends on it (`_packed_box_fits`); DOT_PRECISION stands for the
    # dtype, which Triton cannot read off a descriptor (fp32 tiles fit fewer configs)
    key=["L", "HEAD_DIM", "CAUSAL", "V_SHARED", "DESC", "INNER", "C", "DOT_PRECISION", *_SIZE_KEY],
    prune_configs_by={"early_config_prune": _prune_packed},
    do_bench=_TIMER,
)(_packed_hop_kernel)

_flash_tuned = triton.autotune(
    configs=_flash_configs(),
    key=["L", "C", "HEAD_DIM", "CAUSAL", "DESC", "DOT_PRECISION", *_SIZE_KEY],
    prune_configs_by={"early_config_prune": _prune_flash},
    do_bench=_TIMER,
)(_flash_hop_kernel)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------

_sm_count_cache: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 2  # interpreter: a couple of programs, each walking many tiles
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _sm_count_cache:
        _sm_count_cache[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _sm_count_cache[index]


def unsupported_reason(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: Sequence[int], causal: bool
) -> str | None:
    """One line saying why the kernel cannot run this configuration, or None if it can."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q, k, v must be 4-D (B, H, N, D)"
    batch, heads, n, d = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[2] != n or k.shape[3] != d:
        return f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (B, H_kv, N, D) matching q {tuple(q.shape)}"
    if heads % k.shape[1]:
        return f"query heads {heads} are not a multiple of kv heads {k.shape[1]}"
    if q.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(t).removeprefix("torch.") for t in SUPPORTED_DTYPES)
        return f"dtype {str(q.dtype).removeprefix('torch.')} unsupported; supported: {names}"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    if d not in SUPPORTED_HEAD_DIMS:
        return f"head dim {d} unsupported; supported: {', '.join(map(str, SUPPORTED_HEAD_DIMS))}"
    if not (q.device == k.device == v.device):
        return "q, k, v are on different devices"
    if q.device.type != "cuda" and not (_INTERPRET and q.device.type == "cpu"):
        return f"device {q.device} unsupported: needs CUDA (or CPU tensors with TRITON_INTERPRET=1)"
    dims = tuple(dims)
    if not dims or any(int(x) < 1 for x in dims):
        return f"dims {dims} must be one or more positive integers"
    if math.prod(dims) < n:
        return f"dims {dims} hold {math.prod(dims)} positions, fewer than N={n}"
    if n == 0 or batch == 0 or heads == 0:
        return "empty input"
    return None


def checked_arguments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: Sequence[int], causal: bool,
                      scale: float | None) -> tuple[tuple[int, ...], float]:
    """The dims as ints and the softmax scale (D^-1/2 unless given), or ValueError naming what the
    kernels cannot take (unsupported_reason) or a scale that is not positive."""
    reason = unsupported_reason(q, k, v, dims, causal)
    if reason is not None:
        raise ValueError(reason)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"softmax scale {scale} unsupported; it must be positive")
    return tuple(int(x) for x in dims), scale


def _row_major(x: torch.Tensor) -> torch.Tensor:
    # rows must be D contiguous elements; any batch/head/row strides are fine
    return x if x.stride(-1) == 1 else x.contiguous()


def _new_buffer(like: torch.Tensor) -> torch.Tensor:
    """The intermediate value tensor (a module-level hook so tests can hand in a poisoned one)."""
    return torch.empty_like(like, memory_format=torch.contiguous_format)


@dataclass(frozen=True)
class HopKey:
    """What a hop's tuned config is kept under: its kernel and slice shape, the dtype, whether its
    tiles move as TMA boxes, and the problem's size (configs are tuned per size: see `_SIZE_KEY`)."""

    packed: bool
    length: int  # L
    head_dim: int
    causal: bool
    dtype: torch.dtype
    device: str
    boxes: bool  # tiles move as TMA boxes
    value_on_kv_heads: bool  # packed: the value is v (a first hop under GQA)
    innermost: bool  # packed with boxes: the innermost axis (C = 1)
    stride: int  # C
    saves_lse: bool
    batch: int
    heads: int
    kv_heads: int
    n: int


# Config chosen per key; once known, hops launch the bare kernel with it and skip the
# autotuner's per-call argument handling, which is noticeable next to a 50 us hop.
_chosen: dict[HopKey, triton.Config] = {}
# Keys whose config this process took from the tuning record instead of tuning it.
_recorded: set[HopKey] = set()
# The tuning record of this file's kernels on each device type (None: none kept); read on first use.
_records: dict[str, TuningRecord | None] = {}


def _record_of(device: str) -> TuningRecord | None:
    """The tuning record (kernels/tuning_record.py) for the kernels and configs of this file on this
    GPU model. None with TBENCH_TRITON_AUTOTUNE=0, whose stand-in choices are neither kept nor
    replaced by kept ones."""
    if not _AUTOTUNE:
        return None
    if device not in _records:
        folder = record_folder(_INTERPRET)
        model = torch.cuda.get_device_name() if device == "cuda" else device
        digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
        _records[device] = None if folder is None else tuning_record(folder, model, triton.__version__, digest)
    return _records[device]


def _recorded_config(launch: HopLaunch) -> triton.Config | None:
    """The config an earlier process tuned for this launch's key, now also this process's choice."""
    record = _record_of(launch.key.device)
    index = None if record is None else record.get(f"config {launch.key!r}")
    configs = launch.tuner.configs
    if type(index) is not int or not 0 <= index < len(configs):
        return None
    _chosen[launch.key] = configs[index]
    _recorded.add(launch.key)
    return configs[index]


def _keep_config(launch: HopLaunch) -> None:
    """Writes the config just tuned for this launch's key to the record (by its place in the list;
    a fallback config from outside the list is not kept)."""
    record = _record_of(launch.key.device)
    best = launch.tuner.best_config
    index = next((i for i, cfg in enumerate(launch.tuner.configs) if cfg is best), None)
    if record is not None and index is not None:
        record.put(f"config {launch.key!r}", index)


@dataclass
class HopLaunch:
    """One hop's kernel launch with everything but its config: the kernel (packed or flash), its
    arguments (TMA descriptors in place of q, k, value and out where they serve), its constexprs,
    its grid as a function of the config, and the key its tuned config is kept under."""

    args: tuple
    constexprs: dict[str, object]
    grid: Callable[[dict], tuple[int]]
    key: HopKey
    descs: list[TensorDescriptor] | None

    @property
    def packed(self) -> bool:
        return self.key.packed

    @property
    def kernel(self) -> triton.runtime.JITFunction:
        return _packed_hop_kernel if self.packed else _flash_hop_kernel

    @property
    def tuner(self) -> triton.runtime.Autotuner:
        return _packed_tuned if self.packed else _flash_tuned

    def bind(self, config: triton.Config) -> dict[str, object]:
        """The launch's keyword arguments under `config`, its descriptors given the config's boxes."""
        c = self.constexprs
        if self.descs is not None and self.packed:
            _packed_blocks(self.descs, config.kwargs["ROWS"], c["BLOCK_L"], c["INNER"], c["HEAD_DIM"])
        elif self.descs is not None:
            _shape_descriptors(self.descs, config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], c["HEAD_DIM"])
        return {**c, **config.all_kwargs()}


def _packed_grid(meta: dict, num_slices: int, block_l: int, batch: int, heads: int, kv_heads: int,
                 programs: int) -> tuple[int]:
    per_tile = kv_heads if meta.get("SHARE_KV") else heads
    tiles = triton.cdiv(num_slices, meta["ROWS"] // block_l) * batch * per_tile
    return (min(tiles, programs * meta["PROGRAMS_PER_SM"]),)


def _flash_grid(meta: dict, num_slices: int, length: int, batch: int, heads: int) -> tuple[int]:
    return (batch * heads * num_slices * triton.cdiv(length, meta["BLOCK_M"]),)


def plan_hop(
    q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, out: torch.Tensor,
    dims: tuple[int, ...], axis: int, causal: bool, scale: float, config: triton.Config | None = None,
    lse: torch.Tensor | None = None, tma: bool = True,
) -> HopLaunch:
    """The launch of one hop (see `_launch_hop`). Packed tiles move as TMA boxes only if `config`
    (or, without one, some config of the autotune list) fits them in one box."""
    batch, heads, n, d = q.shape
    kv_heads = k.shape[1]
    length = dims[axis]
    inner = math.prod(dims[axis + 1:])
    num_slices = math.prod(dims) // length
    args = (
        q, k, value, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        value.stride(0), value.stride(1), value.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        out if lse is None else lse, 0 if lse is None else lse.stride(0), 0 if lse is None else lse.stride(1),
        batch, kv_heads, heads // kv_heads, heads // value.shape[1], n, length, inner, num_slices,
        scale * _LOG2E,
    )
    precision = "ieee" if q.dtype == torch.float32 else None
    packed = length <= PACKED_MAX_LEN
    block_l = max(16, triton.next_power_of_2(length))
    descs = _hop_descriptors((q, k, value, out), dims, axis) if tma else None
    if packed:
        if descs is not None:
            candidates = [config] if config is not None else _packed_configs()
            if not any(_packed_fits(cfg, block_l, q.element_size())
                       and _packed_box_fits(cfg.kwargs["ROWS"], block_l, inner, d) for cfg in candidates):
                descs = None  # no tile of this hop fits one box: pointer loads
        consts = {"HEAD_DIM": d, "BLOCK_L": block_l, "CAUSAL": causal, "DOT_PRECISION": precision,
                  "STORE_LSE": lse is not None, "V_SHARED": value.shape[1] == kv_heads,
                  "DESC": descs is not None, "INNER": descs is not None and inner == 1}
        grid = functools.partial(_packed_grid, num_slices=num_slices, block_l=block_l, batch=batch, heads=heads,
                                 kv_heads=kv_heads, programs=_sm_count(q.device))
    else:
        consts = {"HEAD_DIM": d, "CAUSAL": causal, "DOT_PRECISION": precision, "DESC": descs is not None,
                  "STORE_LSE": lse is not None}
        grid = functools.partial(_flash_grid, num_slices=num_slices, length=length, batch=batch, heads=heads)
    if descs is not None:
        args = (*descs, *args[4:])
    key = _hop_key(q, k, value, dims, axis, causal, lse, boxes=descs is not None,
                   innermost=bool(consts.get("INNER", False)))
    return HopLaunch(args, consts, grid, key, descs)


def _hop_key(q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, dims: tuple[int, ...], axis: int, causal: bool,
             lse: torch.Tensor | None, boxes: bool = False, innermost: bool = False) -> HopKey:
    """The key of a hop's launch; with boxes and innermost off, that of its pointer launch, which
    stands for the hop's shape whatever its loads."""
    batch, heads, n, d = q.shape
    length = dims[axis]
    packed = length <= PACKED_MAX_LEN
    return HopKey(packed, length, d, causal, q.dtype, q.device.type, boxes,
                  packed and value.shape[1] == k.shape[1], innermost, math.prod(dims[axis + 1:]),
                  lse is not None, batch, heads, k.shape[1], n)


def _launch_hop(
    q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, out: torch.Tensor,
    dims: tuple[int, ...], axis: int, causal: bool, scale: float, config: triton.Config | None = None,
    lse: torch.Tensor | None = None, tma: bool = True,
) -> None:
    """One hop; `config` bypasses the autotuner (for sweeps), else the tuned config is used.
    `lse`, a contiguous (B, H, N) float32 tensor if given, receives each row's log-sum-exp of its
    scaled scores in log2 units (the training forward saves it for the backward). `tma=False`
    loads through pointers even where TMA descriptors could serve (benchmarks compare the two).
    Without `config`, a hop that can take boxes runs them or pointer loads, whichever `_LOADS_TIMER`
    finds faster once both are tuned (boxes win on long sequences, pointers on short ones)."""
    choosing = config is None and tma and _LOADS_TIMER is not None
    if choosing:
        shape = _hop_key(q, k, value, dims, axis, causal, lse)
        boxes_won = _boxes_win.get(shape)
        if boxes_won is None:
            boxes_won = _recorded_verdict(shape)
        # a known verdict plans one launch: no descriptors where pointers won, no pointer plan where boxes did
        tma = boxes_won is not False
        choosing = boxes_won is None
    launch = plan_hop(q, k, value, out, dims, axis, causal, scale, config, lse, tma)
    if choosing and launch.descs is not None:
        launch = _faster_loads(launch, plan_hop(q, k, value, out, dims, axis, causal, scale, None, lse, tma=False))
    _run(launch, config)


def _run(launch: HopLaunch, config: triton.Config | None = None) -> None:
    """The launch under `config`, else under its tuned config (tuning it on first use)."""
    if config is None:
        config = _chosen.get(launch.key)
        if config is None:
            config = _recorded_config(launch)
        if config is None:
            launch.tuner[launch.grid](*launch.args, **launch.constexprs)
            _chosen[launch.key] = launch.tuner.best_config
            _keep_config(launch)
            return
    launch.kernel[launch.grid](*launch.args, **launch.bind(config))


def _median_launch_ms(fn: Callable[[], None]) -> float:
    """A tuned launch's median time (its first call, which tunes it, not timed)."""
    fn()
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


# Times a hop's boxed and pointer launches to choose between them; None keeps the boxes (the
# interpreter, and TBENCH_TRITON_AUTOTUNE=0, whose stand-in choice must not depend on timing).
_LOADS_TIMER: Callable[[Callable[[], None]], float] | None = (
    _median_launch_ms if _AUTOTUNE and not _INTERPRET else None)

# Per hop shape (`_shape_of` its key): whether the boxes measured faster than pointer loads.
_boxes_win: dict[HopKey, bool] = {}


def _shape_of(key: HopKey) -> HopKey:
    """The key of a hop's pointer launch, which stands for the hop's shape whatever its loads."""
    return replace(key, boxes=False, innermost=False)


def _faster_loads(boxed: HopLaunch, pointers: HopLaunch) -> HopLaunch:
    """Of one hop's two launches, each under its tuned config, the one `_LOADS_TIMER` finds faster
    (ties keep the boxes), on the first call of the shape; the verdict is kept for later calls."""
    boxed_ms = _LOADS_TIMER(functools.partial(_run, boxed))
    pointers_ms = _LOADS_TIMER(functools.partial(_run, pointers))
    shape = _shape_of(boxed.key)
    wins = _boxes_win[shape] = boxed_ms <= pointers_ms
    record = _record_of(shape.device)
    if record is not None:
        record.put(f"boxes {shape!r}", wins)
    return boxed if wins else pointers


def _recorded_verdict(shape: HopKey) -> bool | None:
    """Whether boxes beat pointer loads on this hop shape, as an earlier process measured it."""
    record = _record_of(shape.device)
    verdict = None if record is None else record.get(f"boxes {shape!r}")
    if type(verdict) is not bool:
        return None
    _boxes_win[shape] = verdict
    return verdict


def tensorized_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dims: Sequence[int],
    causal: bool,
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tensorized attention over the folding `dims` (prod >= N); returns (B, H, N, D) in q's dtype.

    `out`, if given, must be a distinct (B, H, N, D) tensor of q's dtype and device; it receives
    the result. Raises ValueError (see unsupported_reason) for configurations the kernel lacks.
    """
    dims, scale = checked_arguments(q, k, v, dims, causal, scale)
    q, k, v = _row_major(q), _row_major(k), _row_major(v)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device or out.stride(-1) != 1:
        raise ValueError(f"out must be a {tuple(q.shape)} {q.dtype} tensor on {q.device} with contiguous rows")
    hops = hop_axes(len(dims))
    scratch = _new_buffer(out) if len(hops) > 1 else None
    value = v
    for t, axis in enumerate(hops):
        # ping-pong so that the last hop writes `out`; a hop never reads the buffer it writes
        target = out if (len(hops) - 1 - t) % 2 == 0 else scratch
        _launch_hop(q, k, value, target, dims, axis, causal, scale)
        value = target
    return out


def tuned_configs() -> list[tuple[str, HopKey, str]]:
    """(kernel, key, chosen config) for every key tuned in this process whose launch ran: a shape
    that measured faster through pointer loads than with boxes names only its pointer launch.
    Kernels: 'flash' or 'packed', with '-tma' where tiles move through descriptors, and ' (value
    with kv heads)' for a packed hop whose value is v (a first hop under GQA), which is tuned apart
    from later hops of the same slice length. A config read from the tuning record says so."""
    def kernel(key: HopKey) -> str:
        name = ("packed" if key.packed else "flash") + ("-tma" if key.boxes else "")
        return f"{name} (value with kv heads)" if key.packed and key.value_on_kv_heads else name

    def ran(key: HopKey) -> bool:
        wins = _boxes_win.get(_shape_of(key))
        return wins is None or wins == key.boxes

    def text(key: HopKey, cfg: triton.Config) -> str:
        return _config_text(cfg) + (" (tuning record)" if key in _recorded else "")

    return [(kernel(key), key, text(key, cfg)) for key, cfg in _chosen.items() if ran(key)]


def _config_text(cfg: triton.Config) -> str:
    """A config in one short line, e.g. 'BLOCK_M=64 BLOCK_N=32 warps=4 stages=3 maxnreg=168'."""
    parts = [f"{name}={value}" for name, value in cfg.kwargs.items()]
    parts += [f"warps={cfg.num_warps}", f"stages={cfg.num_stages}"]
    if getattr(cfg, "maxnreg", None):
        parts.append(f"maxnreg={cfg.maxnreg}")
    return " ".join(parts)
