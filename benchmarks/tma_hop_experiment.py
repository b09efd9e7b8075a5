"""Experiment: the flash hop with host-made TMA descriptors (one per tensor per launch) against
the kernel's pointer loads. Needs P == N and contiguous (B, H, N, D) tensors.

    python3 benchmarks/tma_hop_experiment.py
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
import triton.testing
from triton.tools.tensor_descriptor import TensorDescriptor

from tbench.kernels import tensorized_triton as tt
from tbench.kernels.folding import auto_dims, format_dims, hop_axes

B, H, H_KV, D = 1, 32, 8, 128


@triton.jit
def _blocks(acc, m_i, l_i, q, k_desc, v_desc, kplane, vplane, a, c, offs_m, lo, hi, qk_scale,
            HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    for start in range(tt._loop_bound(lo), tt._loop_bound(hi), BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = k_desc.load([kplane, a, start, c * HEAD_DIM]).reshape(BLOCK_N, HEAD_DIM)
        v = v_desc.load([vplane, a, start, c * HEAD_DIM]).reshape(BLOCK_N, HEAD_DIM)
        s = tl.dot(q, tl.trans(k))
        if MASKED:
            s = tl.where(offs_n[None, :] <= offs_m[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        m_i = m_new
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_i, l_i


@triton.jit
def _hop_tma(q_desc, k_desc, v_desc, o_desc, H, H_KV, GROUP, V_GROUP, HV, L, C, NUM_SLICES, qk_scale,
             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Causal only, every slice full (P == N)."""
    pid = tl.program_id(0)
    q_blocks = tl.cdiv(L, BLOCK_M)
    hg = pid % GROUP
    t = pid // GROUP
    qb = q_blocks - 1 - t % q_blocks
    t = t // q_blocks
    g = t % NUM_SLICES
    t = t // NUM_SLICES
    hk = t % H_KV
    b = t // H_KV
    h = hk * GROUP + hg
    a = g // C
    c = g - a * C
    q_start = qb * BLOCK_M
    offs_m = q_start + tl.arange(0, BLOCK_M)
    q = q_desc.load([b * H + h, a, q_start, c * HEAD_DIM]).reshape(BLOCK_M, HEAD_DIM)
    kplane = b * H_KV + hk
    vplane = b * HV + h // V_GROUP
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    full = (q_start // BLOCK_N) * BLOCK_N
    acc, m_i, l_i = _blocks(acc, m_i, l_i, q, k_desc, v_desc, kplane, vplane, a, c, offs_m, 0, full, qk_scale,
                            HEAD_DIM, BLOCK_N, False)
    acc, m_i, l_i = _blocks(acc, m_i, l_i, q, k_desc, v_desc, kplane, vplane, a, c, offs_m, full,
                            q_start + BLOCK_M, qk_scale, HEAD_DIM, BLOCK_N, True)
    out = (acc / l_i[:, None]).to(o_desc.dtype)
    o_desc.store([b * H + h, a, q_start, c * HEAD_DIM], out.reshape(1, 1, BLOCK_M, HEAD_DIM))


def _desc(x: torch.Tensor, dims: tuple[int, ...], axis: int, rows: int) -> TensorDescriptor:
    batch, heads, n, d = x.shape
    length, inner = dims[axis], math.prod(dims[axis + 1:])
    outer = n // (length * inner)
    return TensorDescriptor(x, [batch * heads, outer, length, inner * d], [n * d, length * inner * d, inner * d, 1],
                            [1, 1, rows, d])


def hop_tma(q, k, v, out, dims, axis, bm, bn, warps, stages, maxnreg):
    batch, heads, n, d = q.shape
    length, inner = dims[axis], math.prod(dims[axis + 1:])
    slices = n // length
    grid = (batch * heads * slices * triton.cdiv(length, bm),)
    _hop_tma[grid](_desc(q, dims, axis, bm), _desc(k, dims, axis, bn), _desc(v, dims, axis, bn),
                   _desc(out, dims, axis, bm), heads, k.shape[1], heads // k.shape[1], heads // v.shape[1],
                   v.shape[1], length, inner, slices, d**-0.5 * 1.4426950408889634,
                   HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, maxnreg=maxnreg)


def main() -> None:
    torch.manual_seed(0)
    print("| N | dims | axis | L | variant | ms | max abs diff |")
    print("|---|---|---|---|---|---:|---:|")
    for n in (32768, 65536, 131072):
        q = torch.randn(B, H, n, D, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, H_KV, n, D, device="cuda", dtype=torch.bfloat16)
        for v_heads in (H_KV, H):
            v = torch.randn(B, v_heads, n, D, device="cuda", dtype=torch.bfloat16)
            dims = auto_dims(n, 2)
            for axis in hop_axes(2):
                if dims[axis] <= tt.PACKED_MAX_LEN:
                    continue
                ref = torch.empty_like(q)
                cfg = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3, maxnreg=168)
                call = functools.partial(tt._launch_hop, q, k, v, ref, dims, axis, True, D**-0.5, config=cfg)
                call()
                ms = triton.testing.do_bench(call, rep=300, return_mode="median")
                print(f"| {n} | {format_dims(dims)} | {axis} | {dims[axis]} | ptr, V {v_heads} heads | {ms:.3f} | |")
                for bm, bn, w, st, r in ((64, 32, 4, 3, 168), (64, 64, 4, 3, None), (64, 32, 4, 2, 168),
                                         (64, 64, 4, 2, None), (128, 64, 8, 2, None)):
                    out = torch.empty_like(q)
                    call = functools.partial(hop_tma, q, k, v, out, dims, axis, bm, bn, w, st, r)
                    try:
                        call()
                        diff = (out.float() - ref.float()).abs().max().item()
                        ms = triton.testing.do_bench(call, rep=300, return_mode="median")
                        print(f"| {n} | {format_dims(dims)} | {axis} | {dims[axis]} | TMA {bm}x{bn} w{w} s{st} r{r} "
                              f"| {ms:.3f} | {diff:.1e} |", flush=True)
                    except Exception as exc:
                        print(f"| {n} | {format_dims(dims)} | {axis} | {dims[axis]} | TMA {bm}x{bn} w{w} s{st} | "
                              f"failed: {str(exc).splitlines()[0][:80]} | |", flush=True)


if __name__ == "__main__":
    main()
