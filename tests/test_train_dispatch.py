"""`tensorized` in training: each hop's forward and backward on tbench's Triton kernels or cuDNN
(kernels/tensorized_train_dispatch.py). PyTorch's math backend stands in for cuDNN behind the same
slices views (cuDNN takes no float32; the gpu tests run it in bf16), and on the CPU the Triton hops
run in the interpreter; gradients are held to float64 autograd of the spec, head by head."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn.attention import SDPBackend

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from errors import worst_head_err
from fa3_stand_in import stand_in_fa3
from gradients import poisoned_gradients  # noqa: F401  (a fixture)

from tbench.core.case import Case, Mode
from tbench.core.folding import hop_axes
from tbench.kernels import tensorized_backward as tb
from tbench.kernels import tensorized_dispatch as td
from tbench.kernels import tensorized_train_dispatch as ttd
from tbench.kernels.hop_backend import PackedBackward, TrainChain
from tbench.kernels.reference import tensorized_attention_f64, tensorized_hop_f64
from tbench.kernels.tensorized_autograd import tensorized_attention_train, tensorized_hop_train
from tbench.kernels.tensorized_dispatch import HopBackend
from tbench.kernels.tensors import make_inputs
from tbench.methods.catalog import load_registry

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
T, C, F3 = HopBackend.TRITON, HopBackend.CUDNN, HopBackend.FA3
STAGED, TABLE = PackedBackward.STAGED_BOXES, PackedBackward.TABLE
SDPA = SDPBackend.MATH


def _inputs(n: int, heads: int = 4, kv_heads: int = 2, d: int = 32, dtype: torch.dtype = torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed + n)
    draw = lambda h: torch.randn(1, h, n, d, generator=gen, dtype=torch.float64)  # noqa: E731
    return draw(heads), draw(kv_heads), draw(kv_heads), draw(heads)


def _grads(fn, inputs, dtype: torch.dtype, device: str) -> list[torch.Tensor]:
    q, k, v, d_out = inputs
    leaves = [x.to(device, dtype).requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    out.backward(d_out.to(device, out.dtype))
    return [out.detach(), *(x.grad for x in leaves)]



def _errors(fn, inputs, dims, causal, dtype=torch.float32, device=DEVICE) -> dict[str, float]:
    got = _grads(fn, inputs, dtype, device)
    ref = _grads(lambda q, k, v: tensorized_attention_f64(q, k, v, dims, causal), inputs, torch.float64, "cpu")
    return {name: worst_head_err(g, r) for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref, strict=True)}



@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(("dims", "backends"), [
    ((8, 16), (T, C)), ((16, 8), (C, T)), ((8, 16), (C, C)),
    ((4, 4, 8), (C, T, C)),  # the middle hop of m = 3 is no view: Triton runs it whatever is asked
    ((4, 8, 4), (T, T, C)),
], ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_mixed_chains_give_the_spec_gradients(dims, backends, causal,
                                              monkeypatch: pytest.MonkeyPatch):
    """GQA 4:2; each Triton hop's dq and dk are its own share, autograd adds them to the SDPA hops'."""
    n = 1
    for size in dims:
        n *= size
    inputs = _inputs(n)
    sdpa_hops: list[int] = []
    sdpa_hop = ttd.sdpa_hop
    monkeypatch.setattr(ttd, "sdpa_hop", lambda *args: sdpa_hops.append(args[4]) or sdpa_hop(*args))
    chain = TrainChain(backends, fused_backward=False)
    errors = _errors(lambda q, k, v: ttd.tensorized_attention_train_dispatch(q, k, v, dims, causal, None, chain, SDPA),
                     inputs, dims, causal)
    assert max(errors.values()) < 1e-5, errors
    # the hops asked of cuDNN ran on SDPA, except over a middle axis (slices two strides apart, no view)
    axes = hop_axes(len(dims))
    want = [axes[t] for t, b in enumerate(backends) if b is C and not 0 < axes[t] < len(dims) - 1]
    assert sdpa_hops == want


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.usefixtures("poisoned_gradients")
def test_one_triton_hop_alone_is_the_attention_inside_its_slices(causal):
    """A padded N (125 in 8 x 16) and a 4-head value on a 2-head key: hop 2 alone against float64."""
    dims, n = (8, 16), 125
    q, k, _, d_out = _inputs(n)
    value = torch.randn(1, 4, n, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def one_hop(q, k, value):  # the spec's hop along axis 0 (stride 16) alone, in float64
        return tensorized_hop_f64(q, k, value, dims, 0, causal, 32**-0.5)

    got = _grads(lambda a, b, c: tensorized_hop_train(a, b, c, dims, 0, causal, 32**-0.5), (q, k, value, d_out),
                 torch.float32, DEVICE)
    ref = _grads(one_hop, (q, k, value, d_out), torch.float64, "cpu")
    for name, g, r in zip(("out", "dq", "dk", "dvalue"), got, ref, strict=True):
        assert worst_head_err(g, r) < 1e-5, name


def test_a_hop_on_the_wrong_axis_is_caught():
    """The check behind the tests above: a chain whose SDPA hop runs the other axis fails it."""
    dims = (8, 16)
    inputs = _inputs(128)

    def broken(q, k, v):
        value = ttd.train_hop(T, q, k, v, dims, 1, True, 32**-0.5)
        return ttd.train_hop(C, q, k, value, dims, 1, True, 32**-0.5, SDPA)  # should be axis 0

    assert max(_errors(broken, inputs, dims, True).values()) > 1e-2


@pytest.mark.parametrize("n", [64, 63], ids=["exact", "padded"])
def test_forward_only_backends_are_refused(n):
    """Refused whatever the shape (a padded hop would otherwise fall back to Triton unnoticed)."""
    q, k, v = (x.to(DEVICE, torch.float32) for x in _inputs(n)[:3])
    refused = "hop backend 'FlashAttention-3' has no backward here; use one of Triton, cuDNN SDPA"
    with pytest.raises(ValueError, match=refused):
        ttd.tensorized_attention_train_dispatch(q, k, v, (8, 8), True, None, TrainChain((HopBackend.FA3, T), False))
    with pytest.raises(ValueError, match=refused):
        ttd.choose_train_chain(q, k, v, (8, 8), True, None, lambda step: 1.0, (T, HopBackend.FA3))
    with pytest.raises(ValueError, match="1 hop backends for 2 hops"):
        ttd.tensorized_attention_train_dispatch(q, k, v, (8, 8), True, None, TrainChain((T,), False))


def _timed(costs: dict[str, list[float]], log: list[str]):
    """A stand-in timer: runs the step, then charges the next cost of the kind of step it was
    (a Triton hop, an SDPA hop, or a whole chain)."""

    def seconds(step) -> float:
        grads = step()
        assert all(g is not None for g in grads)  # a step is a forward and every input's gradient
        kind = "chain" if len(log) >= 4 else ("triton" if len(log) % 2 == 0 else "sdpa")
        log.append(kind)
        return costs[kind].pop(0)

    return seconds


@pytest.mark.parametrize(("chains", "want"), [((2.0, 1.0), TrainChain((C, T), False)),
                                              ((2.0, 3.0), TrainChain.triton(2))],
                         ids=["mixed-faster", "fused-faster"])
def test_the_choice_keeps_the_faster_hop_then_the_faster_chain(chains, want):
    q, k, v, _ = (x.to(DEVICE, torch.float32) for x in _inputs(128))
    log: list[str] = []
    # hop 1: Triton 2 s, SDPA 1 s; hop 2: Triton 1 s, SDPA 2 s; then the fused chain and the mixed one
    costs = {"triton": [2.0, 1.0], "sdpa": [1.0, 2.0], "chain": list(chains)}
    chosen = ttd.choose_train_chain(q, k, v, (8, 16), True, None, _timed(costs, log), (T, C), SDPA,
                                    forward_candidates=())
    assert chosen == want
    assert log == ["triton", "sdpa", "triton", "sdpa", "chain", "chain"]


def test_the_choice_skips_a_refusing_backend_and_times_no_chain_when_triton_wins():
    q, k, v, _ = (x.to(DEVICE, torch.float32) for x in _inputs(128))
    times: list[float] = []

    def seconds(step) -> float:
        step()
        times.append(1.0)
        return 1.0

    # cuDNN refuses float32 (and a CPU tensor) before it is timed: each hop times Triton alone, its
    # forward + backward, then its forward; no chain
    chosen = ttd.choose_train_chain(q, k, v, (8, 16), True, None, seconds, (T, C), SDPBackend.CUDNN_ATTENTION,
                                    forward_candidates=(C,))
    assert chosen == TrainChain.triton(2) and len(times) == 4


def test_the_method_trains_on_the_fused_triton_chain_in_float32():
    """On a CPU nothing is chosen; on a GPU cuDNN refuses float32, so the choice is the fused chain."""
    registry = load_registry(plugins=False)
    case = Case("tensorized", "tensorized", 100, 1, 4, 2, 32, "fp32", True, DEVICE, order=2, dims=(10, 10),
                mode=Mode.FWD_BWD)
    q, k, v = (x.requires_grad_() for x in make_inputs(case, 1))
    out = registry.get("tensorized").bound(case)(q, k, v, case)
    got = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    want = torch.autograd.grad(tensorized_attention_train(q, k, v, (10, 10), True), (q, k, v), torch.ones_like(out))
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert "fused Triton chain" in registry.get("tensorized").provenance(case)


@pytest.mark.gpu
@pytest.mark.parametrize("chain", [
    *(TrainChain(backends, fused_backward=False) for backends in ((T, C), (C, T), (C, C))),
    *(TrainChain(forward, fused_backward=True) for forward in ((F3, C), (C, C), (C, T), (F3, T))),
    *(TrainChain(forward, True, (STAGED, STAGED)) for forward in ((T, T), (F3, C))),
], ids=lambda c: (f"{'-'.join(b.name for b in c.forward)}{'-fused' if c.fused_backward else ''}"
                  f"{'-staged' if c.staged_hops else ''}"))
def test_gpu_chains_match_the_fused_triton_chain(chain: TrainChain):
    """bf16, GQA 32:8, D = 128, 8k in 64 x 128, causal, against the fused Triton chain in float32
    (both against float32 SDPA would be the same bf16 rounding apart): the real cuDNN hops' forward
    and backward (mixed chains), and the real FA3 and cuDNN forwards' outputs and log-sum-exps behind
    the fused Triton backward. Those outputs come back contiguous, so the backward's blocked hops can
    still move them as TMA boxes; and the packed hop (slices of 64) in two stages with boxes."""
    if F3 in chain.forward and td.fa3_forward() is None:
        pytest.skip("FlashAttention-3 is not installed")
    inputs = _inputs(8192, 32, 8, 128)
    dims = (64, 128)
    if chain.fused_backward:
        q, k, v = (x.to("cuda", torch.bfloat16) for x in inputs[:3])
        saved = td.saved_forward_on(q, k, v, dims, True, 128**-0.5, chain.forward)
        assert all(out.is_contiguous() for out in saved.outputs)
    got = _grads(lambda q, k, v: ttd.tensorized_attention_train_dispatch(q, k, v, dims, True, None, chain),
                 inputs, torch.bfloat16, "cuda")
    want = _grads(lambda q, k, v: tensorized_attention_train(q, k, v, dims, True), inputs, torch.float32, "cuda")
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
        assert worst_head_err(g, w) < 2e-2, name


@pytest.mark.gpu
def test_gpu_method_in_training_says_what_it_chose():
    registry = load_registry(plugins=False)
    case = Case("tensorized", "tensorized", 16384, 1, 32, 8, 128, "bf16", True, "cuda", order=2, dims=(128, 128),
                mode=Mode.FWD_BWD)
    method = registry.get("tensorized")
    call = method.bound(case)
    q, k, v = (x.requires_grad_() for x in make_inputs(case, 1))
    out = call(q, k, v, case)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    assert all(torch.isfinite(g).all() for g in grads)
    text = method.provenance(case)
    chain = method.bind.__self__.chains[case.key]  # the HopDispatch behind the method
    if chain.all_triton:
        assert "forward and backward on the fused Triton chain" in text, text
    else:
        assert f"hop 1 (L=128): {chain.forward[0].value}; hop 2 (L=128): {chain.forward[1].value}" in text, text


@pytest.mark.gpu
def test_gpu_method_in_training_chooses_the_packed_backward_hop_by_hop():
    """m = 3 at 8k (slices of 16-32: every hop packed): the choice, timed for real, names exactly the
    hops it staged, and its step's gradients match the table's chain (`tensorized-triton`)."""
    registry = load_registry(plugins=False)
    case = Case("tensorized", "tensorized", 8192, 1, 32, 8, 128, "bf16", True, "cuda", order=3, dims=(16, 16, 32),
                mode=Mode.FWD_BWD)
    method = registry.get("tensorized")
    call = method.bound(case)
    chain = method.bind.__self__.chains[case.key]
    text = method.provenance(case)
    lengths = [case.dims[axis] for axis in hop_axes(3)]
    named = ", ".join(f"hop {t + 1} (L={lengths[t]})" for t in chain.staged_hops)
    assert (f"TMA boxes on {named})" in text) == bool(chain.staged_hops), text
    q, k, v = (x.requires_grad_() for x in make_inputs(case, 1))
    got = torch.autograd.grad(call(q, k, v, case), (q, k, v), torch.ones_like(q))
    want = torch.autograd.grad(tensorized_attention_train(q, k, v, case.dims, True), (q, k, v), torch.ones_like(q))
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert worst_head_err(g, w) < 1e-2, name


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(("dims", "forward"), [
    ((8, 16), (F3, C)), ((16, 8), (C, T)), ((8, 16), (C, C)), ((4, 8, 4), (F3, T, C)),
], ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_the_fused_backward_behind_a_library_forward_gives_the_spec_gradients(dims, forward, causal,
                                                                              monkeypatch: pytest.MonkeyPatch):
    """GQA 4:2; FA3 (a stand-in) and cuDNN (ATen's CPU flash kernel here) run the forward and hand
    their outputs and log-sum-exps to the fused Triton backward."""
    monkeypatch.setattr(td, "fa3_forward", lambda: stand_in_fa3([]))
    n = 1
    for size in dims:
        n *= size
    chain = TrainChain(forward, fused_backward=True)
    errors = _errors(lambda q, k, v: ttd.tensorized_attention_train_dispatch(q, k, v, dims, causal, None, chain),
                     _inputs(n), dims, causal)
    assert max(errors.values()) < 1e-5, errors


def test_a_library_forward_with_its_log_sum_exps_misread_is_caught(monkeypatch: pytest.MonkeyPatch):
    """The check above fails when the libraries' log-sum-exps reach the backward in natural log."""
    monkeypatch.setattr(td, "fa3_forward", lambda: stand_in_fa3([]))
    monkeypatch.setattr(td, "_LOG2E", 1.0)
    chain = TrainChain((F3, C), fused_backward=True)
    errors = _errors(lambda q, k, v: ttd.tensorized_attention_train_dispatch(q, k, v, (8, 16), True, None, chain),
                     _inputs(128), (8, 16), True)
    assert errors["out"] < 1e-5 and min(errors["dq"], errors["dk"], errors["dv"]) > 1e-2, errors


def test_recompute_behind_a_library_forward_is_refused():
    q, k, v = (x.to(DEVICE, torch.float32) for x in _inputs(128)[:3])
    with pytest.raises(ValueError, match=r"recompute runs the forward's hops again on Triton; forward_backends "
                                         r"\['FlashAttention-3', 'Triton'\] would save log-sum-exps of other hops"):
        tensorized_attention_train(q, k, v, (8, 16), True, recompute=True, forward_backends=(F3, T))
    with pytest.raises(ValueError, match="1 forward backends for 2 hops"):
        tensorized_attention_train(q, k, v, (8, 16), True, forward_backends=(F3,))


@pytest.mark.parametrize(("costs", "want"), [
    ((3.0, 2.0, 1.0), TrainChain((F3, T), True)),  # fused, mixed, library forward: the last fastest
    ((3.0, 1.0, 2.0), TrainChain((C, T), False)),
    ((1.0, 2.0, 3.0), TrainChain.triton(2)),
], ids=["library-forward", "mixed", "fused"])
def test_the_choice_times_the_library_forward_chain_beside_the_others(costs, want, monkeypatch: pytest.MonkeyPatch):
    """Hop 1 goes to SDPA in the mixed chain and to FA3 (a stand-in) in the forward; hop 2 stays on
    Triton in both. Then the three chains are timed end to end, each with a real step."""
    monkeypatch.setattr(td, "fa3_forward", lambda: stand_in_fa3([]))
    q, k, v, _ = (x.to(DEVICE, torch.float32) for x in _inputs(128))
    chains: list[object] = []
    seconds = _scripted([2.0, 1.0, 1.0, 2.0,  # forward + backward: hop 1 Triton, SDPA; hop 2 Triton, SDPA
                         2.0, 1.0, 1.0],  # forward: hop 1 Triton, FA3 (cuDNN refuses the CPU); hop 2 Triton
                        costs, chains)
    chosen = ttd.choose_train_chain(q, k, v, (8, 16), True, None, seconds, (T, C), SDPA, forward_candidates=(C, F3))
    assert chosen == want and len(chains) == 3


def _scripted(hop_costs: list[float], chain_costs: tuple[float, ...], chains: list[object]):
    """A stand-in timer: runs the step, charges the hops' costs in order, then the chains' (each a
    whole step with every input's gradient, kept in `chains`)."""
    hops, whole = iter(hop_costs), iter(chain_costs)

    def seconds(step) -> float:
        result = step()
        cost = next(hops, None)
        if cost is not None:
            return cost
        chains.append(result)
        assert len(result) == 3 and all(torch.isfinite(g).all() for g in result)
        return next(whole)

    return seconds


@pytest.mark.parametrize(("costs", "forms"), [
    # the fused Triton chain, the same staged on both hops, then hop 1 and hop 2 alone back on the table
    ((2.0, 1.0, 1.5, 1.5), (STAGED, STAGED)),
    ((2.0, 1.0, 1.5, 0.5), (STAGED, TABLE)),
    ((2.0, 1.0, 0.8, 0.9, 0.5), ()),  # each faster alone, both together faster still: the table's chain
    ((2.0, 1.0, 0.8, 0.9, 0.95), (TABLE, STAGED)),  # both together slower than hop 1 alone
    ((1.0, 2.0), ()),  # the table's chain wins: no hop is tried
], ids=["staged", "hop-2-on-table", "both-on-table", "hop-1-on-table", "table"])
def test_the_choice_times_the_packed_backward_in_two_stages_on_16_bit_operands(costs, forms):
    """bf16 with slices of 16 and 8 (the packed kernel's): Triton wins both hops, so the chains timed
    are the fused Triton chain and the same with its packed backward in two stages and boxes; if that
    wins, each hop back on the table's tile, and both where both were faster. Each is a real step;
    the fastest is chosen. (In float32 the fused chain is timed alone: four hop timings and no chain
    in test_the_choice_skips_a_refusing_backend_and_times_no_chain_when_triton_wins.)"""
    q, k, v, _ = (x.to(DEVICE, torch.bfloat16) for x in _inputs(128))
    chains: list[object] = []
    # forward + backward: hop 1 Triton, SDPA; hop 2 Triton, SDPA
    seconds = _scripted([1.0, 2.0, 1.0, 2.0], costs, chains)
    chosen = ttd.choose_train_chain(q, k, v, (8, 16), True, None, seconds, (T, C), SDPA, forward_candidates=())
    assert chosen == TrainChain((T, T), True, forms) and len(chains) == len(costs)


def test_no_hop_short_enough_for_the_packed_kernel_times_no_staged_chain(monkeypatch: pytest.MonkeyPatch):
    """Every hop on the blocked kernels (none packed): the fused Triton chain alone, no chain timed."""
    monkeypatch.setattr(tb, "PACKED_MAX_LEN", 0)
    q, k, v, _ = (x.to(DEVICE, torch.bfloat16) for x in _inputs(128))
    times: list[float] = []

    def seconds(step) -> float:
        step()
        times.append(1.0)
        return 1.0 if len(times) % 2 == 1 else 2.0  # Triton's hops (timed first) cheaper than SDPA's

    chosen = ttd.choose_train_chain(q, k, v, (8, 16), True, None, seconds, (T, C), SDPA, forward_candidates=())
    assert chosen == TrainChain.triton(2) and len(times) == 4


@pytest.mark.parametrize(("forms", "stages", "named"), [
    ((STAGED, STAGED), [2, 2], "hop 1 (L=16), hop 2 (L=8))"),
    ((STAGED, TABLE), [1, 2], "hop 1 (L=16))"),  # the backward runs hop 2 first
], ids=["both-hops", "hop-1"])
@pytest.mark.usefixtures("poisoned_gradients")
def test_the_method_trains_on_a_staged_chain_it_chose(forms, stages, named, planned_launches: list[tb.KernelLaunch]):
    """A chain with the staged packed backward, once chosen, is what `tensorized` runs and names, hop
    by hop (the table's chain would be `tensorized-triton`'s call); its gradients are the spec's."""
    registry = load_registry(plugins=False)
    case = Case("tensorized", "tensorized", 128, 1, 4, 2, 32, "bf16", True, DEVICE, order=2, dims=(8, 16),
                mode=Mode.FWD_BWD)
    method = registry.get("tensorized")
    method.bind.__self__.chains[case.key] = TrainChain((T, T), True, forms)  # as a GPU's timing would leave it
    inputs = _inputs(128)
    errors = _errors(lambda q, k, v: method.bound(case)(q, k, v, case), inputs, (8, 16), True, torch.bfloat16)
    assert max(errors.values()) < 2e-2, errors
    launched = [launch.kwargs["num_stages"] for launch in planned_launches if launch.kernel is tb._packed_kernel]
    assert launched == stages
    text = method.provenance(case)
    assert f"fused Triton chain (its packed kernel in two pipeline stages, TMA boxes on {named}" in text, text
