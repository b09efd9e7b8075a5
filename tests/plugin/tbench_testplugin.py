"""Test methods registered through the real `tbench.methods` entry point.

They are available only when TBENCH_TEST_PLUGIN=1, so an environment that has this plugin
installed does not measure them by default. TBENCH_TEST_SLOWDOWN_S adds a sleep to `test-slow`;
TBENCH_TEST_EXTRA_WORK=0.15 makes it do 15 % more attention work (the first 15 % of the query rows
again, non-causal); TBENCH_TEST_RAISE makes it raise a RuntimeError with that message, and
TBENCH_TEST_PID_FILE makes it append its process id to that file at each call. The `test-bug-*`
methods are subtly wrong, as real kernels can be.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F

from tbench.core.case import Case
from tbench.methods.registry import Availability, method


def _available(device: str) -> Availability:
    if os.environ.get("TBENCH_TEST_PLUGIN") != "1":
        return Availability(False, reason="test plugin: set TBENCH_TEST_PLUGIN=1")
    return Availability(True, provenance="tbench test plugin")


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, scale=case.softmax_scale,
                                          enable_gqa=case.kv_heads != case.heads)


@method(name="test-slow", family="exact", description="SDPA with an optional sleep", availability=_available)
def slow(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    if pid_file := os.environ.get("TBENCH_TEST_PID_FILE"):
        with open(pid_file, "a") as f:
            f.write(f"{os.getpid()}\n")
    if message := os.environ.get("TBENCH_TEST_RAISE"):
        raise RuntimeError(message)
    delay = float(os.environ.get("TBENCH_TEST_SLOWDOWN_S", "0"))
    if delay:
        time.sleep(delay)
    extra = float(os.environ.get("TBENCH_TEST_EXTRA_WORK", "0"))
    if extra:
        rows = max(1, round(extra * q.shape[2]))
        _sdpa(q[:, :, :rows].contiguous(), k, v, case)
    return _sdpa(q, k, v, case)


@method(name="test-bug-zero-head", family="exact", description="Last head zeroed", availability=_available)
def zero_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    out = _sdpa(q, k, v, case)
    out[:, -1] = 0
    return out


@method(name="test-bug-gqa", family="exact", description="Query head h reads KV head h % H_kv",
        availability=_available)
def gqa_modulo(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    group = case.heads // case.kv_heads
    k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)  # tiles kv heads: h -> h % H_kv
    return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, scale=case.softmax_scale)


@method(name="test-bug-scale", family="exact", description="Softmax scale 2 % too large", availability=_available)
def scale_error(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, scale=1.02 * case.softmax_scale,
                                          enable_gqa=case.kv_heads != case.heads)


@method(name="test-bug-hop-order", family="tensorized", description="Tensorized hops in reverse order",
        availability=_available)
def reversed_hops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    from tbench.kernels.reference import _expand_kv, _hop_f64

    assert case.dims is not None
    b, h, n, d = q.shape
    total = math.prod(case.dims)

    def fold(x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x.to(torch.float64), (0, 0, 0, total - n))
        return x.reshape(b, h, *case.dims, d)

    qf, kf, vf = fold(q), fold(_expand_kv(k, h)), fold(_expand_kv(v, h))
    position = torch.arange(total).reshape(case.dims)
    for axis in range(len(case.dims)):  # outermost first: the spec goes innermost first
        vf = _hop_f64(qf, kf, vf, position, axis, n, case.causal, case.softmax_scale)
    return vf.reshape(b, h, total, d)[:, :, :n].to(q.dtype)


@method(name="test-oom", family="exact", description="Raises an out-of-memory error", availability=_available)
def oom(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1024.00 GiB (injected by the test plugin)")


@method(name="test-abort", family="exact", description="Aborts the process", availability=_available)
def abort(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    os.abort()


@method(name="test-hang", family="exact", description="Never returns", availability=_available)
def hang(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    while True:
        time.sleep(1)


@method(name="test-wrong", family="exact", description="Fast and wrong", availability=_available)
def wrong(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    return _sdpa(q, k, v, case) * 1.1


class _ScaledGradient(torch.autograd.Function):
    """The identity forward; the backward scales the incoming gradient, on every head or on one."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float, head: int | None) -> torch.Tensor:  # type: ignore[override]
        ctx.factor, ctx.head = factor, head
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.clone()
        if ctx.head is None:
            grad *= ctx.factor
        else:
            grad[:, ctx.head] *= ctx.factor
        return grad, None, None


@method(name="test-bug-dk", family="exact", description="Right forward; dK 2 % too large", availability=_available)
def scaled_dk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    return _sdpa(q, _ScaledGradient.apply(k, 1.02, None), v, case)


@method(name="test-bug-dv-head", family="exact", description="Right forward; dV of the last KV head zeroed",
        availability=_available)
def zero_dv_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    return _sdpa(q, k, _ScaledGradient.apply(v, 0.0, case.kv_heads - 1), case)


@method(name="test-forward-only", family="exact", description="SDPA declared forward-only", availability=_available,
        backward=False)
def forward_only(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    return _sdpa(q, k, v, case)


METHODS = [slow, oom, abort, hang, wrong, zero_head, gqa_modulo, scale_error, reversed_hops, scaled_dk, zero_dv_head,
           forward_only]
