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
(batch, head, slice, query block) computes dQ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..core.folding import hop_axes
from .tensorized_triton import (
    _INTERPRET,
    _LOG2E,
    _dot,
    _launch_hop,
    _loop_bound,
    _narrow,
    _slice_layout,
)

# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_lb, stride_lh,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    B, H_KV, GROUP, V_GROUP, N, L, C, NUM_SLICES, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr, SUM_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK (added to the float32 accumulator) and dV of one key block of one slice for one kv head.
    With SUM_DV the value has one head per kv head (first hop), and dV sums over the group's query
    heads; otherwise the value has one head per query head and each gets its own dV rows."""
    pid = tl.program_id(0)
    k_blocks = tl.cdiv(L, BLOCK_N)
    kb = pid % k_blocks
    t = pid // k_blocks
    g = t % NUM_SLICES
    t = t // NUM_SLICES
    hk = (t % H_KV).to(tl.int64)
    b = (t // H_KV).to(tl.int64)

    base, valid = _slice_layout(g, N, L, C)
    k_start = kb * BLOCK_N
    if k_start < valid:
        offs_d = tl.arange(0, HEAD_DIM)
        offs_n = k_start + tl.arange(0, BLOCK_N)
        key_ok = offs_n < valid
        pos_n = base + offs_n * C
        k = tl.load(k_ptr + b * stride_kb + hk * stride_kh + pos_n[:, None] * stride_kn + offs_d[None, :],
                    mask=key_ok[:, None], other=0.0)
        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        # causal: only query coordinates >= the block's first key coordinate see it
        lo = 0
        if CAUSAL:
            lo = (k_start // BLOCK_M) * BLOCK_M
        for hg in range(0, _loop_bound(GROUP)):
            h = hk * GROUP + hg
            v = tl.load(v_ptr + b * stride_vb + (h // V_GROUP) * stride_vh + pos_n[:, None] * stride_vn
                        + offs_d[None, :], mask=key_ok[:, None], other=0.0)
            q_base = q_ptr + b * stride_qb + h * stride_qh
            do_base = do_ptr + b * stride_dob + h * stride_doh
            row_base = b * stride_lb + h * stride_lh
            for start in range(_loop_bound(lo), _loop_bound(valid), BLOCK_M):
                offs_m = start + tl.arange(0, BLOCK_M)
                row_ok = offs_m < valid
                pos_m = base + offs_m * C
                q = tl.load(q_base + pos_m[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None], other=0.0)
                do = tl.load(do_base + pos_m[:, None] * stride_don + offs_d[None, :], mask=row_ok[:, None],
                             other=0.0)
                lse = tl.load(lse_ptr + row_base + pos_m, mask=row_ok, other=0.0)
                delta = tl.load(delta_ptr + row_base + pos_m, mask=row_ok, other=0.0)
                # transposed tiles (keys x queries), so that dK and dV come out row-major
                s_t = _dot(k, tl.trans(q), None, DOT_PRECISION)
                ok = key_ok[:, None] & row_ok[None, :]
                if CAUSAL:
                    ok = ok & (offs_n[:, None] <= offs_m[None, :])
                p_t = tl.where(ok, tl.exp2(s_t * qk_scale - lse[None, :]), 0.0)
                dv = _dot(_narrow(p_t, do.dtype), do, dv, DOT_PRECISION)
                dp_t = _dot(v, tl.trans(do), None, DOT_PRECISION)
                ds_t = p_t * (dp_t - delta[None, :])
                dk = _dot(_narrow(ds_t, q.dtype), q, dk, DOT_PRECISION)
            if not SUM_DV:
                tl.store(dv_ptr + b * stride_dvb + h * stride_dvh + pos_n[:, None] * stride_dvn + offs_d[None, :],
                         _narrow(dv, dv_ptr.dtype.element_ty), mask=key_ok[:, None])
                dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        if SUM_DV:
            tl.store(dv_ptr + b * stride_dvb + hk * stride_dvh + pos_n[:, None] * stride_dvn + offs_d[None, :],
                     _narrow(dv, dv_ptr.dtype.element_ty), mask=key_ok[:, None])
        dk_at = dk_ptr + b * stride_dkb + hk * stride_dkh + pos_n[:, None] * stride_dkn + offs_d[None, :]
        # each program owns its rows of the accumulator: a plain read-add-write, no atomics
        acc = tl.load(dk_at, mask=key_ok[:, None], other=0.0)
        tl.store(dk_at, acc + dk * sm_scale, mask=key_ok[:, None])


@triton.jit
def _dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_lb, stride_lh,
    stride_dqb, stride_dqh, stride_dqn,
    B, H_KV, GROUP, V_GROUP, N, L, C, NUM_SLICES, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ of one query block of one slice for one query head, added to the float32 accumulator."""
    pid = tl.program_id(0)
    q_blocks = tl.cdiv(L, BLOCK_M)
    qb = pid % q_blocks
    t = pid // q_blocks
    g = t % NUM_SLICES
    t = t // NUM_SLICES
    h = (t % (H_KV * GROUP)).to(tl.int64)
    b = (t // (H_KV * GROUP)).to(tl.int64)
    hk = h // GROUP

    base, valid = _slice_layout(g, N, L, C)
    q_start = qb * BLOCK_M
    if q_start < valid:
        offs_d = tl.arange(0, HEAD_DIM)
        offs_m = q_start + tl.arange(0, BLOCK_M)
        row_ok = offs_m < valid
        pos_m = base + offs_m * C
        q = tl.load(q_ptr + b * stride_qb + h * stride_qh + pos_m[:, None] * stride_qn + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(do_ptr + b * stride_dob + h * stride_doh + pos_m[:, None] * stride_don + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + pos_m, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + b * stride_lb + h * stride_lh + pos_m, mask=row_ok, other=0.0)
        k_base = k_ptr + b * stride_kb + hk * stride_kh
        v_base = v_ptr + b * stride_vb + (h // V_GROUP) * stride_vh
        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        hi = valid
        if CAUSAL:
            hi = tl.minimum(hi, q_start + BLOCK_M)
        for start in range(0, _loop_bound(hi), BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            key_ok = offs_n < valid
            pos_n = base + offs_n * C
            k = tl.load(k_base + pos_n[:, None] * stride_kn + offs_d[None, :], mask=key_ok[:, None], other=0.0)
            v = tl.load(v_base + pos_n[:, None] * stride_vn + offs_d[None, :], mask=key_ok[:, None], other=0.0)
            s = _dot(q, tl.trans(k), None, DOT_PRECISION)
            ok = row_ok[:, None] & key_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_n[None, :] <= offs_m[:, None])
            p = tl.where(ok, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
            dp = _dot(do, tl.trans(v), None, DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq = _dot(_narrow(ds, k.dtype), k, dq, DOT_PRECISION)
        dq_at = dq_ptr + b * stride_dqb + h * stride_dqh + pos_m[:, None] * stride_dqn + offs_d[None, :]
        acc = tl.load(dq_at, mask=row_ok[:, None], other=0.0)
        tl.store(dq_at, acc + dq * sm_scale, mask=row_ok[:, None])


@triton.jit
def _packed_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don,
    stride_lb, stride_lh,
    stride_dqb, stride_dqh, stride_dqn,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    B, H_KV, GROUP, V_GROUP, N, L, C, NUM_SLICES, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr, CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
    SUM_DV: tl.constexpr, ROWS: tl.constexpr,
):
    """Short slices: one tile holds ROWS // BLOCK_L whole slices (BLOCK_L >= L coordinates each),
    so one program computes dQ, dK and dV of its slices for one kv head and the group's query heads,
    with no second kernel and no atomics. Scores between different slices of a tile are masked."""
    SLICES: tl.constexpr = ROWS // BLOCK_L
    rows = tl.arange(0, ROWS)
    slice_of_row = rows // BLOCK_L
    coord = rows % BLOCK_L
    offs_d = tl.arange(0, HEAD_DIM)
    allowed = slice_of_row[:, None] == slice_of_row[None, :]
    if CAUSAL:
        allowed = allowed & (coord[None, :] <= coord[:, None])

    pid = tl.program_id(0)
    hk = (pid % H_KV).to(tl.int64)
    t = pid // H_KV
    b = (t % B).to(tl.int64)
    tile = t // B
    base, valid = _slice_layout(tile * SLICES + slice_of_row, N, L, C)
    valid = tl.where(tile * SLICES + slice_of_row < NUM_SLICES, valid, 0)
    row_ok = coord < valid
    pos = base + coord * C
    ok = allowed & row_ok[:, None] & row_ok[None, :]

    k = tl.load(k_ptr + b * stride_kb + hk * stride_kh + pos[:, None] * stride_kn + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    dk = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    dv = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    for hg in range(0, _loop_bound(GROUP)):
        h = hk * GROUP + hg
        q = tl.load(q_ptr + b * stride_qb + h * stride_qh + pos[:, None] * stride_qn + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(do_ptr + b * stride_dob + h * stride_doh + pos[:, None] * stride_don + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        v = tl.load(v_ptr + b * stride_vb + (h // V_GROUP) * stride_vh + pos[:, None] * stride_vn
                    + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        lse = tl.load(lse_ptr + b * stride_lb + h * stride_lh + pos, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + b * stride_lb + h * stride_lh + pos, mask=row_ok, other=0.0)
        s = _dot(q, tl.trans(k), None, DOT_PRECISION)
        p = tl.where(ok, tl.exp2(s * qk_scale - lse[:, None]), 0.0)
        dp = _dot(do, tl.trans(v), None, DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq_at = dq_ptr + b * stride_dqb + h * stride_dqh + pos[:, None] * stride_dqn + offs_d[None, :]
        dq = _dot(_narrow(ds, k.dtype), k, None, DOT_PRECISION)
        tl.store(dq_at, tl.load(dq_at, mask=row_ok[:, None], other=0.0) + dq * sm_scale, mask=row_ok[:, None])
        dk = _dot(_narrow(tl.trans(ds), q.dtype), q, dk, DOT_PRECISION)
        dv = _dot(_narrow(tl.trans(p), do.dtype), do, dv, DOT_PRECISION)
        if not SUM_DV:
            tl.store(dv_ptr + b * stride_dvb + h * stride_dvh + pos[:, None] * stride_dvn + offs_d[None, :],
                     _narrow(dv, dv_ptr.dtype.element_ty), mask=row_ok[:, None])
            dv = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    if SUM_DV:
        tl.store(dv_ptr + b * stride_dvb + hk * stride_dvh + pos[:, None] * stride_dvn + offs_d[None, :],
                 _narrow(dv, dv_ptr.dtype.element_ty), mask=row_ok[:, None])
    dk_at = dk_ptr + b * stride_dkb + hk * stride_dkh + pos[:, None] * stride_dkn + offs_d[None, :]
    tl.store(dk_at, tl.load(dk_at, mask=row_ok[:, None], other=0.0) + dk * sm_scale, mask=row_ok[:, None])


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackwardBlocks:
    """Tile shape of the backward kernels: query rows and key rows per tile, and warps."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 1


# Longest slice the packed kernel takes; its tiles hold whole slices (a module-level value so that
# tests can send every hop through the blocked kernels).
PACKED_MAX_LEN = 64


def default_blocks(length: int, dtype: torch.dtype) -> BackwardBlocks:
    """Tiles no longer than the slice (>= 16, the smallest dot) and at most 64 rows; fp32 operands
    take twice the shared memory, hence 32 rows. Untuned: the GPU sweep replaces this table."""
    cap = 32 if dtype == torch.float32 or _INTERPRET else 64
    block = min(cap, max(16, triton.next_power_of_2(length)))
    return BackwardBlocks(block, block, num_warps=4, num_stages=1 if _INTERPRET else 2)


def packed_rows(length: int, dtype: torch.dtype) -> int:
    """Rows per tile of the packed kernel: whole slices of next_power_of_2(length) >= 16 rows.
    The interpreter takes big tiles (fewer programs run faster there); untuned for the GPU."""
    block_l = max(16, triton.next_power_of_2(length))
    return max(block_l, 128 if _INTERPRET else (32 if dtype == torch.float32 else 64))


def _new_gradient_buffer(like: torch.Tensor) -> torch.Tensor:
    """The gradient of an intermediate value (a module-level hook so tests can hand in a poisoned one)."""
    return torch.empty_like(like, memory_format=torch.contiguous_format)


def _row_major(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _launch_hop_backward(
    q: torch.Tensor, k: torch.Tensor, value: torch.Tensor, out: torch.Tensor, d_out: torch.Tensor,
    lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, d_value: torch.Tensor,
    dims: tuple[int, ...], axis: int, causal: bool, scale: float, blocks: BackwardBlocks | None = None,
) -> None:
    """The backward of one hop: adds its share to dq and dk (float32) and writes d_value. Slices of
    at most PACKED_MAX_LEN go through the packed kernel unless `blocks` asks for the blocked ones."""
    batch, heads, n, d = q.shape
    kv_heads = k.shape[1]
    value_heads = value.shape[1]
    length = dims[axis]
    inner = math.prod(dims[axis + 1:])
    num_slices = math.prod(dims) // length
    # Delta_i = rowsum(dO_i * O_i) = sum_j P_ij dP_ij, the softmax backward's row term
    delta = (d_out.float() * out.float()).sum(-1)
    common = (
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        value.stride(0), value.stride(1), value.stride(2),
        d_out.stride(0), d_out.stride(1), d_out.stride(2),
        lse.stride(0), lse.stride(1),
    )
    sizes = (batch, kv_heads, heads // kv_heads, heads // value_heads, n, length, inner, num_slices,
             scale * _LOG2E, scale)
    precision = "ieee" if q.dtype == torch.float32 else None
    if length <= PACKED_MAX_LEN and blocks is None:
        block_l = max(16, triton.next_power_of_2(length))
        rows = packed_rows(length, q.dtype)
        grid = (triton.cdiv(num_slices, rows // block_l) * batch * kv_heads,)
        _packed_kernel[grid](
            q, k, value, d_out, lse, delta, dq, dk, d_value, *common,
            dq.stride(0), dq.stride(1), dq.stride(2),
            dk.stride(0), dk.stride(1), dk.stride(2),
            d_value.stride(0), d_value.stride(1), d_value.stride(2),
            *sizes, HEAD_DIM=d, BLOCK_L=block_l, CAUSAL=causal, DOT_PRECISION=precision,
            SUM_DV=value_heads != heads, ROWS=rows, num_warps=4 if rows <= 64 else 8, num_stages=1,
        )
        return
    blocks = blocks or default_blocks(length, q.dtype)
    consts = {"HEAD_DIM": d, "CAUSAL": causal, "DOT_PRECISION": precision,
              "BLOCK_M": blocks.block_m, "BLOCK_N": blocks.block_n,
              "num_warps": blocks.num_warps, "num_stages": blocks.num_stages}
    grid_kv = (batch * kv_heads * num_slices * triton.cdiv(length, blocks.block_n),)
    _dkdv_kernel[grid_kv](
        q, k, value, d_out, lse, delta, dk, d_value, *common,
        dk.stride(0), dk.stride(1), dk.stride(2),
        d_value.stride(0), d_value.stride(1), d_value.stride(2),
        *sizes, SUM_DV=value_heads != heads, **consts,
    )
    grid_q = (batch * heads * num_slices * triton.cdiv(length, blocks.block_m),)
    _dq_kernel[grid_q](
        q, k, value, d_out, lse, delta, dq, *common,
        dq.stride(0), dq.stride(1), dq.stride(2),
        *sizes, **consts,
    )


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
    dims: tuple[int, ...], causal: bool, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) in the inputs' dtypes, from the gradient of the output and the saved forward."""
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    d_value = _row_major(d_out.to(q.dtype))
    hops = hop_axes(len(dims))
    for t in reversed(range(len(hops))):
        value = v if t == 0 else saved.outputs[t - 1]
        d_prev = _new_gradient_buffer(value)
        _launch_hop_backward(q, k, value, saved.outputs[t], d_value, saved.lses[t], dq, dk, d_prev,
                             dims, hops[t], causal, scale)
        d_value = d_prev
    return dq.to(q.dtype), dk.to(k.dtype), d_value
