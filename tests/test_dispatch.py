"""`tensorized`: each forward hop on the fastest of tbench's Triton kernel, FlashAttention-3 and cuDNN
(kernels/tensorized_dispatch.py). On the CPU the Triton hops run in the interpreter, the SDPA hop
runs on PyTorch's math backend through the same views, and FA3 is a stand-in that checks the layout
it receives and writes through the output view it is given."""

from __future__ import annotations

import importlib.util
import os
import sys
import weakref
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from errors import rel_err
from fa3_stand_in import stand_in_fa3

from tbench.core.case import Case
from tbench.core.folding import hop_axes
from tbench.kernels import tensorized_dispatch as td
from tbench.kernels.reference import tensorized_attention_f64
from tbench.kernels.tensorized_backward import forward_with_saved
from tbench.kernels.tensorized_triton import tensorized_attention_triton
from tbench.kernels.tensors import make_inputs
from tbench.methods.catalog import load_registry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(n: int, heads: int = 4, kv_heads: int = 2, d: int = 32, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(n)
    make = lambda h: torch.randn(1, h, n, d, generator=gen, dtype=torch.float64).to(DEVICE, dtype)  # noqa: E731
    return make(heads), make(kv_heads), make(kv_heads)


@pytest.mark.parametrize("dims", [(8, 16), (16, 8), (4, 4, 4)], ids=str)
def test_slices_view_round_trip_and_where_it_applies(dims):
    n = 1
    for d in dims:
        n *= d
    x = torch.arange(2 * n * 3, dtype=torch.float32).view(1, 2, n, 3)
    for axis in hop_axes(len(dims)):
        outer = 1
        for d in dims[:axis]:
            outer *= d
        view = td.slices_view(x, dims, axis)
        if outer > 1 and axis < len(dims) - 1:
            assert view is None  # the middle hop of m = 3: two strides
            continue
        assert view is not None and view.data_ptr() == x.data_ptr()  # a view, not a copy
        # slice s, coordinate i of head h is the position the hop's formula names
        inner = n // (outer * dims[axis])
        s, i, h = view.shape[0] - 1, dims[axis] - 1, 1
        a, c = divmod(s, inner)
        assert torch.equal(view[s, i, h], x[0, h, a * dims[axis] * inner + i * inner + c])
        assert torch.equal(td._unslices(view, 1, dims, axis), x)
    assert td.slices_view(torch.zeros(2, 2, 16, 3), (4, 4), 1) is None  # batch 2 and 4 slices: two strides
    assert td.slices_view(torch.zeros(1, 2, 15, 3), (4, 4), 1) is None  # padded


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dims", [(8, 16), (16, 8)], ids=str)
def test_sdpa_hops_with_the_heads_paired_inside_match_the_spec(dims, causal):
    """Every hop as one SDPA call on the slices views (math backend here, cuDNN on a GPU): hop 1 pairs
    4 query heads with 2 key/value heads, hop 2 pairs them with 2 key heads and a 4-head value."""
    q, k, v = _inputs(128)
    value = v
    for axis in hop_axes(len(dims)):
        value = td.sdpa_hop(q, k, value, dims, axis, causal, 32**-0.5, SDPBackend.MATH)
    assert rel_err(value, tensorized_attention_f64(q, k, v, dims, causal)) < 1e-5


def test_dispatch_runs_each_hop_where_chosen(monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple] = []
    monkeypatch.setattr(td, "fa3_forward", lambda: stand_in_fa3(calls))
    q, k, v = _inputs(128)
    dims = (8, 16)
    got = td.tensorized_attention_dispatch(q, k, v, dims, True, None, (td.HopBackend.FA3, td.HopBackend.TRITON))
    assert calls == [((8, 16, 4, 32), (8, 16, 2, 32))]  # hop 1: 8 slices of 16, GQA 4:2, no copy
    assert rel_err(got, tensorized_attention_f64(q, k, v, dims, True)) < 1e-5
    # FA3 cannot take hop 2 (2 key heads, 4 value heads): it never gets it, even if asked
    assert not td.hop_accepts(td.HopBackend.FA3, q, k, got, dims, 0)
    assert td.hop_accepts(td.HopBackend.CUDNN, q, k, got, dims, 0)
    again = td.tensorized_attention_dispatch(q, k, v, dims, True, None, (td.HopBackend.FA3, td.HopBackend.FA3))
    assert len(calls) == 2 and torch.allclose(again, got)


T, F3, CU = td.HopBackend.TRITON, td.HopBackend.FA3, td.HopBackend.CUDNN


@pytest.mark.parametrize("backends,buffers", [
    ((F3, CU), 1), ((T, CU), 1), ((T, T), 2), ((CU, T), 1), ((CU, CU), 0), ((T, T, T), 2), ((CU, T, CU), 1),
    ((CU, T, T), 2), ((T, T, CU), 2), ((T, T, T, T), 2),
], ids=lambda x: x if isinstance(x, int) else "-".join(b.name for b in x))
def test_dispatch_makes_only_the_buffers_its_hops_write(backends, buffers, monkeypatch: pytest.MonkeyPatch):
    """A hop cuDNN runs returns its own output, so it gets no buffer and none but the one it reads
    stays alive while it runs; a buffer whose contents no hop reads any more is written again: at
    most two, as the Triton kernel alone. (The math backend stands in for cuDNN on the CPU.)"""
    made: list[weakref.ref] = []  # the buffers, not kept alive by the test
    new_output = td._new_output

    def counted(like: torch.Tensor) -> torch.Tensor:
        buffer = new_output(like)
        made.append(weakref.ref(buffer))
        return buffer

    monkeypatch.setattr(td, "_new_output", counted)
    monkeypatch.setattr(td, "fa3_forward", lambda: stand_in_fa3([]))
    sdpa_hop, alive_at_sdpa = td.sdpa_hop, []

    def cudnn_stand_in(q, k, value, *args):
        # at most the buffer the hop reads is alive while cuDNN makes its own output
        alive_at_sdpa.append(sum(ref() is not None and ref() is not value for ref in made))
        return sdpa_hop(q, k, value, *args[:-1], SDPBackend.MATH)

    monkeypatch.setattr(td, "sdpa_hop", cudnn_stand_in)
    dims = (8, 16) if len(backends) == 2 else (4, 8, 4) if len(backends) == 3 else (2, 4, 4, 4)
    q, k, v = _inputs(128)
    got = td.tensorized_attention_dispatch(q, k, v, dims, True, None, backends)
    # each hop ran where asked (FA3 takes only the first hop, cuDNN the first and last of m = 3)
    assert alive_at_sdpa == [0] * backends.count(CU)
    assert len(made) == buffers
    assert rel_err(got, tensorized_attention_f64(q, k, v, dims, True)) < 1e-5


def test_a_hop_that_writes_into_a_buffer_needs_one():
    q, k, v = _inputs(16)
    with pytest.raises(ValueError, match="hop backend 'Triton' writes into an output buffer; none was given"):
        td.run_hop(T, q, k, v, None, (4, 4), 1, True, 0.125)


def test_choose_hop_backends_keeps_the_fastest_and_skips_refusals(monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple] = []
    monkeypatch.setattr(td, "fa3_forward", lambda: stand_in_fa3(calls))
    q, k, v = _inputs(128)
    dims = (8, 16)
    # hop 1: Triton 2 s, FA3 1 s (cuDNN refuses the CPU before it is timed); hop 2: Triton only
    costs = iter([2.0, 1.0, 5.0])

    def seconds(fn):
        fn()
        return next(costs)

    chosen = td.choose_hop_backends(q, k, v, dims, True, None, (td.HopBackend.CUDNN, td.HopBackend.FA3), seconds)
    assert chosen == (td.HopBackend.FA3, td.HopBackend.TRITON)
    assert next(costs, None) is None  # hop 2 timed Triton alone (FA3 cannot pair its heads)


def test_the_method_on_the_cpu_is_the_triton_kernel():
    registry = load_registry(plugins=False)
    case = Case("tensorized", "tensorized", 100, 1, 4, 2, 32, "fp32", True, "cpu", order=2, dims=(10, 10))
    q, k, v = make_inputs(case, 1)
    for name in ("tensorized", "tensorized-triton"):
        out = registry.get(name).bound(case)(q, k, v, case)
        assert torch.equal(out, tensorized_attention_triton(q, k, v, (10, 10), True))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8192, 32768])
def test_dispatch_on_the_gpu_matches_the_triton_kernel(n):
    """The real FA3 and cuDNN hops, bf16, GQA 32:8, m = 2: every backend combination the choice can
    make gives the operator (the Triton kernel's result within bf16 rounding)."""
    q, k, v = _inputs(n, 32, 8, 128, torch.bfloat16)
    dims = (64, n // 64)
    want = tensorized_attention_triton(q, k, v, dims, True)
    for first in td.HopBackend:
        for second in (td.HopBackend.TRITON, td.HopBackend.CUDNN):
            if first is td.HopBackend.FA3 and td.fa3_forward() is None:
                continue
            got = td.tensorized_attention_dispatch(q, k, v, dims, True, None, (first, second))
            assert rel_err(got, want) < 1e-2, (first, second)


@pytest.mark.parametrize("scale", [0.0, -0.125, float("nan")], ids=["zero", "negative", "nan"])
def test_a_scale_that_is_not_positive_is_refused_before_any_hop_runs(scale: float) -> None:
    """The dispatch takes the arguments the Triton kernel takes: a softmax scale that is not
    positive would break the kernels' max-subtraction (they fold the scale into the exponent)."""
    q, k, v = _inputs(64)
    with pytest.raises(ValueError, match=f"softmax scale {scale} unsupported; it must be positive"):
        td.tensorized_attention_dispatch(q, k, v, (8, 8), True, scale, (td.HopBackend.TRITON,) * 2)
    out = td.tensorized_attention_dispatch(q, k, v, (8, 8), True, 0.125, (td.HopBackend.TRITON,) * 2)
    ref = tensorized_attention_f64(q.cpu(), k.cpu(), v.cpu(), (8, 8), True, scale=0.125).to(DEVICE)
    assert rel_err(out, ref) < 1e-5


def _l2_chunks():
    """benchmarks/l2_chunks.py, the experiment that runs both hops a few heads at a time."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "l2_chunks.py"
    spec = importlib.util.spec_from_file_location("l2_chunks", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backends", [(F3, CU), (CU, CU), (T, T), (T, CU), (CU, F3)],
                         ids=lambda x: "-".join(b.name for b in x))
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_hops_run_a_chunk_of_heads_at_a_time_give_the_operator(backends, heads, monkeypatch: pytest.MonkeyPatch):
    chunks = _l2_chunks()
    monkeypatch.setattr(td, "fa3_forward", lambda: stand_in_fa3([]))
    sdpa_hop = td.sdpa_hop
    monkeypatch.setattr(td, "sdpa_hop", lambda *args: sdpa_hop(*args[:-1], SDPBackend.MATH))
    q, k, v = _inputs(128)  # 4 query heads, 2 kv heads: chunks of 1 and 2 heads split a kv group or hold one
    dims = (8, 16)
    want = tensorized_attention_f64(q, k, v, dims, True)
    for place in (True, False):
        out, scratch = torch.full_like(q, torch.nan), torch.full_like(q, torch.nan)
        parts = chunks.chunked(q, k, v, dims, True, 32**-0.5, backends, heads, out, scratch, place)
        assert len(parts) == 4 // heads
        assert rel_err(torch.cat(parts, dim=1), want) < 1e-5
        if place or backends[-1] is not CU:
            assert rel_err(out, want) < 1e-5  # written in place, or copied there
        else:
            assert out.isnan().all()  # outputs apart: nothing copied


def test_chunks_of_heads_are_refused_where_they_cannot_be_views():
    chunks = _l2_chunks()
    q, k, v = _inputs(128, heads=6, kv_heads=2)
    out = torch.empty_like(q)
    with pytest.raises(ValueError, match="chunks of 2 heads do not tile 6 heads in kv groups of 3"):
        chunks.chunked(q, k, v, (8, 16), True, 0.2, (T, T), 2, out, out.clone())
    q2, k2, v2 = (torch.cat([x, x]) for x in (q, k, v))
    with pytest.raises(ValueError, match="chunked hops need batch 1, got 2"):
        chunks.chunked(q2, k2, v2, (8, 16), True, 0.2, (T, T), 3, q2.clone(), q2.clone())


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(("dims", "backends"), [
    ((8, 16), (F3, CU)), ((16, 8), (CU, T)), ((8, 16), (T, CU)), ((8, 16), (CU, CU)),
    ((4, 8, 4), (F3, T, CU)),  # the middle hop of m = 3 is no view: Triton runs it whatever is asked
], ids=str)
def test_a_forward_on_the_libraries_saves_what_the_triton_forward_saves(dims, backends, causal,
                                                                      monkeypatch: pytest.MonkeyPatch):
    """What the fused Triton backward reads, each hop's output and per-row log-sum-exps (log2 units,
    in the (B, H, N) rows the kernels index), from FA3 (a stand-in here) and cuDNN (on a CPU, ATen's
    CPU flash kernel) as from the Triton forward; GQA 4:2, a 4-head value on the later hops."""
    monkeypatch.setattr(td, "fa3_forward", lambda: stand_in_fa3([]))
    q, k, v = _inputs(128)
    want = forward_with_saved(q, k, v, dims, causal, 32**-0.5)
    got = td.saved_forward_on(q, k, v, dims, causal, 32**-0.5, backends)
    for t, (out, lse, out_want, lse_want) in enumerate(zip(got.outputs, got.lses, want.outputs, want.lses,
                                                           strict=True)):
        assert out.shape == out_want.shape and out.is_contiguous()
        assert rel_err(out, out_want) < 1e-5, t
        assert lse.dtype == torch.float32 and (lse - lse_want).abs().max() < 1e-4, t


def test_log_sum_exps_in_natural_log_are_caught(monkeypatch: pytest.MonkeyPatch):
    """The check above fails when a library's log-sum-exps are stored as it gives them (natural log)."""
    monkeypatch.setattr(td, "fa3_forward", lambda: stand_in_fa3([]))
    monkeypatch.setattr(td, "_LOG2E", 1.0)
    q, k, v = _inputs(128)
    want = forward_with_saved(q, k, v, (8, 16), True, 32**-0.5)
    got = td.saved_forward_on(q, k, v, (8, 16), True, 32**-0.5, (F3, CU))
    assert all((a - b).abs().max() > 0.1 for a, b in zip(got.lses, want.lses, strict=True))
