"""The correctness gate and the fidelity figures, both against float64 evaluations.

Before a method is timed, it runs once on fresh inputs (their own seed, so nothing cached from
the timed inputs can pass) and a random subset of its output is compared with its own definition
in float64, chosen by the method's family:
- exact: exact attention; approximate: exact attention too, within the method's declared tolerance;
- tensorized: the tensorized spec (kernels/reference.py);
- sparse: exact attention restricted to the method's causal window;
- linear: the method's own float64 recurrence (kernels/linear_reference.py, with its gates).
The same rows are compared with exact attention to give the method's fidelity (how far its
operator is from exact attention; for linear and sparse methods, a property of the operator
rather than an error). Inputs are standard normal q, k, v.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.case import Case, Family, sliding_window
from ..kernels.reference import exact_attention_f64, tensorized_attention_f64
from ..kernels.tensors import make_inputs

# Relative L2 error allowed against the float64 definition. Far above rounding for each dtype,
# far below what a wrong kernel produces (order 1).
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 3e-2}

INPUT_DISTRIBUTION = "q, k, v independent standard normal N(0, 1), seeded"

# The float64 tensorized reference computes whole hops; beyond this slice length it is too big.
MAX_REFERENCE_SLICE = 16384

# The float64 recurrences of the linear family loop over tokens; beyond this length they are too slow.
MAX_RECURRENT_LENGTH = 16384

Definition = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Case], torch.Tensor]


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    error: float | None  # relative L2 error vs the method's own definition
    fidelity_rel_l2: float  # vs exact attention
    fidelity_max_abs: float
    message: str = ""


def _rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def check(
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    case: Case,
    seed: int,
    rows: int = 64,
    heads: int = 2,
    tolerance: float | None = None,
    reference: Definition | None = None,
) -> CheckResult:
    """Run `call` on fresh inputs and compare sampled (batch, head, row) outputs in float64.

    `tolerance` replaces the dtype's default; `reference` is the method's own float64 definition
    (needed by the linear family: (q, k, v, case) -> (B, H, N, D))."""
    q, k, v = make_inputs(case, seed)
    with torch.no_grad():
        out = call(q, k, v)
    if tuple(out.shape) != tuple(q.shape):
        return CheckResult(False, None, float("nan"), float("nan"),
                           f"output shape {tuple(out.shape)}, expected {tuple(q.shape)}")

    generator = torch.Generator().manual_seed(seed + 1)
    n = case.seq_len
    picked_rows = torch.randperm(n, generator=generator)[: max(1, rows - 1)]
    picked_rows = torch.unique(torch.cat([picked_rows, torch.tensor([n - 1])])).to(q.device)
    group = case.heads // case.kv_heads
    pairs = [(int(torch.randint(case.batch, (1,), generator=generator)),
              int(torch.randint(case.heads, (1,), generator=generator))) for _ in range(heads)]

    whole = None  # the linear family's definition, all heads at once (its recurrence is batched)
    if case.family is Family.LINEAR:
        if reference is None:
            return CheckResult(False, None, float("nan"), float("nan"),
                               "linear method without a float64 definition (Method.reference)")
        if n <= MAX_RECURRENT_LENGTH:
            whole = reference(q, k, v, case)

    got, definition, exact = [], [], []
    for b, h in pairs:
        kv = h // group
        qs, ks, vs = q[b : b + 1, h : h + 1], k[b : b + 1, kv : kv + 1], v[b : b + 1, kv : kv + 1]
        exact_rows = exact_attention_f64(qs, ks, vs, case.causal, case.softmax_scale, rows=picked_rows)
        if case.family is Family.TENSORIZED:
            definition_rows = _tensorized_rows(qs, ks, vs, case, picked_rows, exact_rows)
        elif case.family is Family.SPARSE:
            definition_rows = exact_attention_f64(qs, ks, vs, case.causal, case.softmax_scale, rows=picked_rows,
                                                  window=sliding_window(n))
        elif case.family is Family.LINEAR:
            definition_rows = whole[b : b + 1, h : h + 1, picked_rows] if whole is not None else None
        else:
            definition_rows = exact_rows
        got.append(out[b : b + 1, h : h + 1, picked_rows].to(torch.float64))
        exact.append(exact_rows)
        if definition_rows is not None:
            definition.append(definition_rows)

    got_t, exact_t = torch.cat(got), torch.cat(exact)
    fidelity = _rel_l2(got_t, exact_t)
    max_abs = float((got_t - exact_t).abs().max())
    if not torch.isfinite(got_t).all():
        return CheckResult(False, float("nan"), fidelity, max_abs, "output has NaN or Inf")
    if not definition:
        why = (f"a sequence longer than {MAX_RECURRENT_LENGTH} is too long for the float64 recurrence"
               if case.family is Family.LINEAR
               else f"a slice longer than {MAX_REFERENCE_SLICE} is too big for the float64 reference")
        return CheckResult(True, None, fidelity, max_abs, f"correctness not evaluated: {why}")
    error = _rel_l2(got_t, torch.cat(definition))
    tolerance = TOLERANCE[case.dtype] if tolerance is None else tolerance
    if not error <= tolerance:
        return CheckResult(False, error, fidelity, max_abs,
                           f"relative L2 error {error:.3g} vs its float64 definition exceeds the "
                           f"{case.dtype} tolerance {tolerance:g}")
    return CheckResult(True, error, fidelity, max_abs)


def _tensorized_rows(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, rows: torch.Tensor, exact_rows: torch.Tensor
) -> torch.Tensor | None:
    assert case.dims is not None
    if len(case.dims) == 1:
        # One hop over the whole (padded) sequence is exact attention: padded keys never count.
        return exact_rows
    if max(case.dims) > MAX_REFERENCE_SLICE:
        return None
    full = tensorized_attention_f64(q, k, v, case.dims, case.causal, case.softmax_scale)
    return full[:, :, rows]
