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
model's first layer alone (on sampled rows), which the details say. The forward output is compared
on the batch's first and last sequences: every sequence runs the same code, and the last one is
where a wrong batch stride shows; each sequence's float64 evaluation costs as much as a sequence of
the timed step (6-9 s of checking per configuration at 32k, batch 5, when all were evaluated).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from copy import deepcopy as copy_module

import torch

from ..core.case import PAPER_PASSES, Case, Family, Scope, TimingProtocol
from ..core.shapes import model_shape
from ..kernels.reference import exact_attention_f64
from ..methods.registry import Method
from ..model.attention import TbenchAttention, attention_name
from ..model.build import Built, build, make_input, memory_estimate
from ..model.reference import layer_reference, model_reference
from .correctness import (
    GRAD_SEED_OFFSET,
    MAX_RECURRENT_LENGTH,
    CheckResult,
    _by_head_chunks,
    _definition,
    _whole,
    check_rows,
    gradient_verdict,
    tolerance_for,
)
from .passes import Step, make_step
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
    """The step the case's mode times. fwd: the forward (the paper's protocol: PAPER_PASSES of them
    back to back). bwd and fwd_bwd: a training step of the layer or model, its input hidden states
    requiring gradients (token ids at model scope) and every weight receiving its gradient, for a
    fixed standard normal output gradient (the gradient of the scalar sum(out * dO)); bwd times the
    backward alone from an untimed forward (harness/passes.py)."""
    name, extra = attention_of(case, method)
    if case.mode.needs_backward:
        weights = tuple(built.module.parameters())
        for weight in weights:
            weight.requires_grad_(True)

        def train_forward(x: torch.Tensor) -> torch.Tensor:
            built.use(name)
            return built.forward(x, **extra)

        return make_step(train_forward, (inputs,), case, weights)
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


# The deepest model whose whole stack the gate evaluates in float64 (deeper: its first layer).
WHOLE_MODEL_LAYERS = 2


def checked_sequences(batch: int) -> tuple[int, ...]:
    """The sequences of a batch whose forward output the gate compares: the first and the last."""
    return (0,) if batch == 1 else (0, batch - 1)


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
    # A model deeper than WHOLE_MODEL_LAYERS is checked through its first layer: the float64 stack
    # of llama3-8b's 32 layers is 56 GB of weights and took most of a minute per method at 4k.
    whole = _whole(attn_case) and (case.scope is not Scope.MODEL or case.layers <= WHOLE_MODEL_LAYERS)
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
    sequences = checked_sequences(case.batch)
    details["sequences"] = list(sequences)

    def evaluate(attention: Callable[..., torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        parts = []
        with torch.no_grad():
            if linear:  # its gates are drawn for the whole batch, so its definition runs on the whole batch
                whole_batch = (model_reference(built.module, inputs, attention, dtype) if x is None
                               else layer_reference(layer, built.rotary, x, attention, rows, dtype))
                return whole_batch[list(sequences)].to(torch.float64)
            for b in sequences:  # one sequence at a time: float64 copies of long ones are large
                if x is None:
                    parts.append(model_reference(built.module, inputs[b : b + 1], attention, dtype))
                else:
                    parts.append(layer_reference(layer, built.rotary, x[b : b + 1], attention, rows, dtype))
        return torch.cat(parts).to(torch.float64)

    picked = list(sequences)
    got = (out[picked] if rows is None else out[picked][:, rows]).to(torch.float64)
    base = None if x is None else (x[picked] if rows is None else x[picked][:, rows]).to(torch.float64)
    definition = evaluate(_attention_definition(case, method), torch.float64)
    per_batch = _rel_per_batch(got, definition, base)
    error = float(per_batch.max())
    if case.family in (Family.EXACT, Family.APPROXIMATE) or (case.is_tensorized and len(case.dims or ()) <= 1):
        exact = definition
    else:
        exact = evaluate(_attention_definition(case, method, exact=True), torch.float64)
    fidelity = float(_rel_per_batch(got, exact, base).max())
    max_abs = float((got - exact).abs().max())
    declared = None if tolerance is None else float(tolerance(attn_case))
    plain_error = None
    if declared is None and not linear:
        plain = evaluate(_attention_definition(case, method), out.dtype)
        plain_error = details["plain_error"] = float(_rel_per_batch(plain, definition, base).max())
    limit, source = tolerance_for(case.dtype, declared, plain_error)
    details.update(tolerance=limit, tolerance_source=source)
    if not (math.isfinite(error) and error <= limit):
        worst = sequences[int(per_batch.argmax())]
        return CheckResult(False, error, fidelity, max_abs,
                           f"{case.scope} output's relative L2 error {error:.3g} (batch {worst}) vs its float64 "
                           f"definition exceeds the {case.dtype} tolerance {limit:.3g} ({source}; check seed {seed})",
                           details)
    result = CheckResult(True, error, fidelity, max_abs, "", details)
    if not case.mode.needs_backward:
        return result
    first = inputs if case.scope is Scope.LAYER else (x if x is not None else _embedded(built, inputs))
    return _with_gradients(result, case, method, built, layer, first, rows, seed, tolerance, name, extra)


# --- the gradients of a training step -------------------------------------------------------------

SCOPED_GRADIENTS = ("dx", "dwq")


def _embedded(built: Built, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return built.module.embed_tokens(ids)


def _layer_call(layer: torch.nn.Module, rotary: torch.nn.Module, x: torch.Tensor, extra: dict) -> torch.Tensor:
    positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    out = layer(x, attention_mask=None, position_ids=positions, position_embeddings=rotary(x, position_ids=positions),
                **extra)
    return out[0] if isinstance(out, tuple) else out


def _layer_gradients(layer: torch.nn.Module, rotary: torch.nn.Module, x: torch.Tensor, d_out: torch.Tensor,
                     rows: torch.Tensor | None, attention: Callable[..., torch.Tensor],
                     dtype: torch.dtype, whole_batch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """dx and the q projection's weight gradient of the layer's definition (model/reference.py),
    evaluated in `dtype` on a copy of the layer, one sequence at a time (their dWq summed), or the
    whole batch at once (`whole_batch`: a linear method's gates are drawn for the whole batch)."""
    copy = _copy_in(layer, dtype)
    weight = copy.self_attn.q_proj.weight
    dxs, dw = [], torch.zeros_like(weight)
    parts = [slice(0, x.shape[0])] if whole_batch else [slice(b, b + 1) for b in range(x.shape[0])]
    for part in parts:
        leaf = x[part].detach().to(dtype).requires_grad_(True)
        with torch.enable_grad():
            out = layer_reference(copy, rotary, leaf, attention, rows, dtype)
            grad = d_out[part] if rows is None else d_out[part, rows]
            dx, dwq = torch.autograd.grad(out, (leaf, weight), grad.to(dtype))
        dxs.append(dx.to(torch.float64))
        dw += dwq
    return torch.cat(dxs), dw.to(torch.float64)


def _copy_in(layer: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # the reference differentiates its own copy: the module's weights keep their flags and no .grad
    copy = copy_module(layer).to(dtype)
    for parameter in copy.parameters():
        parameter.requires_grad_(False)
    copy.self_attn.q_proj.weight.requires_grad_(True)
    return copy


def _with_gradients(result: CheckResult, case: Case, method: Method, built: Built, layer: torch.nn.Module,
                    x: torch.Tensor, rows: torch.Tensor | None, seed: int,
                    tolerance: Callable[[Case], float] | None, name: str, extra: dict) -> CheckResult:
    """A training step's gradients through the (first) layer with the case's method, for a standard
    normal output gradient dO (zero outside the checked rows where rows are sampled), against
    float64 autograd of the layer's definition with the method's float64 attention: the input
    gradient minus dO (the residual passes dO through unchanged, which would hide a wrong
    attention) per sequence, and the q projection's weight gradient."""
    details = dict(result.details)
    details["grad_compared"] = ("input gradient minus the output gradient, and the q projection's weight gradient, "
                                + ("of the layer" if case.scope is Scope.LAYER else "of the first layer"))
    generator = torch.Generator().manual_seed(seed + GRAD_SEED_OFFSET)
    d_out = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.dtype).to(x.device)
    if rows is not None:
        mask = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
        mask[rows] = True
        d_out = d_out * mask[None, :, None].to(d_out.dtype)
    weight = layer.self_attn.q_proj.weight
    flag = weight.requires_grad
    weight.requires_grad_(True)
    leaf = x.detach().requires_grad_(True)
    try:
        built.use(name)
        with torch.enable_grad():
            out = _layer_call(layer, built.rotary, leaf, extra)
            got = torch.autograd.grad(out, (leaf, weight), d_out, allow_unused=True)
    finally:
        weight.requires_grad_(flag)
    for label, grad in zip(SCOPED_GRADIENTS, got, strict=True):
        if grad is None or not torch.isfinite(grad).all():
            why = "no gradient reaches it" if grad is None else "it has NaN or Inf"
            return CheckResult(False, result.error, result.fidelity_rel_l2, result.fidelity_max_abs,
                               f"gradient {label} of the {case.scope}: {why}", details)
    base = d_out.to(torch.float64)
    linear = case.family is Family.LINEAR
    definition = _layer_gradients(layer, built.rotary, x, d_out, rows, _attention_definition(case, method),
                                  torch.float64, whole_batch=linear)
    plain = None
    if tolerance is None and not linear:
        plain = _layer_gradients(layer, built.rotary, x, d_out, rows, _attention_definition(case, method), x.dtype)

    def error(i: int, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.to(torch.float64)
        if i == 0:
            return _rel_per_batch(grad, definition[0], base)
        return ((grad - definition[1]).norm() / definition[1].norm().clamp_min(1e-300)).reshape(1)

    def where(name: str, per_batch: torch.Tensor) -> str:  # the input gradient has one error per sequence
        return f" (batch {int(per_batch.argmax())})" if name == SCOPED_GRADIENTS[0] else ""

    return gradient_verdict(
        result, details, SCOPED_GRADIENTS, lambda i: error(i, got[i]),
        None if plain is None else lambda i: error(i, plain[i]),
        None if tolerance is None else float(tolerance(case.attention())), case.dtype, seed,
        f"the {case.scope}'s definition", where)


def depth_estimate(case: Case, median_ms: float) -> dict:
    """Model scope: the time per layer and the estimate for the model's published depth, with its
    basis (what was timed and how it is scaled)."""
    depth = model_shape(case.model).layers
    per_layer = median_ms / case.layers
    return {"layers_timed": case.layers, "depth": depth, "per_layer_ms": per_layer,
            "full_depth_ms_estimate": median_ms * depth / case.layers,
            "basis": f"{case.layers} of {depth} layers timed with the embedding; scaled by {depth}/{case.layers} "
                     "(the embedding's share is scaled with the layers)"}
