"""Flops and bytes count the real tokens' work only: checked against brute-force counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tbench.core import cost
from tbench.core.case import Case
from tbench.core.folding import auto_dims


def _brute_pairs(n: int, dims: tuple[int, ...], causal: bool) -> int:
    """Every hop's (query, key) pairs inside one slice, both positions real, the key not after the
    query when causal."""
    positions = np.arange(int(np.prod(dims))).reshape(dims)
    total = 0
    for axis in range(len(dims)):
        for line in np.moveaxis(positions, axis, -1).reshape(-1, dims[axis]):
            for i, j in itertools.product(range(len(line)), repeat=2):
                if line[i] < n and line[j] < n and (not causal or j <= i):
                    total += 1
    return total


def _case(n: int, dims: tuple[int, ...] | None, causal: bool) -> Case:
    family = "tensorized" if dims else "exact"
    return Case("x", family, n, 2, 4, 2, 8, "bf16", causal, "cpu", len(dims) if dims else None, dims)


@pytest.mark.parametrize("dims", [(4, 4), (3, 5), (2, 3, 4), (4, 2, 2, 3), (13,)])
@pytest.mark.parametrize("causal", [False, True])
def test_tensorized_flops_count_only_real_pairs(dims, causal):
    padded = int(np.prod(dims))
    for n in range(1, padded + 1):
        expected = 4.0 * 2 * 4 * 8 * _brute_pairs(n, dims, causal)
        assert cost.flops(_case(n, dims, causal)) == expected, (n, dims, causal)


def test_exact_flops_match_brute_force():
    for n, causal in [(7, False), (7, True), (16, True)]:
        pairs = sum(1 for i in range(n) for j in range(n) if not causal or j <= i)
        assert cost.flops(_case(n, None, causal)) == 4.0 * 2 * 4 * 8 * pairs


def test_padding_is_not_counted():
    # N = 5000 folded 64 x 128 (P = 8192): the inner hop has P / N = 1.64x the real pairs, the
    # outer one 2.68x (its slices lose padding on both sides of each pair): 1.885x in all
    dims = auto_dims(5000, 2)
    assert dims == (64, 128)
    padded = cost.flops(_case(8192, dims, False))
    real = cost.flops(_case(5000, dims, False))
    assert real == 4.0 * 2 * 4 * 8 * ((5000 // 128) * 128**2 + 8**2 + 8 * 40**2 + 120 * 39**2)
    assert padded / real == pytest.approx(1.885, abs=1e-3)
    # without padding, the count is the whole tensor's
    assert cost.flops(_case(8192, dims, False)) == 4.0 * 2 * 4 * 8 * 8192 * (64 + 128)


def test_bytes_count_real_tokens():
    dims = (4, 4)
    for n in (10, 16):
        rows = 2 * n * 8 * 2  # batch * N * D * bytes per element
        expected = (4 + 2 + 2 + 4) * rows + (4 + 2 + 4 + 4) * rows
        assert cost.min_bytes(_case(n, dims, True)) == expected
    assert cost.min_bytes(_case(10, None, True)) == (2 * 4 + 2 * 2) * 2 * 10 * 8 * 2
