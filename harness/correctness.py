"""The correctness gate and the fidelity figures, both against float64 evaluations.

Before a method is timed, it runs once on fresh inputs (their own seed, drawn anew for every
measurement and recorded with it, so nothing cached from the timed inputs can pass and no bug can
hide behind one lucky draw) and its output is compared with its own definition in float64, chosen
by the method's family: exact attention for exact methods (and for approximate ones, within the tolerance they declare);
the tensorized spec for tensorized ones; exact attention restricted to the method's causal window
for sparse ones; the method's own float64 recurrence (kernels/linear_reference.py, with its
gates) for linear ones. Every (batch, head) pair is
checked; when the float64 evaluation of the whole output is cheap enough it is compared whole,
else on rows spread over the whole sequence: the first and the last, one drawn at random in each of
`ROWS` equal strata, and, for tensorized methods, the rows at the edges of every fold (where a
coordinate wraps) and at the start of the slices that hold padding. The same rows are compared
with exact attention to give the method's fidelity (how far its operator is from exact attention).
Inputs are standard normal q, k, v.

The tolerance is calibrated per case: the same definition evaluated plainly in the case's dtype
(inputs, products, softmax and every intermediate value in bf16, fp16 or fp32) has an error
against float64 that is what rounding alone costs; a method may be `LOW_PRECISION_FACTOR` times
worse than that, and never needs to beat the dtype's floor. A method may declare its own tolerance
(`Method.tolerance`). The error is the worst relative L2 error over the (batch, head) pairs, so a
bug in one head is not diluted by the others.

A linear method's recurrence cannot be evaluated in the case's dtype the way it runs, so linear
methods have no calibrated tolerance: they get `LINEAR_TOLERANCE` unless they declare their own.
Causal linear outputs depend only on earlier tokens, so past `MAX_RECURRENT_LENGTH` the recurrence
is evaluated on that prefix alone and the rows checked are drawn from it.

"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..core.case import Case, DType, Family, sliding_window
from ..core.folding import padded_length
from ..kernels.reference import (
    exact_attention_f64,
    padded_work,
    tensorized_attention_f64,
    tensorized_rows_f64,
)
from ..kernels.tensors import make_inputs, torch_dtype

# A method may be this many times worse than the plain evaluation in its dtype.
LOW_PRECISION_FACTOR = 2.5
# Tolerances never go below these: in fp32 far above rounding (correct methods reach 1e-7 to 1e-6),
# in bf16 and fp16 above the largest error correct methods reach on a GPU (bf16 6e-3, fp16 8x
# less); see docs/methodology.md, "Correctness".
TOLERANCE_FLOOR: dict[DType, float] = {DType.FP32: 1e-5, DType.FP16: 1e-3, DType.BF16: 8e-3}

INPUT_DISTRIBUTION = "q, k, v independent standard normal N(0, 1), seeded (seed recorded per measurement)"

# Rows drawn at random, one per stratum of the sequence, when the output is not checked whole.
ROWS = 64
# Whole-output check while the float64 reference needs at most this many multiply-adds
# (about a second on one CPU core); beyond it, sampled rows.
WHOLE_OUTPUT_WORK = 2**28
# Score elements of one chunk of heads in the reference evaluations (memory bound).
_CHUNK_ELEMENTS = 2**26

# The float64 recurrences of the linear family loop over tokens; beyond this length they are too slow
# (a few seconds on a GPU at 8k), and the check says it was not evaluated.
MAX_RECURRENT_LENGTH = 8192
# Linear methods' tolerance unless they declare one: chunked kernels reorder the recurrence's sums,
# and the recurrence cannot be run in the dtype to calibrate against (see the module's docstring).
LINEAR_TOLERANCE: dict[DType, float] = {DType.FP32: 1e-4, DType.FP16: 1e-2, DType.BF16: 2e-2}

Definition = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Case], torch.Tensor]


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    error: float | None  # worst relative L2 error over (batch, head) pairs vs the method's own definition
    fidelity_rel_l2: float  # vs exact attention
    fidelity_max_abs: float
    message: str = ""
    # How the check was made, stored with the measurement: seed, rows, tolerance and what set it.
    details: dict = field(default_factory=dict)


def new_seed() -> int:
    """A fresh seed for one check (drawn from the OS, so runs differ)."""
    return random.SystemRandom().randrange(2**31)


def default_tolerance(dtype: DType, low_precision_error: float) -> float:
    return max(TOLERANCE_FLOOR[dtype], LOW_PRECISION_FACTOR * low_precision_error)


def tolerance_for(dtype: DType, declared: float | None, plain_error: float | None) -> tuple[float, str]:
    """The tolerance a comparison applies, and what set it: the method's declared one, else one
    calibrated from the plain evaluation's error in the dtype, else (no plain evaluation: the
    linear family) the family's."""
    if declared is not None:
        return declared, "declared by the method"
    if plain_error is None:
        return LINEAR_TOLERANCE[dtype], "the linear family's"
    return default_tolerance(dtype, plain_error), "calibrated"


def check_rows(case: Case, seed: int, count: int = ROWS) -> torch.Tensor:
    """Sorted query rows to check: first, last, one at random per stratum, fold and padding edges."""
    n = case.seq_len
    generator = torch.Generator().manual_seed(seed)
    edges = torch.linspace(0, n, min(count, n) + 1).long()
    picked = {0, n - 1}
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        if hi > lo:
            picked.add(lo + int(torch.randint(hi - lo, (1,), generator=generator)))
    if case.is_tensorized and case.dims is not None:
        picked |= fold_edge_rows(n, case.dims)
    return torch.tensor(sorted(p for p in picked if 0 <= p < n), dtype=torch.long)


def fold_edge_rows(n: int, dims: tuple[int, ...]) -> set[int]:
    """Rows where a folding coordinate wraps (the last of one block and the first of the next, for
    every axis' stride, at the start, the middle and the end of the real sequence), and the first
    row of each slice that holds padding (the slices through row n - 1)."""
    rows: set[int] = set()
    stride = 1
    for size in reversed(dims):
        block = stride * size  # positions covered by one block of this axis and the ones inside it
        for at in (stride, (n // 2) // stride * stride, (n - 1) // stride * stride):
            rows |= {at - 1, at}
        # the slice along this axis through the last real row starts here
        rows.add((n - 1) // block * block + (n - 1) % stride)
        stride = block
    return {r for r in rows if 0 <= r < n}


def _rel_l2_per_pair(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """(B, H) relative L2 errors."""
    diff = (out - ref).flatten(2).norm(dim=-1)
    return diff / ref.flatten(2).norm(dim=-1).clamp_min(1e-300)


def _whole(case: Case) -> bool:
    bh = case.batch * case.heads
    if case.is_tensorized and case.dims is not None and len(case.dims) > 1:
        return bh * padded_work(case.dims) * case.head_dim <= WHOLE_OUTPUT_WORK
    return bh * case.seq_len * case.seq_len * case.head_dim <= WHOLE_OUTPUT_WORK


def _definition(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, rows: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
    """The method's own definition at `rows` (None: all), every (batch, head), in `dtype`."""
    if case.is_tensorized and case.dims is not None and len(case.dims) > 1:
        if rows is None:
            return tensorized_attention_f64(q, k, v, case.dims, case.causal, case.softmax_scale, dtype=dtype)
        return tensorized_rows_f64(q, k, v, case.dims, case.causal, case.softmax_scale, rows, dtype=dtype)
    if case.family is Family.SPARSE:
        return exact_attention_f64(q, k, v, case.causal, case.softmax_scale, rows=rows, dtype=dtype,
                                   window=sliding_window(case.seq_len))
    # One hop over the whole (padded) sequence is exact attention: padded keys never count.
    return exact_attention_f64(q, k, v, case.causal, case.softmax_scale, rows=rows, dtype=dtype)


def _differs_from_exact(case: Case) -> bool:
    """Whether the method's definition is another operator than exact attention (so fidelity needs
    exact attention evaluated on its own)."""
    if case.is_tensorized:
        return case.dims is not None and len(case.dims) > 1
    return case.family in (Family.SPARSE, Family.LINEAR)


def _by_head_chunks(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], q: torch.Tensor,
                    k: torch.Tensor, v: torch.Tensor, case: Case, per_head_elements: int) -> torch.Tensor:
    """`fn` over chunks of query heads (whole KV groups), so the references fit in memory."""
    group = case.heads // case.kv_heads
    groups_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, per_head_elements * group * case.batch))
    parts = []
    for g in range(0, case.kv_heads, groups_per_chunk):
        stop = min(case.kv_heads, g + groups_per_chunk)
        parts.append(fn(q[:, g * group : stop * group], k[:, g:stop], v[:, g:stop]))
    return torch.cat(parts, dim=1)


def check(
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    case: Case,
    seed: int,
    tolerance: Callable[[Case], float] | None = None,
    rows: int = ROWS,
    reference: Definition | None = None,
) -> CheckResult:
    """Run `call` on fresh inputs and compare its output, every (batch, head), with float64.

    `reference` is the method's own float64 definition, which the linear family needs:
    (q, k, v, case) -> (B, H, N, D)."""
    q, k, v = make_inputs(case, seed)
    leaves: tuple[torch.Tensor, ...] = ()
    graph_out: torch.Tensor | None = None
    if case.mode.needs_backward:
        leaves = tuple(x.detach().requires_grad_(True) for x in (q, k, v))
        with torch.enable_grad():
            graph_out = call(*leaves)
        out = graph_out.detach()
    else:
        with torch.no_grad():
            out = call(q, k, v)
    details: dict = {"seed": seed}
    if tuple(out.shape) != tuple(q.shape):
        return CheckResult(False, None, float("nan"), float("nan"),
                           f"output shape {tuple(out.shape)}, expected {tuple(q.shape)}", details)
    if not torch.isfinite(out).all():
        return CheckResult(False, float("nan"), float("nan"), float("nan"), "output has NaN or Inf", details)

    whole = _whole(case)
    picked = None if whole else check_rows(case, seed, rows).to(q.device)
    n_rows = case.seq_len if picked is None else len(picked)
    per_head = n_rows * (padded_length(case.dims) if case.is_tensorized and case.dims else case.seq_len)
    details.update(rows="all" if whole else n_rows)

    if case.family is Family.LINEAR:
        result = _check_linear(out, q, k, v, case, seed, rows, tolerance, reference, details)
    else:
        result = _check_output(out, q, k, v, case, seed, picked, n_rows, per_head, tolerance, details)
    if not case.mode.needs_backward or not result.passed:
        return result
    return _with_gradients(result, graph_out, leaves, case, seed, tolerance, reference)


def _check_output(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, seed: int,
                  picked: torch.Tensor | None, n_rows: int, per_head: int,
                  tolerance: Callable[[Case], float] | None, details: dict) -> CheckResult:
    """The forward of a non-linear method against its float64 definition (see `check`)."""

    def reference_in(dtype: torch.dtype) -> torch.Tensor:
        return _by_head_chunks(lambda a, b, c: _definition(a, b, c, case, picked, dtype), q, k, v, case, per_head)

    with torch.no_grad():
        definition = reference_in(torch.float64)
        plain = reference_in(torch_dtype(case)).to(torch.float64)
        if _differs_from_exact(case):
            exact = _by_head_chunks(
                lambda a, b, c: exact_attention_f64(a, b, c, case.causal, case.softmax_scale, rows=picked),
                q, k, v, case, n_rows * case.seq_len)
        else:
            exact = definition
        got = (out if picked is None else out[:, :, picked]).to(torch.float64)

    plain_error = float(_rel_l2_per_pair(plain, definition).max())
    limit, source = tolerance_for(case.dtype, None if tolerance is None else float(tolerance(case)), plain_error)
    details.update(plain_error=plain_error)
    return _verdict(got, definition, exact, case, seed, limit, source, details,
                    f"; a plain {case.dtype} evaluation errs by {plain_error:.2g}")


GRADIENTS = ("dq", "dk", "dv")
GRAD_SEED_OFFSET = 1  # dO is drawn from the check's seed plus this


def _failed(result: CheckResult, message: str) -> CheckResult:
    return CheckResult(False, result.error, result.fidelity_rel_l2, result.fidelity_max_abs, message, result.details)


def _grads_of(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], d_out: torch.Tensor,
              dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """dq, dk, dv of `fn` at `inputs` (cast to `dtype`, as leaves) for the output gradient `d_out`."""
    leaves = tuple(x.detach().to(dtype).requires_grad_(True) for x in inputs)
    with torch.enable_grad():
        out = fn(*leaves)
        return torch.autograd.grad(out, leaves, d_out.to(out.dtype))


def _with_gradients(result: CheckResult, graph_out: torch.Tensor | None, leaves: tuple[torch.Tensor, ...],
                    case: Case, seed: int, tolerance: Callable[[Case], float] | None,
                    reference: Definition | None) -> CheckResult:
    """The method's dq, dk and dv (for a standard normal dO) against float64 autograd of its
    definition, every (batch, head): query heads for dq, key/value heads for dk and dv."""
    details = result.details
    if graph_out is None or not graph_out.requires_grad:
        return _failed(result, "the output carries no gradient: the call is not differentiable by autograd")
    generator = torch.Generator().manual_seed(seed + GRAD_SEED_OFFSET)
    d_out = torch.randn(graph_out.shape, generator=generator, dtype=torch.float32).to(graph_out.dtype)
    d_out = d_out.to(graph_out.device)
    got = torch.autograd.grad(graph_out, leaves, d_out, allow_unused=True)
    for name, grad, leaf in zip(GRADIENTS, got, leaves, strict=True):
        if grad is None:
            return _failed(result, f"no gradient reaches {name[1]}: the call does not differentiate it")
        if tuple(grad.shape) != tuple(leaf.shape):
            return _failed(result, f"{name} has shape {tuple(grad.shape)}, expected {tuple(leaf.shape)}")
        if not torch.isfinite(grad).all():
            return _failed(result, f"{name} has NaN or Inf")
    inputs = tuple(leaf.detach() for leaf in leaves)

    if case.family is Family.LINEAR:
        if reference is None or case.seq_len > MAX_RECURRENT_LENGTH:
            details["grad_check"] = "gradient check not evaluated: no float64 recurrence at this size"
            return result
        try:
            definition = _grads_of(lambda a, b, c: reference(a, b, c, case), inputs, d_out, torch.float64)
        except RuntimeError as exc:
            details["grad_check"] = f"gradient check not evaluated: the float64 recurrence has no gradient ({exc})"
            return result
        plain = None
    elif not _whole(case):
        # float64 autograd beyond the whole-output bound costs minutes and gigabytes
        details["grad_check"] = "gradient check not evaluated at this size"
        return result
    else:
        per_head = case.seq_len * (padded_length(case.dims) if case.is_tensorized and case.dims else case.seq_len)

        def definition_in(dtype: torch.dtype) -> Callable[..., torch.Tensor]:
            return lambda a, b, c: _by_head_chunks(lambda x, y, z: _definition(x, y, z, case, None, dtype),
                                                   a, b, c, case, per_head)

        definition = _grads_of(definition_in(torch.float64), inputs, d_out, torch.float64)
        plain = _grads_of(definition_in(torch_dtype(case)), inputs, d_out, torch_dtype(case))

    def where(name: str, per_pair: torch.Tensor) -> str:
        worst_b, worst_h = divmod(int(per_pair.argmax()), per_pair.shape[1])
        return f" (batch {worst_b}, {'head' if name == 'dq' else 'kv head'} {worst_h})"

    return gradient_verdict(
        result, details, GRADIENTS, lambda i: _rel_l2_per_pair(got[i].detach().to(torch.float64), definition[i]),
        None if plain is None else lambda i: _rel_l2_per_pair(plain[i].to(torch.float64), definition[i]),
        None if tolerance is None else float(tolerance(case)), case.dtype, seed, "its definition", where)


def gradient_verdict(
    result: CheckResult,
    details: dict,
    names: Sequence[str],
    errors_of: Callable[[int], torch.Tensor],
    plain_errors_of: Callable[[int], torch.Tensor] | None,
    declared: float | None,
    dtype: DType,
    seed: int,
    subject: str,
    where: Callable[[str, torch.Tensor], str],
) -> CheckResult:
    """The forward's passing `result` extended by the gradients `names`, in order, each judged by its
    worst relative L2 error (`errors_of(i)`: its errors per pair or batch) against a tolerance: the
    method's `declared` one, else the one calibrated from the plain evaluation in the dtype
    (`plain_errors_of(i)`), else, without a plain evaluation (the linear family), the family's. The
    first gradient over its tolerance fails the check, named with `where(name, errors)`."""
    errors, limits, plain_errors = {}, {}, {}
    for i, name in enumerate(names):
        per = errors_of(i)
        errors[name] = float(per.max())
        if declared is None and plain_errors_of is not None:
            plain_errors[name] = float(plain_errors_of(i).max())
        limits[name], source = tolerance_for(dtype, declared, plain_errors.get(name))
        if not (math.isfinite(errors[name]) and errors[name] <= limits[name]):
            details.update(grad_errors=errors, grad_tolerance=limits)
            return CheckResult(False, max(errors.values()), result.fidelity_rel_l2, result.fidelity_max_abs,
                               f"gradient {name} relative L2 error {errors[name]:.3g}{where(name, per)} vs float64 "
                               f"autograd of {subject} exceeds the {dtype} tolerance {limits[name]:.3g} ({source}; "
                               f"check seed {seed})", details)
    details.update(grad_errors=errors, grad_tolerance=limits, grad_tolerance_source=source)
    if plain_errors:
        details["grad_plain_error"] = plain_errors
    worst = max([e for e in (result.error, *errors.values()) if e is not None])
    return CheckResult(True, worst, result.fidelity_rel_l2, result.fidelity_max_abs, result.message, details)


def _verdict(got: torch.Tensor, definition: torch.Tensor, exact: torch.Tensor, case: Case, seed: int, limit: float,
             source: str, details: dict, why: str = "") -> CheckResult:
    """Pass or fail on the worst (batch, head) pair; fidelity over all of them."""
    fidelity = float((got - exact).norm() / exact.norm().clamp_min(1e-300))
    max_abs = float((got - exact).abs().max())
    per_pair = _rel_l2_per_pair(got, definition)
    error = float(per_pair.max())
    worst_b, worst_h = divmod(int(per_pair.argmax()), case.heads)
    details.update(tolerance=limit, tolerance_source=source, worst_pair=[worst_b, worst_h])
    if not (math.isfinite(error) and error <= limit):
        return CheckResult(False, error, fidelity, max_abs,
                           f"relative L2 error {error:.3g} (batch {worst_b}, head {worst_h}) vs its float64 "
                           f"definition exceeds the {case.dtype} tolerance {limit:.3g} ({source}{why}; "
                           f"check seed {seed})", details)
    return CheckResult(True, error, fidelity, max_abs, "", details)


def _check_linear(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, seed: int,
                  rows: int, tolerance: Callable[[Case], float] | None, reference: Definition | None,
                  details: dict) -> CheckResult:
    """A linear method against its own float64 recurrence, every (batch, head), on sampled rows."""
    picked = check_rows(case, seed, rows).to(q.device)
    details.update(rows=len(picked))
    with torch.no_grad():
        got = out[:, :, picked].to(torch.float64)
        exact = _by_head_chunks(
            lambda a, b, c: exact_attention_f64(a, b, c, case.causal, case.softmax_scale, rows=picked),
            q, k, v, case, len(picked) * case.seq_len)
        if reference is None:
            return CheckResult(False, None, float("nan"), float("nan"),
                               "linear method without a float64 definition (Method.reference)", details)
        if case.seq_len > MAX_RECURRENT_LENGTH:
            fidelity = float((got - exact).norm() / exact.norm().clamp_min(1e-300))
            return CheckResult(True, None, fidelity, float((got - exact).abs().max()),
                               f"correctness not evaluated: a sequence longer than {MAX_RECURRENT_LENGTH} is too "
                               "long for the float64 recurrence", details)
        definition = reference(q, k, v, case)[:, :, picked].to(torch.float64)
    limit, source = tolerance_for(case.dtype, None if tolerance is None else float(tolerance(case)), None)
    return _verdict(got, definition, exact, case, seed, limit, source, details)
