"""The float64 evaluation of the spec, and the PyTorch SDPA composition (`tensorized-ref`)."""

import itertools
import math

import pytest
import torch
from errors import rel_err

from tbench.core.folding import auto_dims
from tbench.kernels.reference import exact_attention_f64, tensorized_attention_f64
from tbench.kernels.tensorized_sdpa import _slices_view, tensorized_attention_sdpa


def brute_force(q, k, v, dims, causal):
    """The spec with explicit loops over coordinates: slow, obviously right, tiny shapes only."""
    b_, h_, n, d = q.shape
    group = h_ // k.shape[1]
    total = math.prod(dims)
    strides = [math.prod(dims[j + 1 :]) for j in range(len(dims))]
    coords = list(itertools.product(*[range(x) for x in dims]))
    value = {}
    for b, h, p in itertools.product(range(b_), range(h_), range(total)):
        value[b, h, p] = v[b, h // group, p].double() if p < n else torch.zeros(d, dtype=torch.float64)
    for axis in reversed(range(len(dims))):
        new = {}
        for b, h in itertools.product(range(b_), range(h_)):
            for c in coords:
                p = sum(ci * s for ci, s in zip(c, strides, strict=True))
                keys = []
                for x in range(dims[axis]):
                    kp = p + (x - c[axis]) * strides[axis]
                    if (causal and x <= c[axis]) or (not causal and kp < n):
                        keys.append(kp)
                if not keys:
                    new[b, h, p] = torch.zeros(d, dtype=torch.float64)
                    continue
                qp = q[b, h, p].double() if p < n else torch.zeros(d, dtype=torch.float64)
                kmat = torch.stack([k[b, h // group, kp].double() if kp < n else torch.zeros(d, dtype=torch.float64)
                                    for kp in keys])
                w = torch.softmax(kmat @ qp / math.sqrt(d), dim=0)
                new[b, h, p] = sum(wi * value[b, h, kp] for wi, kp in zip(w, keys, strict=True))
        value = new
    return torch.stack([torch.stack([torch.stack([value[b, h, p] for p in range(n)]) for h in range(h_)])
                        for b in range(b_)])


@pytest.mark.parametrize(("n", "dims", "causal"), [(12, (2, 3, 2), True), (11, (2, 3, 2), False),
                                                   (7, (3, 3), False), (9, (9,), True)])
def test_float64_reference_matches_brute_force(n, dims, causal):
    g = torch.Generator().manual_seed(n)
    q = torch.randn(1, 2, n, 4, generator=g)
    k = torch.randn(1, 1, n, 4, generator=g)
    v = torch.randn(1, 1, n, 4, generator=g)
    assert rel_err(tensorized_attention_f64(q, k, v, dims, causal), brute_force(q, k, v, dims, causal)) < 1e-12


def test_order_one_is_exact_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 50, 8, generator=g) for _ in range(3))
    for causal in (True, False):
        spec = tensorized_attention_f64(q, k, v, auto_dims(50, 1), causal)
        assert rel_err(spec, exact_attention_f64(q, k, v, causal)) < 1e-12


CASES = [
    # n, m, dims, causal, heads, kv_heads
    (64, 1, None, True, 4, 4),
    (64, 2, None, False, 4, 2),
    (50, 2, None, False, 4, 2),   # padded, non-causal: masked padded keys
    (50, 2, None, True, 4, 1),    # padded, causal, GQA 4:1
    (37, 3, None, True, 2, 2),
    (37, 3, None, False, 2, 1),
    (100, 4, None, False, 4, 2),
    (30, 2, (4, 9), False, 2, 2),
    (100, 3, (3, 5, 7), True, 4, 2),
    (97, 3, (3, 5, 7), False, 4, 4),
]


@pytest.mark.parametrize(("n", "m", "dims", "causal", "heads", "kv_heads"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2])  # batch 1 lets hop 1 use SDPA's own GQA
def test_sdpa_composition_matches_the_spec(n, m, dims, causal, heads, kv_heads, dtype, batch):
    g = torch.Generator().manual_seed(hash((n, m, causal, heads, kv_heads, batch)) % 2**31)
    q = torch.randn(batch, heads, n, 16, generator=g).to(dtype)
    k = torch.randn(batch, kv_heads, n, 16, generator=g).to(dtype)
    v = torch.randn(batch, kv_heads, n, 16, generator=g).to(dtype)
    dims = dims or auto_dims(n, m)
    out = tensorized_attention_sdpa(q, k, v, dims, causal)
    assert out.shape == q.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    error = rel_err(out, tensorized_attention_f64(q, k, v, dims, causal))
    assert error < (1e-5 if dtype == torch.float32 else 2e-2)


def test_slices_become_the_batch_axis_without_a_copy_when_one_stride_walks_them():
    x = torch.randn(1, 4, 6 * 8, 16)
    inner = _slices_view(x, (6, 8), 1)  # 6 slices of 8 consecutive positions
    outer = _slices_view(x, (6, 8), 0)  # 8 slices of 6 positions, 8 apart
    assert inner.shape == (6, 4, 8, 16) and inner.data_ptr() == x.data_ptr()
    assert outer.shape == (8, 4, 6, 16) and outer.data_ptr() == x.data_ptr()
    assert torch.equal(outer[3, 2, 5], x[0, 2, 5 * 8 + 3])
    assert torch.equal(inner[3, 2, 5], x[0, 2, 3 * 8 + 5])
    assert _slices_view(x.view(1, 4, 48, 16).expand(2, 4, 48, 16), (6, 8), 0) is None
    assert _slices_view(torch.randn(1, 4, 60, 16), (3, 4, 5), 1) is None


def test_padding_content_never_reaches_real_outputs():
    """Non-causal with padding: changing nothing real but the padded tail keeps the output."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 50, 8, generator=g) for _ in range(3))
    a = tensorized_attention_sdpa(q, k, v, (8, 8), causal=False)
    b = tensorized_attention_sdpa(q[:, :, :45], k[:, :, :45], v[:, :, :45], (8, 8), causal=False)
    # a shorter sequence is a different problem: outputs must differ (keys 45..49 count in a)
    assert not torch.allclose(a[:, :, :45], b)
    ref = tensorized_attention_f64(q[:, :, :45], k[:, :, :45], v[:, :, :45], (8, 8), causal=False)
    assert rel_err(b, ref) < 1e-5
