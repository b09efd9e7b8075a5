"""The linear-attention family through fla-core (flash-linear-attention's Triton kernels), when
installed (`pip install 'tbench[linear]'`).

Each method is a recurrence with a D x D state per head (kernels/linear_reference.py gives each in
float64). fla takes (B, N, H, D) tensors with as many key/value heads as query heads, so `prepare`
transposes and expands the KV heads outside the timed region. The gates and decays a method
needs are part of its operator: they are drawn in `bind`, outside the timed region, from a
generator with the fixed seed GATE_SEED (so every run and the correctness gate use the same
operator), and recorded in provenance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch
import torch.nn.functional as F
from packaging.version import Version

from ..core.case import Case
from ..kernels.linear_reference import delta_rule_recurrence, gated_recurrence, retention_log_decay
from .availability import cuda_availability, import_problem
from .registry import Availability, Call, Method, method

GATE_SEED = 20240
# GLA's gate normaliser: log-sigmoid gates divided by 16 keep decays near 1 (about 0.96 per token).
GATE_NORMALISER = 16.0


@dataclass(frozen=True)
class Gates:
    """What a linear method's operator needs besides q, k and v, in fla's (B, N, H[, D]) layout."""

    g: torch.Tensor | None = None  # log decays: (B, N, H) or (B, N, H, D)
    beta: torch.Tensor | None = None  # delta-rule write strengths in (0, 1): (B, N, H)


def _normal(case: Case, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator(device=case.device).manual_seed(GATE_SEED)
    return torch.randn(shape, generator=generator, device=case.device, dtype=torch.float32)


def no_gates(case: Case) -> Gates:
    return Gates()


def head_gates(case: Case) -> Gates:
    """One log decay per token and head (simple GLA)."""
    return Gates(g=F.logsigmoid(_normal(case, (case.batch, case.seq_len, case.heads))) / GATE_NORMALISER)


def key_gates(case: Case) -> Gates:
    """One log decay per token, head and key dim (GLA)."""
    shape = (case.batch, case.seq_len, case.heads, case.head_dim)
    return Gates(g=F.logsigmoid(_normal(case, shape)) / GATE_NORMALISER)


def delta_gates(case: Case) -> Gates:
    beta = torch.sigmoid(_normal(case, (case.batch, case.seq_len, case.heads)))
    from ..kernels.tensors import torch_dtype

    return Gates(beta=beta.to(torch_dtype(case)))


def _to_fla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, H, D) contiguous, KV heads expanded to H (query head h reads kv head h // group)."""
    group = case.heads // case.kv_heads
    k, v = (t.repeat_interleave(group, dim=1) if group > 1 else t for t in (k, v))
    return q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()


def _expanded_f64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    group = case.heads // case.kv_heads
    k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    return q.double(), k.double(), v.double()


# --- the operators: fla's call and its float64 definition ------------------------------------------


def _fla_linear_attn(q, k, v, gates: Gates, scale: float):
    from fla.ops.linear_attn import chunk_linear_attn

    return chunk_linear_attn(q, k, v, scale=scale, normalize=False)


def _fla_simple_gla(q, k, v, gates: Gates, scale: float):
    from fla.ops.simple_gla import chunk_simple_gla

    return chunk_simple_gla(q, k, v, g=gates.g, scale=scale)


def _fla_gla(q, k, v, gates: Gates, scale: float):
    from fla.ops.gla import chunk_gla

    return chunk_gla(q, k, v, g=gates.g, scale=scale)


def _fla_retention(q, k, v, gates: Gates, scale: float):
    from fla.ops.retention import chunk_retention

    return chunk_retention(q, k, v, scale=scale)


def _fla_delta_rule(q, k, v, gates: Gates, scale: float):
    from fla.ops.delta_rule import chunk_delta_rule

    return chunk_delta_rule(q, k, v, beta=gates.beta, scale=scale, use_qk_l2norm_in_kernel=True)


def _ref_decayed(q, k, v, case: Case, gates: Gates) -> torch.Tensor:
    q, k, v = _expanded_f64(q, k, v, case)
    log_decay = None if gates.g is None else gates.g.transpose(1, 2)  # (B, H, N[, D])
    return gated_recurrence(q, k, v, log_decay, case.softmax_scale)


def _ref_retention(q, k, v, case: Case, gates: Gates) -> torch.Tensor:
    q, k, v = _expanded_f64(q, k, v, case)
    decay = retention_log_decay(case.heads).to(q.device)
    log_decay = decay.view(1, -1, 1).expand(case.batch, case.heads, case.seq_len)
    return gated_recurrence(q, k, v, log_decay, case.softmax_scale)


def _ref_delta_rule(q, k, v, case: Case, gates: Gates) -> torch.Tensor:
    q, k, v = _expanded_f64(q, k, v, case)
    assert gates.beta is not None
    return delta_rule_recurrence(q, k, v, gates.beta.transpose(1, 2), case.softmax_scale)


@dataclass(frozen=True)
class LinearOperator:
    name: str
    function: str  # fla's entry point, for provenance
    description: str
    gates: Callable[[Case], Gates]
    gate_text: str
    fla: Callable[..., tuple]
    reference: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Case, Gates], torch.Tensor]
    # Whether the backward goes through fla's gated chunk_bwd_dqkwg (per-token gates g), which fla
    # refuses on Hopper under Triton 3.4.0 up to 3.7.1 (see backward_problem).
    gated_backward: bool = False


OPERATORS = (
    LinearOperator("linear-attn", "fla.ops.linear_attn.chunk_linear_attn",
                   "Linear attention (no feature map, no normalisation), fla-core chunked kernel",
                   no_gates, "no gates; normalize=False", _fla_linear_attn, _ref_decayed),
    LinearOperator("simple-gla", "fla.ops.simple_gla.chunk_simple_gla",
                   "Simple gated linear attention (one decay per head and token), fla-core",
                   head_gates, f"g = logsigmoid(N(0,1))/{GATE_NORMALISER:g} per (token, head)", _fla_simple_gla,
                   _ref_decayed, gated_backward=True),
    LinearOperator("gla", "fla.ops.gla.chunk_gla",
                   "Gated linear attention (one decay per head, token and key dim), fla-core",
                   key_gates, f"g = logsigmoid(N(0,1))/{GATE_NORMALISER:g} per (token, head, key dim)", _fla_gla,
                   _ref_decayed),
    LinearOperator("retention", "fla.ops.retention.chunk_retention",
                   "Retention (RetNet: fixed decay 1 - 2^(-5-h) per head), fla-core",
                   no_gates, "fixed decays 1 - 2^(-5-h) per head h", _fla_retention, _ref_retention),
    LinearOperator("delta-rule", "fla.ops.delta_rule.chunk_delta_rule",
                   "DeltaNet's delta rule (q, k L2-normalised in the kernel), fla-core",
                   delta_gates, "beta = sigmoid(N(0,1)) per (token, head); q, k L2-normalised", _fla_delta_rule,
                   _ref_delta_rule),
)


def fla_version() -> str:
    try:
        return metadata.version("fla-core")
    except metadata.PackageNotFoundError:
        return "version unknown"


def backward_problem(capability: tuple[int, int], triton_version: str, has_tilelang: bool) -> str | None:
    """Why fla-core's gated backward cannot run here, or None. fla 0.6 raises at the first backward on
    Hopper (sm 9.x) with Triton >= 3.4.0 and < 3.7.1 (wrong results in chunk_bwd_dqkwg, its issue
    #640) unless tilelang is installed to replace that kernel; said before a run, not found in one."""
    if capability[0] != 9 or has_tilelang:
        return None
    if Version("3.4.0") <= Version(triton_version) < Version("3.7.1"):
        return (f"its backward is refused by fla-core on Hopper with Triton {triton_version} (gated chunk_bwd_dqkwg "
                "gives wrong results under Triton 3.4.0 to 3.7.0); needs Triton >= 3.7.1 or tilelang")
    return None


def _gated_backward_problem(case: Case) -> str | None:
    if not case.mode.needs_backward or not case.device.startswith("cuda") or not torch.cuda.is_available():
        return None
    import importlib.util

    import triton

    return backward_problem(torch.cuda.get_device_capability(torch.device(case.device)), triton.__version__,
                            importlib.util.find_spec("tilelang") is not None)


def _availability(device: str) -> Availability:
    if device != "cuda":  # checked first: importing fla on a machine without a GPU only warns and falls back
        return Availability(False, reason=f"needs a CUDA GPU (fla-core's Triton kernels), device is {device}")
    problem = import_problem("fla.ops", "fla-core is not installed (pip install 'tbench[linear]')")
    if problem is not None:
        return problem
    return cuda_availability(device, f"fla-core {fla_version()}")


def linear_method(op: LinearOperator) -> Method:
    def bind(case: Case) -> Call:
        gates = op.gates(case)

        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
            out, _ = op.fla(q, k, v, gates, case.softmax_scale)
            return out.transpose(1, 2)  # (B, H, N, D)

        return call

    def unbound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
        return bind(case)(q, k, v, case)

    def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
        return op.reference(q, k, v, case, op.gates(case))

    def describe(case: Case) -> str:
        availability = _availability("cuda" if case.device.startswith("cuda") else case.device)
        base = availability.provenance or f"fla-core {fla_version()}"
        expanded = "; KV heads expanded to H before the call" if case.kv_heads != case.heads else ""
        return f"{base} {op.function}, (B, N, H, D); {op.gate_text}, seed {GATE_SEED}{expanded}"

    def memory(case: Case) -> int:
        rows = case.batch * case.heads * case.seq_len * case.head_dim
        # the output, fla's chunk states (one D x D state per 64 tokens) and the gates in float32
        return rows * case.element_size + rows // 64 * case.head_dim * 4 + rows * 4

    return method(
        name=op.name,
        family="linear",
        description=op.description,
        availability=_availability,
        devices=frozenset({"cuda"}),
        noncausal=False,
        head_dims=frozenset({16, 32, 64, 128, 256}),
        memory_estimate=memory,
        prepare=_to_fla,
        bind=bind,
        describe=describe,
        reference=reference,
        unsupported=_gated_backward_problem if op.gated_backward else None,
    )(unbound)


LINEAR_METHODS: tuple[Method, ...] = tuple(linear_method(op) for op in OPERATORS)
