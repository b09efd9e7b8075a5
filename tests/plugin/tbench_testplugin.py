"""Test methods registered through the real `tbench.methods` entry point.

They are available only when TBENCH_TEST_PLUGIN=1, so an environment that has this plugin
installed does not measure them by default. TBENCH_TEST_SLOWDOWN_S adds a sleep to `test-slow`.
"""

from __future__ import annotations

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
    delay = float(os.environ.get("TBENCH_TEST_SLOWDOWN_S", "0"))
    if delay:
        time.sleep(delay)
    return _sdpa(q, k, v, case)


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


METHODS = [slow, oom, abort, hang, wrong]
