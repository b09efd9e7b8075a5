"""Gradients of tensorized attention: the Triton backward and autograd through the SDPA composition,
against float64 autograd of the spec (kernels/reference.py).

Without a GPU the kernels run in Triton's interpreter on CPU tensors, so the shapes are tiny; every
order m = 2, 3, 4, GQA and MHA, causal and not, and N not a product of the dims all appear, and the
errors are checked head by head. With a GPU, the tests marked gpu compare long sequences with the
float32 SDPA composition.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, replace

import pytest
import torch
from triton.tools.tensor_descriptor import TensorDescriptor

if not torch.cuda.is_available():
    # must precede the kernel modules' import, which defines the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from errors import worst_head_err
from gradients import poisoned_gradients  # noqa: F401  (a fixture)

from tbench.core.folding import hop_axes, resolve_dims
from tbench.kernels import tensorized_backward as tb
from tbench.kernels.hop_backend import PackedBackward
from tbench.kernels.reference import tensorized_attention_f64
from tbench.kernels.tensorized_autograd import tensorized_attention_train
from tbench.kernels.tensorized_sdpa import tensorized_attention_sdpa

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32, BF16 = torch.float32, torch.bfloat16
# fp32 kernels land near 5e-7 of the float64 gradients; bf16 rounds operands and intermediates
TOLERANCE = {F32: 1e-5, BF16: 2e-2}


@dataclass(frozen=True)
class Case:
    n: int
    m: int
    causal: bool
    dtype: torch.dtype = F32
    dims: tuple[int, ...] | None = None
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 32
    batch: int = 1
    layout: str = "bhnd"  # "bnhd": q, k, v are transposed views of (B, N, H, D) tensors

    def __str__(self) -> str:
        dims = "x".join(map(str, self.resolved_dims))
        dtype = str(self.dtype).removeprefix("torch.")
        mask = "causal" if self.causal else "full"
        return (f"N{self.n}-{dims}-{mask}-{dtype}-B{self.batch}H{self.heads}kv{self.kv_heads}"
                f"-D{self.head_dim}-{self.layout}")

    @property
    def resolved_dims(self) -> tuple[int, ...]:
        return resolve_dims(self.n, self.m, self.dims)


def _inputs(case: Case) -> tuple[torch.Tensor, ...]:
    """q, k, v and the output's gradient, standard normal, in float32 on the CPU."""
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))

    def draw(heads: int) -> torch.Tensor:
        return torch.randn(case.batch, heads, case.n, case.head_dim, generator=gen)

    return draw(case.heads), draw(case.kv_heads), draw(case.kv_heads), draw(case.heads)


def _leaf(x: torch.Tensor, case: Case, dtype: torch.dtype, device: str) -> torch.Tensor:
    if case.layout == "bnhd":
        x = x.transpose(1, 2).contiguous().to(device=device, dtype=dtype).transpose(1, 2)
    else:
        x = x.to(device=device, dtype=dtype).clone()
    return x.requires_grad_()


def _grads(fn, case: Case, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, ...]:
    """(out, dq, dk, dv) of fn(q, k, v, dims, causal) under autograd, given the case's dO."""
    q, k, v, d_out = _inputs(case)
    leaves = [_leaf(x, case, dtype, device) for x in (q, k, v)]
    out = fn(*leaves, case.resolved_dims, case.causal)
    out.backward(d_out.to(device=device, dtype=out.dtype))
    return (out.detach(), *(x.grad for x in leaves))



def _check_against_spec(fn, case: Case, device: str = DEVICE) -> None:
    got = _grads(fn, case, case.dtype, device)
    ref = _grads(tensorized_attention_f64, case, torch.float64, "cpu")
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref, strict=True):
        assert g.dtype == case.dtype and g.shape == r.shape, f"{case}: {name} {g.dtype} {tuple(g.shape)}"
        assert not torch.isnan(g).any(), f"{case}: NaN in {name}"
        err = worst_head_err(g, r)
        assert err <= TOLERANCE[case.dtype], f"{case}: {name} relative error {err:.2e}"



KERNEL_CASES = [
    # every order, both masks, GQA and MHA; every N is padded (not a product of the dims)
    Case(30, 2, False, heads=4, kv_heads=2),
    Case(30, 2, True),
    Case(50, 3, True, heads=4, kv_heads=2),
    Case(100, 3, False, dims=(3, 5, 7)),
    Case(23, 4, True, dims=(2, 2, 2, 3), heads=4, kv_heads=2),
    Case(23, 4, False, dims=(2, 3, 2, 2), heads=4, kv_heads=1),
    # bf16, batch > 1 and strided rows
    Case(60, 2, True, BF16, heads=4, kv_heads=2, batch=2, layout="bnhd"),
    Case(50, 3, False, BF16, heads=4, kv_heads=2),
    # slices longer than the packed kernel's (blocked kernels: several key and query blocks, causal
    # block bounds), and one longer than the forward's packed kernel (its flash kernel saves the
    # log-sum-exp)
    Case(135, 2, True, dims=(70, 2), kv_heads=1),
    Case(129, 1, False, dims=(130,), kv_heads=1),
]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_triton_gradients_match_float64_spec(case: Case) -> None:
    _check_against_spec(tensorized_attention_train, case)


# dims that fill N, contiguous tensors: the backward's tiles move as TMA boxes (packed: slice-major
# on the innermost axis, coordinate-major on outer ones; axis 1 of 4 x 6 x 4 cannot: eight slices of a
# tile would straddle two values of a, so pointer loads), and so do the forward's
BOXED_CASES = [
    Case(64, 2, True, dims=(8, 8), heads=4, kv_heads=2),
    Case(96, 3, False, dims=(4, 6, 4), heads=4, kv_heads=1),
    Case(128, 2, True, BF16, dims=(16, 8), heads=4, kv_heads=2),
    Case(64, 2, False, dims=(8, 8)),
    # slices longer than the packed kernel's: the blocked kernels, several blocks, a ragged last one
    Case(140, 2, True, dims=(70, 2), heads=4, kv_heads=2),
    Case(160, 2, False, dims=(2, 80), heads=4, kv_heads=1),
]


@pytest.mark.parametrize("kernels", ["table", "packed-boxes", "packed-two-slices-a-tile", "blocked"])
@pytest.mark.parametrize("case", BOXED_CASES, ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_tiles_through_tma_boxes(case: Case, kernels: str, planned_launches: list[tb.KernelLaunch],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The blocked kernels' tiles move as TMA boxes; the packed kernel's do where its tile asks for
    boxes (the table's tiles do not) and its slices fit one box; the gradients stay the spec's."""
    table_tile = tb.packed_tile
    if kernels == "packed-boxes":
        monkeypatch.setattr(tb, "packed_tile", lambda length, dtype: replace(table_tile(length, dtype), boxes=True))
    elif kernels == "packed-two-slices-a-tile":
        monkeypatch.setattr(tb, "packed_tile", lambda length, dtype: tb.PackedTile(32, 4, 1, boxes=True))
    elif kernels == "blocked":
        monkeypatch.setattr(tb, "PACKED_MAX_LEN", 0)
    _check_against_spec(tensorized_attention_train, case)
    # (packed kernel, boxed) per launch
    launched = [(launch.kernel is tb._packed_kernel, any(isinstance(arg, TensorDescriptor) for arg in launch.args))
                for launch in planned_launches]
    assert launched
    assert all(boxed for packed, boxed in launched if not packed)
    packed_boxed = [boxed for packed, boxed in launched if packed]
    # 4 x 6 x 4's axis 1 with 8 slices a tile would straddle two values of a: pointer loads
    straddles = case.dims == (4, 6, 4) and kernels == "packed-boxes"
    assert sum(packed_boxed) == (0 if kernels == "table" else len(packed_boxed) - straddles)


def _staged(q, k, v, dims, causal):
    return tensorized_attention_train(q, k, v, dims, causal, packed_backward=(PackedBackward.STAGED_BOXES,) * len(dims))


@pytest.mark.parametrize("case", [
    BOXED_CASES[2],  # bf16 m = 2, dims that fill N: boxes
    Case(96, 3, False, BF16, dims=(4, 6, 4), heads=4, kv_heads=1),  # axis 1 straddles: pointers there
    KERNEL_CASES[7],  # bf16 m = 3, padded N: pointers
    KERNEL_CASES[6],  # bf16, batch 2, strided rows: pointers
    BOXED_CASES[1],  # float32 keeps the table's tile
], ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_packed_backward_in_two_stages_with_boxes(case: Case, planned_launches: list[tb.KernelLaunch]) -> None:
    """PackedBackward.STAGED_BOXES on 16-bit operands: every packed launch takes two pipeline stages,
    its tiles as TMA boxes where the dims fill N and the tensors are contiguous, else through pointers;
    float32 launches the table's tile. The gradients stay the spec's."""
    _check_against_spec(_staged, case)
    packed = [launch for launch in planned_launches if launch.kernel is tb._packed_kernel]
    assert packed
    table = tb.packed_tile(8, case.dtype)
    staged = case.dtype == BF16
    assert all(launch.kwargs["num_stages"] == (2 if staged else table.num_stages) for launch in packed)
    boxed = [any(isinstance(arg, TensorDescriptor) for arg in launch.args) for launch in packed]
    fills = math.prod(case.resolved_dims) == case.n and case.layout == "bhnd"
    straddles = case.resolved_dims == (4, 6, 4)  # axis 1, as in test_tiles_through_tma_boxes
    assert sum(boxed) == (len(boxed) - straddles if staged and fills else 0)


def test_packed_backward_forms_apply_hop_by_hop(planned_launches: list[tb.KernelLaunch]) -> None:
    """Hops 1 and 3 of m = 3 in two stages with boxes, hop 2 on the table's tile: the backward (hop 3
    first) launches each hop's own form, and the gradients stay the spec's."""
    case = Case(64, 3, True, BF16, dims=(4, 4, 4), heads=4, kv_heads=2)
    staged, table = PackedBackward.STAGED_BOXES, PackedBackward.TABLE

    def one_table_hop(q, k, v, dims, causal):
        return tensorized_attention_train(q, k, v, dims, causal, packed_backward=(staged, table, staged))

    _check_against_spec(one_table_hop, case)
    packed = [launch for launch in planned_launches if launch.kernel is tb._packed_kernel]
    assert [launch.kwargs["num_stages"] for launch in packed] == [2, 1, 2]
    assert [any(isinstance(arg, TensorDescriptor) for arg in launch.args) for launch in packed] == [True, False, True]


def test_packed_backward_forms_must_name_every_hop() -> None:
    q, k, v, _ = (x.to(DEVICE) for x in _inputs(Case(64, 3, True, dims=(4, 4, 4))))
    with pytest.raises(ValueError, match="2 packed backward forms for 3 hops"):
        tensorized_attention_train(q, k, v, (4, 4, 4), True, packed_backward=(PackedBackward.STAGED_BOXES,) * 2)


def test_the_table_chain_keeps_one_stage_and_pointer_loads(planned_launches: list[tb.KernelLaunch]) -> None:
    """The default backward (what `tensorized-triton` runs) is the table's packed tile, unchanged."""
    case = BOXED_CASES[2]
    _check_against_spec(tensorized_attention_train, case)
    packed = [launch for launch in planned_launches if launch.kernel is tb._packed_kernel]
    assert packed and all(launch.kwargs["num_stages"] == tb.packed_tile(8, BF16).num_stages for launch in packed)
    assert not any(isinstance(arg, TensorDescriptor) for launch in packed for arg in launch.args)


def _recomputing(q, k, v, dims, causal):
    return tensorized_attention_train(q, k, v, dims, causal, recompute=True)


@pytest.mark.parametrize("case", [KERNEL_CASES[2], KERNEL_CASES[4], KERNEL_CASES[6]], ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_recomputed_intermediates_give_the_same_gradients(case: Case) -> None:
    """m = 3 and 4 with GQA, and bf16 with batch 2 and strided rows: the backward that runs hops
    1..m-1 again is as exact as the one that kept them, and equal to it bit for bit."""
    _check_against_spec(_recomputing, case)
    kept = _grads(tensorized_attention_train, case, case.dtype, DEVICE)
    again = _grads(_recomputing, case, case.dtype, DEVICE)
    for name, a, b in zip(("out", "dq", "dk", "dv"), kept, again, strict=True):
        assert torch.equal(a, b), f"{case}: {name} differs when recomputed"


def _held_between_passes(fn, case: Case) -> int:
    """Bytes autograd keeps from the forward for the backward, beyond q, k and v themselves."""
    q, k, v, _ = (x.to(DEVICE).requires_grad_() for x in _inputs(case))
    held: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: held.append(t) or t, lambda t: t):
        out = fn(q, k, v, case.resolved_dims, case.causal)
    inputs = {x.data_ptr() for x in (q, k, v)}
    del out
    return sum(t.numel() * t.element_size() for t in held if t.data_ptr() not in inputs)


def test_recompute_keeps_one_output_instead_of_m() -> None:
    case = Case(64, 3, True, heads=4, kv_heads=2, dims=(4, 4, 4))
    e = case.batch * case.heads * case.n * case.head_dim * 4  # one hop output, fp32
    lses = 3 * case.batch * case.heads * case.n * 4
    assert _held_between_passes(tensorized_attention_train, case) == 3 * e + lses
    assert _held_between_passes(_recomputing, case) == e + lses


BLOCKED_CASES = [
    Case(50, 3, False, heads=4, kv_heads=2),
    Case(30, 2, True, heads=4, kv_heads=1, batch=2, layout="bnhd"),
]


@pytest.mark.parametrize("case", BLOCKED_CASES, ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_blocked_kernels_on_short_slices(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocked kernels (dK/dV and dQ apart) on every hop, short and padded slices included."""
    monkeypatch.setattr(tb, "PACKED_MAX_LEN", 0)
    _check_against_spec(tensorized_attention_train, case)


UNEQUAL_TILES = [
    # dK/dV holding more keys than it walks queries, dQ the other way round, and the mirror: the
    # causal split into masked (diagonal) and unmasked blocks depends on both sizes
    tb.BackwardBlocks(dkdv=tb.Tile(16, 32), dq=tb.Tile(32, 16)),
    tb.BackwardBlocks(dkdv=tb.Tile(32, 16), dq=tb.Tile(16, 32)),
]


@pytest.mark.parametrize("blocks", UNEQUAL_TILES, ids=["tall-keys", "tall-queries"])
@pytest.mark.parametrize("case", [Case(135, 2, True, dims=(70, 2), kv_heads=1),
                                  Case(140, 2, False, dims=(2, 71), heads=4, kv_heads=2)], ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_blocked_kernels_with_unequal_tiles(
    case: Case, blocks: tb.BackwardBlocks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tb, "backward_blocks", lambda length, dtype: blocks)
    _check_against_spec(tensorized_attention_train, case)


def _saved_forward(case: Case) -> tuple[tuple[torch.Tensor, ...], tb.SavedForward, float]:
    """(q, k, v, dO) on the device in the case's dtype, the training forward's saved hops, the scale."""
    q, k, v, d_out = (_leaf(x, case, case.dtype, DEVICE).detach() for x in _inputs(case))
    scale = case.head_dim**-0.5
    return (q, k, v, d_out), tb.forward_with_saved(q, k, v, case.resolved_dims, case.causal, scale), scale


HANDED_CASES = [Case(50, 3, True, heads=4, kv_heads=2), Case(60, 2, False, BF16, heads=4, kv_heads=2, batch=2,
                                                                   layout="bnhd")]


@pytest.mark.parametrize("kernels", ["packed", "blocked"])
@pytest.mark.parametrize("case", HANDED_CASES, ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_a_hop_hands_the_previous_hop_its_delta(case: Case, kernels: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last hop's backward writes rowsum(dO * O) of the hop before (dO its value's gradient, O its
    value) for every row; the hop before, given it, never reads its own output (NaN here) and
    gives the gradients it gives when it forms Delta itself."""
    if kernels == "blocked":
        monkeypatch.setattr(tb, "PACKED_MAX_LEN", 0)
    (q, k, v, d_out), saved, scale = _saved_forward(case)
    dims, hops = case.resolved_dims, hop_axes(case.m)
    t = case.m - 1

    def hop(t: int, d_value: torch.Tensor, out: torch.Tensor, deltas: tb.Deltas) -> tuple[torch.Tensor, ...]:
        value = v if t == 0 else saved.outputs[t - 1]
        dq, dk = torch.empty(q.shape, device=DEVICE), torch.empty(k.shape, device=DEVICE)
        d_prev = torch.full_like(value, float("nan"))
        tb._launch_hop_backward(q, k, value, out, d_value, saved.lses[t], tb.Gradients(dq, dq, dk, dk, False), d_prev,
                                dims, hops[t], case.causal, scale, deltas=deltas)
        return dq, dk, d_prev

    handed = torch.full_like(saved.lses[0], float("nan"))
    d_value = d_out.contiguous()
    _, _, d_prev = hop(t, d_value, saved.outputs[t], tb.Deltas(previous=handed))
    expected = (d_prev.float() * saved.outputs[t - 1].float()).sum(-1)
    # the hop sums P * dP, which equals rowsum(dO * O) of the hop before up to rounding; in bf16, dO's
    # (d_prev is stored in bf16)
    tolerance = 1e-5 if case.dtype == F32 else 1e-2
    assert not torch.isnan(handed).any(), f"{case}: a row's Delta was not handed"
    assert worst_head_err(handed.unsqueeze(-1), expected.unsqueeze(-1)) <= tolerance, f"{case}: handed Delta differs"

    formed = hop(t - 1, d_prev, saved.outputs[t - 1], tb.Deltas())
    given = hop(t - 1, d_prev, torch.full_like(saved.outputs[t - 1], float("nan")), tb.Deltas(given=handed))
    for name, a, b in zip(("dq", "dk", "dv"), formed, given, strict=True):
        assert not torch.isnan(b).any(), f"{case}: NaN in {name}: the hop read its output"
        assert worst_head_err(b, a) <= tolerance, f"{case}: {name} differs with the handed Delta"


@pytest.mark.parametrize("case,blocked", [
    (KERNEL_CASES[2], False), (KERNEL_CASES[4], False), (KERNEL_CASES[6], False),
    # a middle hop whose slices span two key blocks, every query seeing every key: a hop that wrote
    # the previous hop's Delta over its own would corrupt rows that another block still reads
    (Case(160, 3, False, dims=(2, 40, 2), heads=4, kv_heads=2), True),
    # causal slices of 70: a key block's sums run through the masked (diagonal) and unmasked query blocks
    (Case(135, 2, True, dims=(70, 2), kv_heads=1), True),
], ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_handing_deltas_keeps_the_gradients(case: Case, blocked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole backward with Delta handed between hops against the one whose hops form their own."""
    if blocked:
        monkeypatch.setattr(tb, "PACKED_MAX_LEN", 0)
    (q, k, v, d_out), saved, scale = _saved_forward(case)
    handed = tb.backward_from_saved(d_out, q, k, v, saved, case.resolved_dims, case.causal, scale)
    formed = tb.backward_from_saved(d_out, q, k, v, saved, case.resolved_dims, case.causal, scale, hand_deltas=False)
    for name, a, b in zip(("dq", "dk", "dv"), formed, handed, strict=True):
        assert worst_head_err(b, a) <= (1e-5 if case.dtype == F32 else 1e-2), f"{case}: {name} differs"


def test_deltas_of_the_wrong_form_are_refused() -> None:
    case = Case(16, 2, True, dims=(4, 4), heads=4, kv_heads=2)
    (q, k, v, d_out), saved, scale = _saved_forward(case)
    dq, dk = torch.empty(q.shape, device=DEVICE), torch.empty(k.shape, device=DEVICE)
    grads = tb.Gradients(dq, dq, dk, dk, False)
    lse, hops = saved.lses[1], hop_axes(case.m)
    with pytest.raises(ValueError, match=r"Deltas\.given must be float32 \(1, 4, 16\).*got torch.float16"):
        tb.plan_hop_backward(q, k, saved.outputs[0], saved.outputs[1], d_out, lse, grads,
                             torch.empty_like(q), case.resolved_dims, hops[1], True, scale,
                             deltas=tb.Deltas(given=lse.half()))
    with pytest.raises(ValueError, match=r"Deltas\.given and Deltas\.previous must be different buffers"):
        tb.plan_hop_backward(q, k, saved.outputs[0], saved.outputs[1], d_out, lse, grads,
                             torch.empty_like(q), case.resolved_dims, hops[1], True, scale,
                             deltas=tb.Deltas(given=lse, previous=lse))
    # the first hop's value has the kv heads (and no hop comes before it)
    with pytest.raises(ValueError, match=r"Deltas\.previous needs a value with one head per query head"):
        tb.plan_hop_backward(q, k, v, saved.outputs[0], d_out, saved.lses[0], grads, torch.empty_like(v),
                             case.resolved_dims, hops[0], True, scale, deltas=tb.Deltas(previous=torch.empty_like(lse)))


SDPA_CASES = [
    Case(30, 2, False, heads=4, kv_heads=2),
    Case(50, 3, True, heads=4, kv_heads=2),  # B = 1: hop 1 uses SDPA's own GQA
    Case(23, 4, False, dims=(2, 3, 2, 2), heads=4, kv_heads=1, batch=2),
]


@pytest.mark.parametrize("case", SDPA_CASES, ids=str)
def test_sdpa_composition_gradients_match_float64_spec(case: Case) -> None:
    _check_against_spec(tensorized_attention_sdpa, case, device="cpu")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("fn", [tensorized_attention_f64, tensorized_attention_sdpa], ids=["reference", "sdpa"])
def test_gradcheck_in_float64(fn, causal: bool) -> None:
    """Finite differences agree with the analytic gradients of the float64 compositions (GQA,
    padded: N = 5 in 2 x 3). The Triton kernels have no float64 path; they are held to these."""
    gen = torch.Generator().manual_seed(7)

    def draw(heads: int) -> torch.Tensor:
        return torch.randn(1, heads, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)

    inputs = (draw(2), draw(1), draw(1))
    assert torch.autograd.gradcheck(lambda q, k, v: fn(q, k, v, (2, 3), causal), inputs)


def test_gradients_only_for_inputs_that_need_them() -> None:
    """Under autograd like any op: a frozen k gets no gradient, and a second backward through
    the same graph (retain_graph) gives the same gradients."""
    case = Case(30, 2, True, heads=4, kv_heads=2)
    q, k, v, d_out = _inputs(case)
    q, v = (x.to(DEVICE).requires_grad_() for x in (q, v))
    k = k.to(DEVICE)
    out = tensorized_attention_train(q, k, v, case.resolved_dims, True)
    (dq1, dv1) = torch.autograd.grad(out, (q, v), d_out.to(DEVICE), retain_graph=True)
    (dq2, dv2) = torch.autograd.grad(out, (q, v), d_out.to(DEVICE))
    assert k.grad is None
    assert torch.equal(dq1, dq2) and torch.equal(dv1, dv2)


def test_bad_input_is_refused_with_the_reason() -> None:
    q = torch.randn(1, 3, 16, 32, device=DEVICE)
    k = torch.randn(1, 2, 16, 32, device=DEVICE)
    with pytest.raises(ValueError, match="query heads 3 are not a multiple of kv heads 2"):
        tensorized_attention_train(q, k, k, (4, 4), True)
    with pytest.raises(ValueError, match="scale"):
        tensorized_attention_train(k, k, k, (4, 4), True, scale=-1.0)


def _check_against_float32_composition(fn, case: Case) -> None:
    """bf16 gradients on the GPU against autograd of the float32 SDPA composition, head by head."""
    got = _grads(fn, case, BF16, "cuda")
    ref = _grads(tensorized_attention_sdpa, case, F32, "cuda")
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref, strict=True):
        assert not torch.isnan(g).any(), f"NaN in {name}"
        err = worst_head_err(g, r)
        assert err <= 2e-2, f"{case}: {name} relative error {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("n,packed_boxes", [(8192 - 5, False), (8192, False), (8192, True)],
                         ids=["pointer-loads", "tma-boxes", "packed-tma-boxes"])
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gpu_matches_float32_sdpa_composition(m: int, causal: bool, n: int, packed_boxes: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Long bf16 sequences: the kernel's gradients against autograd of the float32 composition; a
    padded N loads through pointers, an N the dims fill moves the blocked kernels' tiles as TMA
    boxes, and the packed kernel's too where its tile asks for them."""
    if packed_boxes:
        table_tile = tb.packed_tile
        monkeypatch.setattr(tb, "packed_tile", lambda length, dtype: replace(table_tile(length, dtype), boxes=True))
    case = Case(n, m, causal, BF16, heads=8, kv_heads=2, head_dim=128)
    _check_against_float32_composition(tensorized_attention_train, case)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8192 - 5, 8192], ids=["pointer-loads", "tma-boxes"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gpu_staged_packed_backward_matches_float32_sdpa_composition(causal: bool, n: int) -> None:
    """The packed kernel compiled in two pipeline stages (m = 3: every hop packed), its tiles as TMA
    boxes where the dims fill N, against autograd of the float32 composition."""
    case = Case(n, 3, causal, BF16, heads=8, kv_heads=2, head_dim=128)
    _check_against_float32_composition(_staged, case)


@pytest.mark.gpu
def test_gpu_recompute_matches_the_kept_intermediates_bit_for_bit() -> None:
    """The compiled kernels rerun in the backward give back the forward's intermediates exactly."""
    case = Case(8192 - 5, 3, True, BF16, heads=8, kv_heads=2, head_dim=128)
    kept = _grads(tensorized_attention_train, case, BF16, "cuda")
    again = _grads(_recomputing, case, BF16, "cuda")
    for name, a, b in zip(("out", "dq", "dk", "dv"), kept, again, strict=True):
        assert torch.equal(a, b), f"{case}: {name} differs when recomputed"


@pytest.fixture
def poisoned_allocations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every float tensor made by torch.empty / empty_like starts as NaN: an accumulator that is
    added to before anything is written there shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(x: torch.Tensor) -> torch.Tensor:
        return x.fill_(float("nan")) if x.is_floating_point() else x

    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: poisoned(empty(*args, **kwargs)))
    monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: poisoned(empty_like(*args, **kwargs)))


def _fused(q, k, v, dims, causal):
    return tensorized_attention_train(q, k, v, dims, causal, fused_dq=True)


FUSED_CASES = [
    # every hop blocked (the packed kernel's slices sent to the blocked kernels): the first hop of the
    # backward adds to zeros, the last one's sum is converted; m = 1 is both
    (Case(50, 3, False, heads=4, kv_heads=2), True),
    (Case(30, 2, True, heads=4, kv_heads=1, batch=2, layout="bnhd"), True),
    (Case(60, 2, True, BF16, heads=4, kv_heads=2), True),
    (Case(129, 1, False, dims=(130,), kv_heads=1), False),
    # one blocked hop and one packed: the packed hop writes (first) or adds to (last) the float32 sum
    (Case(135, 2, True, dims=(70, 2), kv_heads=1), False),
    (Case(140, 2, False, dims=(2, 71), heads=4, kv_heads=2), False),
]


@pytest.mark.parametrize("case,all_blocked", FUSED_CASES, ids=lambda x: str(x) if isinstance(x, Case) else "")
@pytest.mark.usefixtures("poisoned_gradients", "poisoned_allocations")
def test_dq_fused_into_the_dkdv_kernel_gives_the_spec_gradients(case: Case, all_blocked: bool,
                                                                planned_launches: list[tb.KernelLaunch],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if all_blocked:
        monkeypatch.setattr(tb, "PACKED_MAX_LEN", 0)
    _check_against_spec(_fused, case)
    launched = [launch.kernel.fn.__name__ for launch in planned_launches]
    assert "_dq_kernel" not in launched and "_dkdv_kernel" in launched
    # Delta formed by its own kernel only where no later hop hands it over: the first hop of the backward
    first = case.resolved_dims[hop_axes(case.m)[-1]]
    assert launched.count("_delta_kernel") == (first > tb.PACKED_MAX_LEN)


def test_fused_dq_needs_one_float32_accumulator() -> None:
    case = Case(140, 1, True, dims=(140,))
    (q, k, v, d_out), saved, scale = _saved_forward(case)
    blocks = tb.fused_blocks(140, q.dtype)
    one_bf16 = q.to(BF16)
    for dq_src, dq_dst, why in ((torch.zeros_like(q), torch.zeros_like(q), "float32 and float32, two tensors"),
                                (one_bf16, one_bf16, "bfloat16 and bfloat16$")):
        grads = tb.Gradients(dq_src, dq_dst, torch.zeros_like(k), torch.zeros_like(k), False)
        with pytest.raises(ValueError, match="dq_src and dq_dst must be the same float32 tensor.*" + why):
            tb.plan_hop_backward(q, k, v, saved.outputs[0], d_out, saved.lses[0], grads, torch.empty_like(v),
                                 case.resolved_dims, 0, True, scale, blocks=blocks)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [16384, 16384 - 5], ids=["tma-boxes", "pointer-loads"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gpu_fused_dq_matches_float32_sdpa_composition(n: int, causal: bool) -> None:
    """The compiled fused dK/dV kernel (float32 atomics, 16 x 64 tiles) on both hops of m = 2,
    slices of 128: its gradients against autograd of the float32 composition."""
    case = Case(n, 2, causal, BF16, heads=8, kv_heads=2, head_dim=128)
    _check_against_float32_composition(_fused, case)


@pytest.mark.parametrize("case", [KERNEL_CASES[0], KERNEL_CASES[2], KERNEL_CASES[5], KERNEL_CASES[6]], ids=str)
@pytest.mark.usefixtures("poisoned_gradients")
def test_packed_kernel_with_its_products_transposed(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    """dQ, dK and dV formed as their transposes (as tall as the head dim) in the packed kernel: m = 2,
    3 and 4, GQA (dV summed over a group on the first hop), bf16 with batch 2 and strided rows."""
    table_tile = tb.packed_tile
    transposed: list[bool] = []

    def tile(length: int, dtype: torch.dtype) -> tb.PackedTile:
        transposed.append(True)
        return replace(table_tile(length, dtype), transposed=True)

    monkeypatch.setattr(tb, "packed_tile", tile)
    _check_against_spec(tensorized_attention_train, case)
    assert len(transposed) == case.m
