"""The Triton tensorized-attention kernel against the float64 evaluation of the spec.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (small shapes); with one,
the tests marked gpu run the same checks at long sequences and against the SDPA composition.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass

import pytest
import torch
import triton

if not torch.cuda.is_available():
    # must precede the kernel module's import, which defines the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from errors import rel_err

from tbench.core.folding import hop_axes, resolve_dims
from tbench.kernels import tensorized_triton as tt
from tbench.kernels.reference import tensorized_attention_f64, tensorized_hop_f64
from tbench.kernels.tensorized_sdpa import tensorized_attention_sdpa

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 1e-2}


@dataclass(frozen=True)
class Case:
    n: int
    m: int
    causal: bool
    dtype: torch.dtype = torch.float32
    dims: tuple[int, ...] | None = None
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 64
    batch: int = 1
    layout: str = "bhnd"  # "bnhd": q, k, v are transposed views of (B, N, H, D) tensors

    def __str__(self) -> str:
        dims = "x".join(map(str, self.dims)) if self.dims else "auto"
        dtype = str(self.dtype).removeprefix("torch.")
        mask = "causal" if self.causal else "full"
        return (f"N{self.n}-m{self.m}-{dims}-{mask}-{dtype}-B{self.batch}H{self.heads}kv{self.kv_heads}"
                f"-D{self.head_dim}-{self.layout}")

    @property
    def resolved_dims(self) -> tuple[int, ...]:
        return resolve_dims(self.n, self.m, self.dims)


def _inputs(case: Case, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(zlib.crc32(str(case).encode()))

    def draw(heads: int) -> torch.Tensor:
        if case.layout == "bnhd":
            x = torch.randn(case.batch, case.n, heads, case.head_dim, generator=gen)
            return x.to(device=device, dtype=case.dtype).transpose(1, 2)
        x = torch.randn(case.batch, heads, case.n, case.head_dim, generator=gen)
        return x.to(device=device, dtype=case.dtype)

    return draw(case.heads), draw(case.kv_heads), draw(case.kv_heads)


@pytest.fixture
def poisoned_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Intermediate value tensors start as NaN, so a row a hop forgets to write poisons the result."""
    monkeypatch.setattr(tt, "_new_buffer", lambda like: torch.full_like(like, float("nan")))


def _check(case: Case, device: str) -> float:
    q, k, v = _inputs(case, device)
    dims = case.resolved_dims
    out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)
    got = tt.tensorized_attention_triton(q, k, v, dims, case.causal, out=out)
    assert got is out
    assert not torch.isnan(out).any(), "unwritten or NaN output elements"
    ref = tensorized_attention_f64(q.cpu(), k.cpu(), v.cpu(), dims, case.causal)
    err = rel_err(out.cpu(), ref)
    assert err <= TOLERANCE[case.dtype], f"{case}: relative L2 error {err:.2e}"
    return err


F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

CPU_CASES = [
    # every order, N not a product of the auto dims, both masks
    *(Case(n, m, causal) for n, m in ((200, 1), (300, 2), (500, 3), (1000, 4)) for causal in (False, True)),
    # explicit dims, odd lengths, padded and exact
    Case(100, 3, False, dims=(3, 5, 7)),
    Case(105, 3, True, dims=(3, 5, 7)),
    Case(100, 3, True, BF16, dims=(7, 5, 3)),
    # a long strided axis (flash kernel on a dilated axis with a ragged last block)
    Case(390, 2, False, dims=(200, 2)),
    Case(390, 2, True, F16, dims=(200, 2), heads=4, kv_heads=1),
    # GQA
    Case(300, 2, True, heads=4, kv_heads=2),
    Case(300, 2, False, BF16, heads=4, kv_heads=1),
    Case(500, 3, False, F16, heads=4, kv_heads=2),
    # each dtype at both head dims
    *(Case(250, 2, causal, dtype, head_dim=d) for dtype in (BF16, F16) for d in (64, 128) for causal in (False, True)),
    Case(250, 2, True, F32, head_dim=128),
    Case(130, 2, False, F32, head_dim=32),
    # batch > 1 and a (B, N, H, D) memory layout (strided rows)
    Case(300, 2, True, BF16, batch=2, heads=4, kv_heads=2, layout="bnhd"),
    Case(200, 3, False, F32, batch=2, layout="bnhd"),
    # dims that fill N exactly: flash hops through TMA tensor descriptors (strided and inner axis,
    # a ragged last query block, GQA, batch > 1)
    Case(400, 2, False, dims=(200, 2)),
    Case(400, 2, True, BF16, dims=(2, 200), heads=4, kv_heads=2),
    Case(520, 2, True, F16, dims=(130, 4), batch=2, heads=4, kv_heads=1),
    Case(300, 1, True),
]


@pytest.mark.parametrize("case", CPU_CASES, ids=str)
def test_matches_float64_spec(case: Case, poisoned_scratch: None) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _check(case, device)


def test_descriptors_are_used_exactly_when_the_dims_fill_n_and_rows_are_contiguous() -> None:
    def descs(case: Case, axis: int) -> object:
        q, k, v = _inputs(case, "cpu")
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        return tt._hop_descriptors((q, k, v, out), case.resolved_dims, axis)

    assert descs(Case(400, 2, False, dims=(200, 2)), 0) is not None
    assert descs(Case(400, 2, False, dims=(2, 200)), 1) is not None
    assert descs(Case(390, 2, False, dims=(200, 2)), 0) is None  # padded: pointer loads
    assert descs(Case(400, 2, False, dims=(200, 2), layout="bnhd"), 0) is None  # rows H*D apart


def test_a_tuned_descriptor_hop_runs_again_from_its_cached_config(poisoned_scratch: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The second call of a key skips the autotuner and shapes the descriptors itself."""
    monkeypatch.setattr(tt, "_LOADS_TIMER", None)  # the boxes, whatever a GPU would time
    device = "cuda" if torch.cuda.is_available() else "cpu"
    case = Case(420, 2, True, dims=(210, 2), heads=4, kv_heads=2)
    first, second = _check(case, device), _check(case, device)
    assert first == second
    assert any(kernel == "flash-tma" and key.length == 210 for kernel, key, _ in tt.tuned_configs())


FLASH_VARIANTS = [
    {"BLOCK_M": 64, "BLOCK_N": 32},
    {"BLOCK_M": 64, "BLOCK_N": 64},
    {"BLOCK_M": 32, "BLOCK_N": 64},  # key blocks wider than query blocks
]
PACKED_VARIANTS = [
    {"ROWS": 32, "PROGRAMS_PER_SM": 3}, {"ROWS": 64, "PROGRAMS_PER_SM": 1},
    {"ROWS": 32, "PROGRAMS_PER_SM": 3, "SHARE_KV": True},  # one program per kv group
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("variant", FLASH_VARIANTS + PACKED_VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_block_shapes_of_one_hop(variant: dict, causal: bool) -> None:
    """Block shapes beyond the tuned ones, on one strided hop with a ragged, padded slice."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    flash = "BLOCK_M" in variant
    dims = (150, 3) if flash else (20, 3)  # the hop runs over axis 0: stride 3, L not a block multiple
    case = Case(dims[0] * 3 - 2, 2, causal, BF16, dims=dims, heads=4, kv_heads=2, head_dim=64)
    q, k, v = _inputs(case, device)
    out = torch.full_like(q, float("nan"))
    config = triton.Config(variant, num_warps=4, num_stages=2)
    tt._launch_hop(q, k, v, out, dims, 0, causal, 64**-0.5, config=config)
    assert not torch.isnan(out).any()
    assert rel_err(out.cpu(), tensorized_hop_f64(q.cpu(), k.cpu(), v.cpu(), dims, 0, causal)) <= 1e-2


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("value_heads", ["kv", "query"])
def test_kv_group_programs_equal_one_program_per_head(value_heads: str, causal: bool, dtype: torch.dtype) -> None:
    """One program per kv group (K loaded once for the group's four query heads; the value too when
    it has the kv heads, as on a first hop) writes what one program per query head writes, bit for
    bit, log-sum-exps included, and both match the spec's hop in float64."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dims = (20, 3)
    case = Case(dims[0] * 3 - 2, 2, causal, dtype, dims=dims, heads=8, kv_heads=2, head_dim=32)
    q, k, v = _inputs(case, device)
    if value_heads == "query":  # a later hop's value: one head per query head
        v = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    results = []
    for share in (False, True):
        out = torch.full_like(q, float("nan"))
        lse = torch.full(q.shape[:3], float("nan"), device=device)
        config = triton.Config({"ROWS": 32, "PROGRAMS_PER_SM": 2, "SHARE_KV": share}, num_warps=4, num_stages=2)
        tt._launch_hop(q, k, v, out, dims, 0, causal, 32**-0.5, config=config, lse=lse)
        assert not torch.isnan(out).any() and not torch.isnan(lse[:, :, : case.n]).any()
        results.append((out, lse))
    (out, lse), (shared_out, shared_lse) = results
    assert torch.equal(shared_out, out) and torch.equal(shared_lse, lse)
    ref = tensorized_hop_f64(q.cpu(), k.cpu(), v.cpu(), dims, 0, causal)
    assert rel_err(shared_out.cpu(), ref) <= TOLERANCE[dtype]


# (dims, axis, rows per tile, whether the tile moves as one TMA box)
PACKED_BOXES = [
    ((5, 24), 1, 64, True),  # innermost axis, two slices a box along A, the last box half outside
    ((40, 4), 0, 64, True),  # outer axis, one slice of 40 (< 64 box rows) a box
    ((24, 4), 0, 64, True),  # outer axis, two slices a box side by side along C: coordinate-major rows
    ((24, 3), 0, 64, False),  # two slices a tile would straddle two values of a: pointer loads
    ((8, 8), 0, 128, True),  # eight slices of 8 (16 box rows) side by side: 8 x D = 256, a box's widest
]


@pytest.mark.parametrize("share", [False, True], ids=["per-head", "kv-group"])
@pytest.mark.parametrize("value_heads", ["kv", "query"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("layout", PACKED_BOXES, ids=lambda b: f"{b[0][0]}x{b[0][1]}-axis{b[1]}-rows{b[2]}")
def test_packed_tiles_through_tma_boxes(layout: tuple, causal: bool, value_heads: str, share: bool,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the dims fill N and the tensors are contiguous, a packed hop's tiles move as TMA boxes
    (when the tile's slices lie side by side in one box); its output and log-sum-exps match the
    same hop through pointer loads and the spec's hop in float64."""
    dims, axis, rows, boxed = layout
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = dims[0] * dims[1]
    case = Case(n, 2, causal, F32, dims=dims, heads=4, kv_heads=2, head_dim=32)
    q, k, v = _inputs(case, device)
    if value_heads == "query":
        v = torch.randn(q.shape, generator=torch.Generator().manual_seed(2)).to(device)
    boxes: list[list[int]] = []
    shape_boxes = tt._packed_blocks

    def spy(descs, *args) -> None:
        shape_boxes(descs, *args)
        boxes.append(list(descs[0].block_shape))

    monkeypatch.setattr(tt, "_packed_blocks", spy)
    config = triton.Config({"ROWS": rows, "PROGRAMS_PER_SM": 2, "SHARE_KV": share}, num_warps=4, num_stages=1)
    results = []
    for contiguous in (True, False):
        # a (B, N, H, D) output keeps its rows contiguous but not its heads: pointer loads
        out = (torch.full_like(q, float("nan")) if contiguous
               else torch.full((1, n, 4, 32), float("nan"), device=device).transpose(1, 2))
        lse = torch.full(q.shape[:3], float("nan"), device=device)
        tt._launch_hop(q, k, v, out, dims, axis, causal, 32**-0.5, config=config, lse=lse)
        assert not torch.isnan(out).any() and not torch.isnan(lse).any()
        results.append((out, lse))
    assert bool(boxes) == boxed and len(boxes) <= 1
    (boxed_out, boxed_lse), (plain_out, plain_lse) = results
    assert rel_err(boxed_out.cpu(), plain_out.cpu()) <= 1e-6
    assert torch.allclose(boxed_lse, plain_lse, rtol=1e-6, atol=1e-6)
    assert rel_err(boxed_out.cpu(), tensorized_hop_f64(q.cpu(), k.cpu(), v.cpu(), dims, axis, causal)) <= 1e-4


@pytest.fixture
def first_config_wins(monkeypatch: pytest.MonkeyPatch):
    """A GPU-like packed config list in the interpreter, whose timer finds the first kept config
    fastest, with empty tuning caches; yields a setter for the list."""
    monkeypatch.setattr(tt, "_chosen", {})
    monkeypatch.setattr(tt._packed_tuned, "cache", {})
    monkeypatch.setattr(tt._packed_tuned, "_do_bench", lambda fn, quantiles=None: [1.0] * len(quantiles or [0]))

    def use(configs: list[triton.Config]) -> None:
        monkeypatch.setattr(tt, "_packed_configs", lambda: configs)
        monkeypatch.setattr(tt._packed_tuned, "configs", configs)

    return use


def _packed_config(rows: int, stages: int) -> triton.Config:
    return triton.Config({"ROWS": rows, "PROGRAMS_PER_SM": 4, "SHARE_KV": False}, num_warps=4, num_stages=stages,
                         pre_hook=tt._packed_desc_blocks)


def test_a_config_tuned_where_its_box_fits_is_not_reused_where_it_does_not(first_config_wins) -> None:
    """Eight slices of 16 side by side fit one box when C = 64, not when C = 4 (they would straddle
    two values of a): the second hop, with the same slice length, is tuned apart and stays exact."""
    first_config_wins([_packed_config(128, 1), _packed_config(64, 1)])
    for dims, axis in (((16, 64), 0), ((2, 16, 4), 1)):
        n = math.prod(dims)
        gen = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, 1, n, 32, generator=gen) for _ in range(3))
        out = torch.full_like(q, float("nan"))
        tt._launch_hop(q, k, v, out, dims, axis, False, 32**-0.5)
        assert not torch.isnan(out).any(), dims
        assert rel_err(out, tensorized_hop_f64(q, k, v, dims, axis, False)) <= 1e-5
    rows = sorted(cfg.kwargs["ROWS"] for key, cfg in tt._chosen.items())
    assert rows == [64, 128]


def test_an_fp32_hop_is_not_given_a_config_tuned_for_bf16(first_config_wins) -> None:
    """Triton keys its tuning on the tensors' dtypes, which descriptors do not show: the dot
    precision in the key keeps a bf16 choice that fp32 tiles cannot take (128 rows, two stages)
    from an fp32 hop of the same shape."""
    first_config_wins([_packed_config(128, 2), _packed_config(128, 1)])
    dims = (4, 16)
    chosen = {}
    for dtype in (BF16, F32):
        q, k, v = (torch.randn(1, 2, 64, 64).to(dtype) for _ in range(3))
        lse = torch.empty(1, 2, 64)
        tt._launch_hop(q, k, v, torch.empty_like(q), dims, 1, True, 64**-0.5, lse=lse)
        (config,) = [cfg for key, cfg in tt._chosen.items() if key.dtype == dtype]
        chosen[dtype] = config.num_stages
    assert chosen == {BF16: 2, F32: 1}


def test_tuned_packed_hops_name_a_first_hop_apart() -> None:
    """A first hop (its value is v, on the kv heads) and a later hop of the same slice length are
    tuned apart, and the provenance text tells them apart."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    case = Case(64, 2, True, dims=(8, 8), heads=4, kv_heads=2)
    _check(case, device)
    names = {kernel for kernel, key, _ in tt.tuned_configs() if key.length == 8 and key.causal}
    first_hop = {"packed (value with kv heads)", "packed-tma (value with kv heads)"}
    assert names & {"packed", "packed-tma"} and names & first_hop


def test_a_config_tuned_at_one_length_is_not_reused_at_another(first_config_wins) -> None:
    """Configs are tuned per problem size: the same hop shape (slice length, stride, head dim) at
    two sequence lengths is tuned twice, by Triton's autotuner and in tbench's own cache."""
    first_config_wins([_packed_config(64, 1), _packed_config(128, 1)])
    for n in (64, 128):
        dims = (n // 16, 16)
        gen = torch.Generator().manual_seed(n)
        q, k, v = (torch.randn(1, 2, n, 32, generator=gen) for _ in range(3))
        out = torch.full_like(q, float("nan"))
        tt._launch_hop(q, k, v, out, dims, 1, True, 32**-0.5)
        assert rel_err(out, tensorized_hop_f64(q, k, v, dims, 1, True)) <= 1e-5
    assert sorted(key.n for key in tt._chosen) == [64, 128]
    assert len(tt._packed_tuned.cache) == 2


@pytest.fixture
def loads_timer(monkeypatch: pytest.MonkeyPatch):
    """A stand-in for the timer that picks boxes or pointer loads per hop shape, with empty caches:
    yields a setter for the times it reports (boxes first, then pointers) and the calls it got."""
    monkeypatch.setattr(tt, "_chosen", {})
    monkeypatch.setattr(tt, "_boxes_win", {})
    calls: list[str] = []
    times: dict[str, float] = {}

    def timer(fn) -> float:
        fn()  # the launch runs (and is tuned) as under the real timer
        which = "boxes" if len(calls) % 2 == 0 else "pointers"
        calls.append(which)
        return times[which]

    monkeypatch.setattr(tt, "_LOADS_TIMER", timer)

    def use(boxes_ms: float, pointers_ms: float) -> list[str]:
        times.update(boxes=boxes_ms, pointers=pointers_ms)
        return calls

    return use


@pytest.mark.parametrize("faster", ["boxes", "pointers"])
@pytest.mark.parametrize("dims,axis", [((4, 16), 1), ((2, 16, 8), 1), ((2, 160), 1)],
                         ids=["packed", "strided", "flash"])
def test_a_hop_runs_the_loads_that_measured_faster(loads_timer, faster: str, dims: tuple, axis: int) -> None:
    """Where a hop's tiles can move as TMA boxes, both launches are timed once per shape and the
    faster one runs, then and on every later call; either way the hop is the spec's."""
    calls = loads_timer(1.0 if faster == "boxes" else 2.0, 2.0 if faster == "boxes" else 1.0)
    n = math.prod(dims)
    gen = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, 2, n, 32, generator=gen) for _ in range(3))
    ref = tensorized_hop_f64(q, k, v, dims, axis, True)
    for _ in range(2):
        out = torch.full_like(q, float("nan"))
        tt._launch_hop(q, k, v, out, dims, axis, True, 32**-0.5)
        assert rel_err(out, ref) <= 1e-5
    assert calls == ["boxes", "pointers"]  # timed once
    (kernel,) = {name for name, _, _ in tt.tuned_configs()}
    assert ("-tma" in kernel) == (faster == "boxes"), kernel


def test_a_shape_that_ran_faster_through_pointers_builds_no_descriptors_again(
        loads_timer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once pointer loads won a shape, its later calls plan no boxes (descriptors cost host time
    next to a short hop)."""
    loads_timer(2.0, 1.0)
    q, k, v = (torch.randn(1, 2, 64, 32) for _ in range(3))
    tt._launch_hop(q, k, v, torch.empty_like(q), (4, 16), 1, True, 32**-0.5)
    built: list[int] = []
    make = tt._hop_descriptors
    monkeypatch.setattr(tt, "_hop_descriptors", lambda *args: built.append(1) or make(*args))
    out = torch.empty_like(q)
    tt._launch_hop(q, k, v, out, (4, 16), 1, True, 32**-0.5)
    assert built == []
    assert rel_err(out, tensorized_hop_f64(q, k, v, (4, 16), 1, True)) <= 1e-5


def test_a_shape_whose_boxes_won_plans_no_pointer_launch_again(loads_timer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the boxes won a shape, its later calls plan the boxed launch alone (a second plan, its
    arguments and key, is host time spent on every call for nothing)."""
    calls = loads_timer(1.0, 2.0)
    q, k, v = (torch.randn(1, 2, 64, 32) for _ in range(3))
    tt._launch_hop(q, k, v, torch.empty_like(q), (4, 16), 1, True, 32**-0.5)
    planned: list[bool] = []  # tma asked of each plan
    plan = tt.plan_hop
    monkeypatch.setattr(tt, "plan_hop", lambda *args, **kwargs: planned.append(kwargs.get("tma", args[-1]))
                        or plan(*args, **kwargs))
    out = torch.empty_like(q)
    tt._launch_hop(q, k, v, out, (4, 16), 1, True, 32**-0.5)
    assert planned == [True] and calls == ["boxes", "pointers"]
    assert rel_err(out, tensorized_hop_f64(q, k, v, (4, 16), 1, True)) <= 1e-5


def test_a_hop_without_boxes_is_not_timed(loads_timer) -> None:
    """Padded dims (prod > N) take no descriptors: nothing to choose, the timer is not called."""
    calls = loads_timer(1.0, 2.0)
    q, k, v = (torch.randn(1, 2, 60, 32) for _ in range(3))
    out = torch.empty_like(q)
    tt._launch_hop(q, k, v, out, (4, 16), 1, True, 32**-0.5)
    assert calls == [] and not tt._boxes_win


def test_a_measurement_names_the_configs_of_its_own_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provenance lists the configs tuned for the measured shape and pass only: not those of
    another length or of the training forward (which saves log-sum-exps) in an inference row, nor
    the launch of a hop that measured faster the other way (boxes or pointers)."""
    from tbench.core.case import Case as RunCase
    from tbench.methods import tensorized as methods_tensorized
    from tbench.methods.availability import Availability

    monkeypatch.setattr(methods_tensorized, "_triton_availability", lambda device: Availability(True, provenance="k"))

    def key(n: int, boxes: bool, lse: bool = False) -> tt.HopKey:
        return tt.HopKey(True, 16, 32, True, torch.float32, "cuda", boxes, True, boxes, 1, lse, 1, 2, 2, n)

    chosen = {key(64, True): _packed_config(64, 1), key(64, False): _packed_config(32, 2),
              key(128, False): _packed_config(128, 3), key(64, False, lse=True): _packed_config(64, 2)}
    monkeypatch.setattr(tt, "_chosen", chosen)
    monkeypatch.setattr(tt, "_boxes_win", {key(64, False): False})
    row = dict(method="tensorized-triton", family="tensorized", seq_len=64, batch=1, heads=2, kv_heads=2,
               head_dim=32, dtype="fp32", causal=True, device="cuda", order=2, dims=(4, 16))
    tuned = "k; tuned: L=16 C=1 packed (value with kv heads) ROWS={} PROGRAMS_PER_SM=4 SHARE_KV=False warps=4 stages={}"
    assert methods_tensorized._triton_describe(RunCase(**row)) == tuned.format(32, 2)
    assert methods_tensorized._triton_describe(RunCase(**row, mode="fwd_bwd")) == tuned.format(64, 2)


def test_explicit_scale() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    case = Case(120, 2, True)
    q, k, v = _inputs(case, device)
    out = tt.tensorized_attention_triton(q, k, v, case.resolved_dims, True, scale=0.3)
    ref = tensorized_attention_f64(q.cpu(), k.cpu(), v.cpu(), case.resolved_dims, True, scale=0.3)
    assert rel_err(out.cpu(), ref) <= 1e-4


def test_unsupported_head_dim_raises() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.randn(1, 2, 64, 96, device=device)
    reason = tt.unsupported_reason(q, q, q, (8, 8), True)
    assert reason is not None and "head dim 96" in reason and "64" in reason and "128" in reason
    with pytest.raises(ValueError, match="head dim 96 unsupported"):
        tt.tensorized_attention_triton(q, q, q, (8, 8), True)


def test_other_unsupported_configurations() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.randn(1, 4, 64, 64, device=device)
    assert tt.unsupported_reason(q, q[:, :3], q[:, :3], (8, 8), False) is not None  # 4 % 3 != 0
    assert tt.unsupported_reason(q, q, q, (4, 8), False) is not None  # 32 positions < 64
    assert tt.unsupported_reason(q.double(), q.double(), q.double(), (8, 8), False) is not None
    assert tt.unsupported_reason(q, q, q, (8, 8), False) is None
    assert {64, 128} <= set(tt.SUPPORTED_HEAD_DIMS)
    assert set(tt.SUPPORTED_DTYPES) == {torch.bfloat16, torch.float16, torch.float32}


# --------------------------------------------------------------------------------------------
# GPU: the same checks at long sequences, and against the SDPA composition at the bench shape
# --------------------------------------------------------------------------------------------

GPU_CASES = [
    Case(4096, 2, True, BF16, heads=4, kv_heads=2, head_dim=128),
    Case(4096, 3, False, F16, heads=4, kv_heads=1, head_dim=128),
    Case(10000, 2, False, BF16, heads=4, kv_heads=2, head_dim=128),
    Case(10000, 3, True, BF16, heads=4, kv_heads=1, head_dim=64),
    Case(16384, 2, True, F32, heads=2, kv_heads=1, head_dim=128),
    Case(16384, 3, True, BF16, heads=4, kv_heads=2, head_dim=128),
    Case(16384, 4, False, F32, heads=2, kv_heads=2, head_dim=64),
    Case(12000, 3, True, F16, dims=(17, 25, 30), heads=4, kv_heads=2, head_dim=64),
    Case(8192, 1, True, BF16, heads=2, kv_heads=1, head_dim=128),
    Case(9000, 2, True, BF16, batch=2, heads=4, kv_heads=2, head_dim=128, layout="bnhd"),
    # flash hops through tensor descriptors
    Case(65536, 2, True, BF16, heads=4, kv_heads=2, head_dim=128),
    Case(32768, 2, False, F16, heads=4, kv_heads=1, head_dim=64),
    Case(24000, 2, True, F32, dims=(150, 160), heads=2, kv_heads=1, head_dim=128),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_gpu_matches_float64_spec(case: Case, poisoned_scratch: None) -> None:
    _check(case, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("config", tt._packed_configs(), ids=tt._config_text)
def test_gpu_every_packed_config_through_boxes_matches_pointer_loads(config: triton.Config) -> None:
    """Each packed config of the autotune list, compiled, on every hop of 16k m = 3 (slices of 16 and
    32, innermost and outer axes, first and later hops): with TMA boxes where they fit, against the
    same config through pointer loads and the spec's hop in float64."""
    case = Case(16384, 3, True, BF16, heads=8, kv_heads=2, head_dim=128)
    q, k, v = _inputs(case, "cuda")
    dims = case.resolved_dims
    for t, axis in enumerate(hop_axes(3)):
        value = v if t == 0 else torch.randn_like(q)
        outs = []
        for tma in (True, False):
            out = torch.full_like(q, float("nan"))
            tt._launch_hop(q, k, value, out, dims, axis, True, 128**-0.5, config=config, tma=tma)
            assert not torch.isnan(out).any()
            outs.append(out.float())
        assert rel_err(outs[0], outs[1]) <= 1e-2
        assert rel_err(outs[0].cpu(), tensorized_hop_f64(q, k, value, dims, axis, True).cpu()) <= 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_matches_sdpa_composition(m: int, causal: bool) -> None:
    case = Case(16384, m, causal, BF16, heads=32, kv_heads=8, head_dim=128)
    q, k, v = _inputs(case, "cuda")
    dims = case.resolved_dims
    ours = tt.tensorized_attention_triton(q, k, v, dims, causal)
    theirs = tensorized_attention_sdpa(q, k, v, dims, causal)
    assert not torch.isnan(ours).any()
    # both round intermediates to bf16, so they differ by about two bf16 roundings
    assert rel_err(ours, theirs.float()) <= 1e-2
