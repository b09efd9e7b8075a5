"""Layer and model scope: the step to time and the correctness gate of a case whose attention runs
inside a Llama-shaped layer or model (tbench/model/).

The module is built once per shape group (the cases of a group differ only in their attention) and
each case's step selects its own attention implementation before every call. The gate runs the
module with the case's method on fresh inputs and compares its output with the layer's (or the
model's) definition evaluated in float64 with the method's own float64 definition as attention:
exact attention for exact methods, the tensorized spec for tensorized ones, the window for sparse
ones, the method's recurrence for linear ones. The tolerance is calibrated as the operator's is
(harness/correctness.py): the same definition evaluated plainly in the case's dtype shows what
rounding alone costs. A layer is compared on what it adds to the residual stream (its output minus
its input), so the residual cannot hide a wrong attention; a model on its last hidden state. Where
the float64 evaluation of every row is too costly, a layer is compared on sampled rows, and a
model's first layer alone (on sampled rows), which the details say.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from ..core.case import PAPER_PASSES, Case, Family, Scope, TimingProtocol
from ..core.shapes import model_shape
from ..kernels.reference import exact_attention_f64
from ..methods.registry import Method
from ..model.attention import TbenchAttention, attention_name
from ..model.build import Built, build, make_input, memory_estimate
from ..model.reference import layer_reference, model_reference
from .correctness import (
    LINEAR_TOLERANCE,
    MAX_RECURRENT_LENGTH,
    CheckResult,
    _by_head_chunks,
    _definition,
    _whole,
    check_rows,
    default_tolerance,
)
from .passes import Step
from .timing import TimingPolicy


def scoped_memory_estimate(case: Case, method: Method) -> int:
    """The layer's (or model's) bytes plus the attention's own estimate, when the method has one."""
    attention = method.memory_estimate(case.attention()) if method.memory_estimate else 0
    return memory_estimate(case) + attention


def attention_of(case: Case, method: Method) -> tuple[str, dict]:
    """Registers the case's method (at its order) with transformers; returns its name and the
    forward keywords that pass the case's folding dims."""
    from transformers import AttentionInterface

    name = attention_name(case.method, case.order)
    AttentionInterface.register(name, TbenchAttention(method, case.order, causal=case.causal))
    return name, ({"tbench_dims": case.dims} if case.dims else {})


def scoped_step(case: Case, method: Method, built: Built, inputs: torch.Tensor) -> Step:
    """The forward the case times (the paper's protocol: PAPER_PASSES of them back to back)."""
    if case.mode.needs_backward:
        raise NotImplementedError("layer and model scope time the forward only")
    name, extra = attention_of(case, method)
    passes = PAPER_PASSES if case.protocol is TimingProtocol.PAPER else 1

    def forward() -> torch.Tensor:
        built.use(name)
        with torch.no_grad():
            out = built.forward(inputs, **extra)
            for _ in range(passes - 1):
                out = built.forward(inputs, **extra)
        return out

    return Step(forward)


def paper_policy(policy: TimingPolicy) -> TimingPolicy:
    """The paper's protocol takes one sample: the mean of PAPER_PASSES forward passes."""
    return dataclasses.replace(policy, min_samples=1, max_samples=1, min_time_s=0.0)


def build_for(case: Case, seed: int) -> tuple[Built, torch.Tensor]:
    return build(case, seed), make_input(case, seed)


# --- the gate ------------------------------------------------------------------------------------


def _attention_definition(case: Case, method: Method, exact: bool = False) -> Callable[..., torch.Tensor]:
    """(q, k, v, rows, dtype) -> (B, H, rows, D): the method's definition (or exact attention)."""
    attn = case.attention()
    scale = attn.softmax_scale

    def evaluate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None,
                 dtype: torch.dtype) -> torch.Tensor:
        n_rows = attn.seq_len if rows is None else len(rows)
        if exact:
            return _by_head_chunks(lambda a, b, c: exact_attention_f64(a, b, c, attn.causal, scale, rows=rows,
                                                                         dtype=dtype), q, k, v, attn,
                                   n_rows * attn.seq_len)
        if attn.family is Family.LINEAR:
            assert method.reference is not None
            out = method.reference(q.to(torch.float64), k.to(torch.float64), v.to(torch.float64), attn)
            return (out if rows is None else out[:, :, rows]).to(dtype)
        return _by_head_chunks(lambda a, b, c: _definition(a, b, c, attn, rows, dtype), q, k, v, attn,
                               n_rows * attn.seq_len)

    return evaluate


def _run_first_layer(built: Built, ids: torch.Tensor, extra: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's embedded tokens and its first layer's output on them (the method's attention)."""
    model = built.module
    x = model.embed_tokens(ids)
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    out = model.layers[0](x, attention_mask=None, position_ids=positions,
                          position_embeddings=model.rotary_emb(x, position_ids=positions), **extra)
    return x, out[0] if isinstance(out, tuple) else out


def _rel_per_batch(got: torch.Tensor, ref: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
    diff = (got - ref).flatten(1).norm(dim=-1)
    scale = (ref if base is None else ref - base).flatten(1).norm(dim=-1)
    return diff / scale.clamp_min(1e-300)


def check_scoped(case: Case, method: Method, built: Built, seed: int,
                 tolerance: Callable[[Case], float] | None = None) -> CheckResult:
    """The module with the case's method on fresh inputs (from `seed`) against its float64
    definition with the method's own float64 attention (see the module's docstring)."""
    attn_case = case.attention()
    name, extra = attention_of(case, method)
    inputs = make_input(case, seed)
    details: dict = {"seed": seed, "compared": "layer output minus its input" if case.scope is Scope.LAYER
                     else "last hidden state"}
    whole = _whole(attn_case)
    linear = case.family is Family.LINEAR
    if linear and case.seq_len > MAX_RECURRENT_LENGTH:
        return CheckResult(True, None, float("nan"), float("nan"),
                           f"correctness not evaluated: a sequence longer than {MAX_RECURRENT_LENGTH} is too long "
                           "for the float64 recurrence", details)
    built.use(name)
    with torch.no_grad():
        if case.scope is Scope.MODEL and whole:
            x, out = None, built.forward(inputs, **extra)
        elif case.scope is Scope.MODEL:
            x, out = _run_first_layer(built, inputs, extra)
            details["compared"] = "first layer's output minus its input (the depth in float64 costs too much)"
        else:
            x, out = inputs, built.forward(inputs, **extra)
    if not torch.isfinite(out).all():
        return CheckResult(False, float("nan"), float("nan"), float("nan"), "output has NaN or Inf", details)
    rows = None if whole else check_rows(attn_case, seed).to(out.device)
    details["rows"] = "all" if rows is None else len(rows)
    layer = built.module if case.scope is Scope.LAYER else built.module.layers[0]

    def evaluate(attention: Callable[..., torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        parts = []
        with torch.no_grad():
            for b in range(case.batch):  # one sequence at a time: float64 copies of long ones are large
                if x is None:
                    parts.append(model_reference(built.module, inputs[b : b + 1], attention, dtype))
                else:
                    parts.append(layer_reference(layer, built.rotary, x[b : b + 1], attention, rows, dtype))
        return torch.cat(parts).to(torch.float64)

    got = (out if rows is None else out[:, rows]).to(torch.float64)
    base = None if x is None else (x if rows is None else x[:, rows]).to(torch.float64)
    definition = evaluate(_attention_definition(case, method), torch.float64)
    per_batch = _rel_per_batch(got, definition, base)
    error = float(per_batch.max())
    if case.family in (Family.EXACT, Family.APPROXIMATE) or (case.is_tensorized and len(case.dims or ()) <= 1):
        exact = definition
    else:
        exact = evaluate(_attention_definition(case, method, exact=True), torch.float64)
    fidelity = float(_rel_per_batch(got, exact, base).max())
    max_abs = float((got - exact).abs().max())
    if tolerance is not None:
        limit, source = float(tolerance(attn_case)), "declared by the method"
    elif linear:
        limit, source = LINEAR_TOLERANCE[case.dtype], "the linear family's"
    else:
        plain = evaluate(_attention_definition(case, method), out.dtype)
        plain_error = float(_rel_per_batch(plain, definition, base).max())
        details["plain_error"] = plain_error
        limit, source = default_tolerance(case.dtype, plain_error), "calibrated"
    details.update(tolerance=limit, tolerance_source=source)
    if not (math.isfinite(error) and error <= limit):
        worst = int(per_batch.argmax())
        return CheckResult(False, error, fidelity, max_abs,
                           f"{case.scope} output's relative L2 error {error:.3g} (batch {worst}) vs its float64 "
                           f"definition exceeds the {case.dtype} tolerance {limit:.3g} ({source}; check seed {seed})",
                           details)
    return CheckResult(True, error, fidelity, max_abs, "", details)


def depth_estimate(case: Case, median_ms: float) -> dict:
    """Model scope: the time per layer and the estimate for the model's published depth, with its
    basis (what was timed and how it is scaled)."""
    depth = model_shape(case.model).layers
    per_layer = median_ms / case.layers
    return {"layers_timed": case.layers, "depth": depth, "per_layer_ms": per_layer,
            "full_depth_ms_estimate": median_ms * depth / case.layers,
            "basis": f"{case.layers} of {depth} layers timed with the embedding; scaled by {depth}/{case.layers} "
                     "(the embedding's share is scaled with the layers)"}
