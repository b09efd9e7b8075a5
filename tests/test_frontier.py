"""The families beyond exact and tensorized attention (linear, sparse, approximate), their float64
references, and the adapters of FA3 (fa3-fwd), fla-core, SageAttention and tensorized-sdpa.

Packages that need a GPU are replaced by stand-ins that check the layout they are given and
compute with torch, so a wrong adapter fails here."""

from __future__ import annotations

import sys
import types
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from errors import rel_err
from torch.nn.attention import SDPBackend

from tbench.core import cost
from tbench.core.case import Case, Family, Mode, sliding_window
from tbench.core.folding import hop_axes
from tbench.harness.correctness import check
from tbench.kernels.linear_reference import delta_rule_recurrence, gated_recurrence, retention_log_decay
from tbench.kernels.reference import exact_attention_f64, tensorized_attention_f64, tensorized_hop_f64
from tbench.kernels.tensorized_sdpa import HopPlan, choose_plans, tensorized_attention_sdpa
from tbench.kernels.tensors import make_inputs
from tbench.methods.catalog import load_registry
from tbench.methods.linear import OPERATORS
from tbench.methods.sage import SAGE_TOLERANCE


def _qkv(b=1, h=2, n=24, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3))


# --- references ------------------------------------------------------------------------------------


def test_linear_recurrence_without_decay_is_causal_unnormalised_attention():
    q, k, v = _qkv()
    mask = torch.ones(24, 24, dtype=torch.bool).tril()
    parallel = ((q @ k.transpose(-1, -2)) * 0.5).masked_fill(~mask, 0) @ v
    assert torch.allclose(gated_recurrence(q, k, v, None, 0.5), parallel)


def test_head_decay_recurrence_is_the_decay_masked_parallel_form():
    q, k, v = _qkv()
    log_decay = -torch.rand(1, 2, 24, dtype=torch.float64)
    total = log_decay.cumsum(-1)
    # token s reaches query t (s <= t) scaled by exp(sum of log decays over s+1..t)
    weight = torch.exp(total[..., :, None] - total[..., None, :]).tril()
    parallel = ((q @ k.transpose(-1, -2)) * weight) @ v
    assert torch.allclose(gated_recurrence(q, k, v, log_decay, 1.0), parallel)
    # a wrong decay (none) is far from it
    assert not torch.allclose(gated_recurrence(q, k, v, None, 1.0), parallel, atol=1e-3)


def test_key_dim_decay_recurrence_matches_a_per_dim_parallel_form():
    q, k, v = _qkv(n=12)
    log_decay = -torch.rand(1, 2, 12, 8, dtype=torch.float64)
    total = log_decay.cumsum(2)
    out = torch.zeros_like(v)
    for t in range(12):
        for s in range(t + 1):
            score = (q[:, :, t] * k[:, :, s] * torch.exp(total[:, :, t] - total[:, :, s])).sum(-1)
            out[:, :, t] += score[..., None] * v[:, :, s]
    assert torch.allclose(gated_recurrence(q, k, v, log_decay, 1.0), out)


def test_delta_rule_with_orthogonal_keys_is_linear_attention_with_scaled_writes():
    # with mutually orthogonal unit keys the erase term S^T k is zero, so each write is beta v
    d = 8
    q, _, v = _qkv(n=d, d=d)
    k = torch.eye(d, dtype=torch.float64).expand(1, 2, d, d)
    beta = torch.rand(1, 2, d, dtype=torch.float64)
    qn = q / q.norm(dim=-1, keepdim=True)
    expected = gated_recurrence(qn, k, v * beta[..., None], None, 0.3)
    assert torch.allclose(delta_rule_recurrence(q, k, v, beta, 0.3), expected)
    # repeating one key erases: with beta = 1 the state holds only the last value written
    k_same = torch.zeros(1, 1, 3, d, dtype=torch.float64)
    k_same[..., 0] = 1
    vs = torch.randn(1, 1, 3, d, dtype=torch.float64)
    out = delta_rule_recurrence(k_same, k_same, vs, torch.ones(1, 1, 3, dtype=torch.float64), 1.0)
    assert torch.allclose(out[0, 0, 2], vs[0, 0, 2])


def test_delta_rule_matches_fla_naive_recurrence_when_installed():
    naive = pytest.importorskip("fla.ops.delta_rule.naive")
    q, k, v = _qkv(n=16)
    beta = torch.rand(1, 2, 16, dtype=torch.float64)
    qn, kn = (t / t.norm(dim=-1, keepdim=True) for t in (q, k))
    theirs, _ = naive.delta_rule_recurrence(qn, kn, v, beta)
    assert torch.allclose(delta_rule_recurrence(q, k, v, beta, 8**-0.5), theirs.double(), atol=1e-5)


def test_retention_decays_are_retnets():
    assert torch.allclose(retention_log_decay(3).exp(), torch.tensor([1 - 2**-5, 1 - 2**-6, 1 - 2**-7],
                                                                       dtype=torch.float64))


def test_windowed_reference_keeps_only_the_last_w_keys():
    q, k, v = _qkv(n=20)
    assert torch.allclose(exact_attention_f64(q, k, v, True, window=20), exact_attention_f64(q, k, v, True))
    assert torch.allclose(exact_attention_f64(q, k, v, True, window=1), v)
    assert not torch.allclose(exact_attention_f64(q, k, v, True, window=4), exact_attention_f64(q, k, v, True))


def test_sliding_window_is_min_4096_or_n_over_8():
    assert [sliding_window(n) for n in (512, 16384, 65536, 131072)] == [64, 2048, 4096, 4096]


def test_costs_of_the_new_families():
    def case(family, n):
        return Case("x", family, n, 1, 4, 2, 64, "bf16", True, "cuda")

    assert cost.flops(case(Family.LINEAR, 1024)) == 4.0 * 4 * 1024 * 64 * 64
    w = sliding_window(65536)
    pairs = w * (w + 1) // 2 + (65536 - w) * w
    assert cost.flops(case(Family.SPARSE, 65536)) == 4.0 * 4 * 64 * pairs
    assert cost.window_pairs(10, 3) == sum(min(t + 1, 3) for t in range(10))
    assert cost.flops(case(Family.APPROXIMATE, 1024)) == cost.flops(case(Family.EXACT, 1024))
    assert cost.min_bytes(case(Family.LINEAR, 1024)) == cost.min_bytes(case(Family.EXACT, 1024))


# --- the correctness gate per family ----------------------------------------------------------------


def test_sparse_gate_checks_the_window_and_fails_plain_causal_attention():
    registry = load_registry(plugins=False)
    method = registry.get("sliding-window")
    case = Case("sliding-window", "sparse", 512, 1, 4, 2, 32, "fp32", True, "cpu")
    call = method.bound(case)
    result = check(lambda a, b, c: call(a, b, c, case), case, seed=3)
    assert result.passed and result.error is not None and result.error < 1e-5
    assert result.fidelity_rel_l2 > 1e-3  # it is not exact attention, and that is recorded
    causal = check(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True, enable_gqa=True),
                   case, seed=3)
    assert not causal.passed and "tolerance" in causal.message


def test_approximate_gate_uses_the_declared_tolerance():
    case = Case("sage", "approximate", 256, 1, 2, 2, 32, "fp32", True, "cpu")

    def noisy(a, b, c):
        out = F.scaled_dot_product_attention(a, b, c, is_causal=True)
        return out + 0.02 * out.norm() / out.numel() ** 0.5 * torch.randn_like(out)

    assert not check(noisy, case, seed=1).passed  # fp32's calibrated tolerance rejects a 2 % error
    assert check(noisy, case, seed=1, tolerance=lambda c: 0.1).passed


# --- fla-core: stand-ins that check the layout, computing with the float64 recurrences ------------


def _fake_fla(monkeypatch, seen: dict) -> None:
    def check_layout(q, k, v, scale):
        assert q.dim() == 4 and q.shape[1] > q.shape[2], "expected (B, N, H, D)"
        assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
        assert q.shape == k.shape == v.shape, "expected KV heads expanded"
        seen["scale"] = scale

    def as_bhnd(*ts):
        return [t.transpose(1, 2).double() for t in ts]

    def done(out, like):
        return out.transpose(1, 2).to(like.dtype), None

    def chunk_linear_attn(q, k, v, scale=None, normalize=True):
        check_layout(q, k, v, scale)
        assert normalize is False
        return done(gated_recurrence(*as_bhnd(q, k, v), None, scale), q)

    def chunk_simple_gla(q, k, v, g=None, scale=None):
        check_layout(q, k, v, scale)
        assert g.shape == q.shape[:3], "g is (B, N, H)"
        return done(gated_recurrence(*as_bhnd(q, k, v), g.transpose(1, 2), scale), q)

    def chunk_gla(q, k, v, g=None, scale=None):
        check_layout(q, k, v, scale)
        assert g.shape == q.shape, "g is (B, N, H, K)"
        return done(gated_recurrence(*as_bhnd(q, k, v), g.transpose(1, 2), scale), q)

    def chunk_retention(q, k, v, scale=None):
        check_layout(q, k, v, scale)
        b, n, h, _ = q.shape
        decay = retention_log_decay(h).view(1, h, 1).expand(b, h, n)
        return done(gated_recurrence(*as_bhnd(q, k, v), decay, scale), q)

    def chunk_delta_rule(q, k, v, beta=None, scale=None, use_qk_l2norm_in_kernel=False):
        check_layout(q, k, v, scale)
        assert beta.shape == q.shape[:3] and use_qk_l2norm_in_kernel
        return done(delta_rule_recurrence(*as_bhnd(q, k, v), beta.transpose(1, 2), scale), q)

    for module, name, fn in [("fla.ops.linear_attn", "chunk_linear_attn", chunk_linear_attn),
                             ("fla.ops.simple_gla", "chunk_simple_gla", chunk_simple_gla),
                             ("fla.ops.gla", "chunk_gla", chunk_gla),
                             ("fla.ops.retention", "chunk_retention", chunk_retention),
                             ("fla.ops.delta_rule", "chunk_delta_rule", chunk_delta_rule)]:
        fake = types.ModuleType(module)
        setattr(fake, name, fn)
        monkeypatch.setitem(sys.modules, module, fake)


@pytest.mark.parametrize("name", [op.name for op in OPERATORS])
def test_linear_adapters_pass_their_own_gate_and_a_wrong_operator_fails(monkeypatch, name):
    seen: dict = {}
    _fake_fla(monkeypatch, seen)
    registry = load_registry(plugins=False)
    method = registry.get(name)
    assert method.family is Family.LINEAR
    case = Case(name, "linear", 48, 1, 4, 2, 16, "fp32", True, "cpu")
    call = method.bound(case)
    result = check(lambda a, b, c: call(*method.prepared(a, b, c, case), case), case, seed=2,
                   reference=method.reference)
    assert result.passed and result.error is not None and result.error < 1e-5, result.message
    assert seen["scale"] == case.softmax_scale
    assert "seed" in method.provenance(case) and "expanded" in method.provenance(case)
    # another linear operator (plain linear attention) fails every gated method's gate
    plain = registry.get("linear-attn")
    other = plain.bound(case)
    wrong = check(lambda a, b, c: other(*plain.prepared(a, b, c, case), case), case, seed=2,
                  reference=method.reference)
    assert wrong.passed == (name == "linear-attn")
    # the gates are the same operator every time they are made
    gates = next(op for op in OPERATORS if op.name == name).gates
    first, again = gates(case), gates(case)
    for a, b in ((first.g, again.g), (first.beta, again.beta)):
        assert (a is None and b is None) or torch.equal(a, b)


def test_linear_gate_without_reference_fails():
    case = Case("x", "linear", 32, 1, 2, 2, 8, "fp32", True, "cpu")
    result = check(lambda a, b, c: a, case, seed=0)
    assert not result.passed and "definition" in result.message


def test_linear_methods_say_why_they_cannot_run_on_the_cpu():
    for op in OPERATORS:
        availability = load_registry(plugins=False).get(op.name).availability("cpu")
        assert not availability.available and "CUDA" in availability.reason


# --- SageAttention: stand-in with its in-place mean subtraction --------------------------------------


def test_sage_adapter_keeps_the_inputs_intact_and_declares_its_tolerance(monkeypatch):
    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None):
        assert tensor_layout == "HND" and q.shape[1] % k.shape[1] == 0
        k -= k.mean(dim=2, keepdim=True)  # what sageattn does to its k
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=sm_scale, enable_gqa=True)

    fake = types.ModuleType("sageattention")
    fake.sageattn = sageattn
    monkeypatch.setitem(sys.modules, "sageattention", fake)
    method = load_registry(plugins=False).get("sage")
    assert method.family is Family.APPROXIMATE and method.tolerance(None) == SAGE_TOLERANCE < 0.05
    case = Case("sage", "approximate", 64, 1, 4, 2, 64, "fp32", True, "cpu")
    q, k, v = make_inputs(case, 0)
    kept = k.clone()
    out = method.bound(case)(*method.prepared(q, k, v, case), case)
    assert torch.equal(k, kept)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.allclose(out, expected, atol=1e-5)  # softmax is shift-invariant along k's mean


# --- FlashAttention-3 from the fa3-fwd wheel -----------------------------------------------------


def test_flash3_takes_fa3_fwd_and_names_it(monkeypatch):
    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        assert q.shape[1] > q.shape[2] and q.is_contiguous()
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=causal, scale=softmax_scale,
                                              enable_gqa=True).transpose(1, 2)

    fake = types.ModuleType("fa3_fwd_interface")
    fake.flash_attn_func = flash_attn_func
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", fake)
    from tbench.methods import flash3 as flash3_module

    monkeypatch.setattr(flash3_module, "has_module", lambda name: False)
    method = load_registry(plugins=False).get("flash3")
    assert flash3_module.fa3_module() == "fa3_fwd_interface"
    case = Case("flash3", "exact", 96, 1, 4, 2, 64, "bf16", True, "cpu")
    q, k, v = make_inputs(case, 1)
    out = method.bound(case)(*method.prepared(q, k, v, case), case)
    assert out.shape == q.shape
    # fa3-fwd has no fp16 kernels: an unsupported reason, not a crash
    fp16 = Case("flash3", "exact", 96, 1, 4, 2, 64, "fp16", True, "cuda")
    assert "fa3_fwd_interface" in method.unsupported_reason(fp16)
    assert method.unsupported_reason(Case("flash3", "exact", 96, 1, 4, 2, 64, "bf16", True, "cuda")) is None
    provenance = method.availability("cuda")
    assert ("fa3_fwd_interface" in provenance.provenance) if provenance.available else provenance.reason


def test_flash3_without_any_build_says_how_to_install(monkeypatch):
    from tbench.methods import flash3 as flash3_module

    monkeypatch.setattr(flash3_module, "has_module", lambda name: False)
    for name in flash3_module.FA3_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    reason = load_registry(plugins=False).get("flash3").availability("cuda").reason
    assert "tbench[fa3]" in reason


# --- tensorized-sdpa ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "dims", "causal"), [(512, (16, 32), True), (500, (8, 8, 8), False)])
def test_tensorized_sdpa_is_the_reference_composition(n, dims, causal):
    method = load_registry(plugins=False).get("tensorized-sdpa")
    case = Case("tensorized-sdpa", "tensorized", n, 1, 4, 2, 32, "fp32", causal, "cpu", order=len(dims), dims=dims)
    q, k, v = make_inputs(case, 4)
    got = method.bound(case)(q, k, v, case)
    assert torch.allclose(got, tensorized_attention_sdpa(q, k, v, dims, causal), atol=1e-6)
    assert check(lambda a, b, c: method.bound(case)(a, b, c, case), case, seed=9).passed
    assert "default backend" in method.provenance(case)


def test_choose_plans_skips_refusing_backends_and_keeps_the_fastest():
    case = Case("t", "tensorized", 256, 1, 4, 2, 32, "fp32", True, "cpu", order=2, dims=(16, 16))
    q, k, v = make_inputs(case, 0)
    # the efficient backend refuses the CPU; math runs each hop with native GQA, then with K repeated
    costs = iter([3.0, 1.0, 1.0, 2.0])  # hop 1: native 3 s, repeated 1 s; hop 2: native 1 s, repeated 2 s

    def seconds(fn):
        fn()
        return next(costs)

    chosen = choose_plans(q, k, v, case.dims, True, None, (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH), seconds)
    assert chosen == (HopPlan(SDPBackend.MATH, native_gqa=False), HopPlan(SDPBackend.MATH, native_gqa=True))
    out = tensorized_attention_sdpa(q, k, v, case.dims, True, plans=chosen)
    assert torch.allclose(out, tensorized_attention_sdpa(q, k, v, case.dims, True), atol=1e-5)


@pytest.mark.parametrize("n", [256, 250], ids=["exact", "padded"])
def test_choose_plans_in_training_times_each_hops_forward_and_backward(n):
    """Each timed step is the hop's forward and the gradients of q, k and the hop's own input value
    only (not earlier hops': they would be charged to every plan alike), and steps can repeat."""
    case = Case("t", "tensorized", n, 1, 4, 2, 32, "fp32", True, "cpu", order=2, dims=(16, 16))
    q, k, v = make_inputs(case, 0)
    costs = iter([3.0, 1.0, 1.0, 2.0])
    steps: list[tuple[torch.Tensor, ...]] = []

    def seconds(fn):
        first, again = fn(), fn()
        assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
        steps.append(first)
        return next(costs)

    chosen = choose_plans(q, k, v, case.dims, True, None, (SDPBackend.MATH,), seconds, train=True)
    assert chosen == (HopPlan(SDPBackend.MATH, native_gqa=False), HopPlan(SDPBackend.MATH, native_gqa=True))
    total = 256
    dq, dk = (1, 4, n, 32), (1, 2, n, 32)
    # hop 1's input value is v (2 heads, padded to 256 rows), hop 2's the 4-head output of hop 1
    shapes = [tuple(tuple(g.shape) for g in grads) for grads in steps]
    assert shapes == [(dq, dk, (1, 2, total, 32))] * 2 + [(dq, dk, (1, 4, total, 32))] * 2
    assert not q.requires_grad  # the caller's tensors are left as they were
    if n == total:
        # hop 2's q gradient is hop 2's alone: float64 autograd of that hop with hop 1's output fixed
        first, second = hop_axes(2)
        value = tensorized_hop_f64(q, k, v, case.dims, first, True, 32**-0.5)
        q64 = q.double().requires_grad_()
        out = tensorized_hop_f64(q64, k, value, case.dims, second, True, 32**-0.5)
        d_out = torch.randn(1, 4, n, 32, generator=torch.Generator().manual_seed(0))
        (want,) = torch.autograd.grad(out, q64, d_out.double())
        for grads in steps[2:]:
            assert (grads[0].double() - want).norm() < 1e-5 * want.norm()


def test_k_is_repeated_once_whatever_the_number_of_hops_that_need_it(monkeypatch: pytest.MonkeyPatch):
    from tbench.kernels import tensorized_sdpa as ts

    copied: list[tuple] = []
    repeat = ts._repeat_heads
    monkeypatch.setattr(ts, "_repeat_heads", lambda x, group: copied.append(tuple(x.shape)) or repeat(x, group))
    case = Case("t", "tensorized", 256, 1, 4, 2, 32, "fp32", True, "cpu", order=4, dims=(4, 4, 4, 4))
    q, k, v = make_inputs(case, 0)
    got = tensorized_attention_sdpa(q, k, v, case.dims, True)  # hops 2-4 take K repeated to 4 heads
    assert copied == [(1, 2, 256, 32)]
    assert (got.double() - tensorized_attention_f64(q, k, v, case.dims, True)).norm() < 1e-5 * got.norm()


@pytest.mark.parametrize(("hop1_costs", "hop2_repeat_copies"), [((3.0, 1.0), 0), ((1.0, 3.0), 1)],
                         ids=["hop1-repeats-K", "hop1-native"])
def test_each_plan_is_charged_the_copies_it_makes(monkeypatch: pytest.MonkeyPatch, hop1_costs, hop2_repeat_copies):
    """A trial with K repeated pays for the copy in every timed call, unless a hop chosen before it
    already made the copy the chain keeps."""
    from tbench.kernels import tensorized_sdpa as ts

    copies = [0]
    repeat = ts._repeat_heads
    monkeypatch.setattr(ts, "_repeat_heads", lambda x, group: copies.__setitem__(0, copies[0] + 1) or repeat(x, group))
    case = Case("t", "tensorized", 256, 1, 4, 2, 32, "fp32", True, "cpu", order=2, dims=(16, 16))
    q, k, v = make_inputs(case, 0)
    costs = iter([*hop1_costs, 1.0, 2.0])  # hop 1: native, repeated; hop 2: native, repeated
    charged: list[list[int]] = []

    def seconds(fn):
        per_call = []
        for _ in range(2):
            before = copies[0]
            fn()
            per_call.append(copies[0] - before)
        charged.append(per_call)
        return next(costs)

    choose_plans(q, k, v, case.dims, True, None, (SDPBackend.MATH,), seconds)
    # hop 1 repeated copies K and V in each call; hop 2 repeated copies K unless hop 1 kept a copy
    assert charged == [[0, 0], [2, 2], [0, 0], [hop2_repeat_copies] * 2]


def test_tensorized_sdpa_names_the_timed_pass_in_its_provenance():
    method = load_registry(plugins=False).get("tensorized-sdpa")
    gpu = Case("tensorized-sdpa", "tensorized", 4096, 1, 4, 2, 32, "bf16", True, "cuda", order=2, dims=(64, 64))
    assert "on the hop's forward" in method.provenance(gpu) and "backward" not in method.provenance(gpu)
    assert "on the hop's forward and backward" in method.provenance(replace(gpu, mode=Mode.FWD_BWD))


@pytest.mark.parametrize(("n", "dims", "causal"), [(256, (16, 16), True), (500, (8, 8, 8), True),
                                                   (512, (8, 64), False)])
def test_native_gqa_on_every_hop_matches_the_spec(n, dims, causal):
    """Later hops pair 2 key heads with the previous output's 4 heads inside SDPA (no K copy). A
    broken pairing (a query head reading another group's keys) would fail against float64."""
    case = Case("t", "tensorized", n, 1, 4, 2, 32, "fp32", causal, "cpu", order=len(dims), dims=dims)
    q, k, v = make_inputs(case, 3)
    got = tensorized_attention_sdpa(q, k, v, dims, causal, plans=[HopPlan(None, native_gqa=True)] * len(dims))
    want = tensorized_attention_f64(q, k, v, dims, causal)
    assert rel_err(got, want) < 1e-5
    swapped = torch.cat([k[:, 1:], k[:, :1]], dim=1)  # the wrong kv head for every query head
    wrong = tensorized_attention_sdpa(q, swapped, v, dims, causal, plans=[HopPlan(None, native_gqa=True)] * len(dims))
    assert rel_err(wrong, want) > 1e-2


# --- on a GPU: the real packages --------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["flash3", "tensorized-sdpa", *(op.name for op in OPERATORS), "sliding-window",
                                  "sage"])
def test_each_new_method_passes_its_gate_on_the_gpu(name):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    method = load_registry(plugins=False).get(name)
    availability = method.availability("cuda")
    if not availability.available:
        pytest.skip(availability.reason)
    order, dims = (2, (32, 64)) if method.family is Family.TENSORIZED else (None, None)
    case = Case(name, method.family, 2048, 1, 8, 2, 128, "bf16", True, "cuda", order=order, dims=dims)
    call = method.bound(case)
    result = check(lambda a, b, c: call(*method.prepared(a, b, c, case), case), case, seed=5,
                   tolerance=method.tolerance, reference=method.reference)
    assert result.passed and result.error is not None, result.message
    assert method.provenance(case)


@pytest.mark.parametrize(("capability", "triton_version", "tilelang", "refused"), [
    ((9, 0), "3.6.0", False, True),       # the H200 here: fla-core raises at the first backward
    ((9, 0), "3.4.0", False, True),
    ((9, 0), "3.7.1", False, False),
    ((9, 0), "3.3.1", False, False),
    ((9, 0), "3.6.0+git1234", False, True),
    ((9, 0), "3.6.0", True, False),       # tilelang replaces the kernel
    ((8, 0), "3.6.0", False, False),      # not Hopper
    ((10, 0), "3.6.0", False, False),
])
def test_simple_glas_backward_is_declared_unsupported_where_fla_refuses_it(capability, triton_version, tilelang,
                                                                             refused):
    from tbench.methods.linear import backward_problem

    reason = backward_problem(capability, triton_version, tilelang)
    assert (reason is not None) == refused
    if refused:
        assert triton_version in reason and "3.7.1" in reason


def test_only_simple_gla_goes_through_flas_gated_backward():
    gated = {op.name for op in OPERATORS if op.gated_backward}
    assert gated == {"simple-gla"}
