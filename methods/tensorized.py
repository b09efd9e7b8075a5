"""Tensorized attention methods (docs/spec-tensorized-attention.md): the PyTorch composition and the
Triton kernel. The case carries the order m and the resolved folding dims."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.nn.attention import SDPBackend

from ..core.case import Case
from ..core.folding import hop_axes
from ..kernels.hop_backend import HopBackend, PackedBackward, TrainChain, all_triton
from ..kernels.tensorized_sdpa import HopPlan, choose_plans, tensorized_attention_sdpa
from ..kernels.tensors import make_inputs, torch_dtype
from .availability import cuda_availability, has_module
from .registry import Availability, Call, Method, always_available, method


def _folded_bytes(case: Case, heads: int) -> int:
    assert case.dims is not None
    return case.batch * heads * math.prod(case.dims) * case.head_dim * case.element_size


def _ref_memory(case: Case) -> int:
    padded = case.dims is not None and math.prod(case.dims) > case.seq_len
    gqa = case.kv_heads != case.heads
    # two live value tensors between hops plus the output slice; expanded K and V under GQA;
    # padded copies of q, k, v when N is not a product of the dims
    copies = 3 + (2 if gqa else 0) + (3 if padded else 0)
    return copies * _folded_bytes(case, case.heads)


@method(
    name="tensorized-ref",
    family="tensorized",
    description="Tensorized attention in plain PyTorch: one SDPA call per hop on strided views",
    availability=always_available("PyTorch SDPA per hop (default backend dispatch) on strided views"),
    memory_estimate=_ref_memory,
)
def tensorized_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    assert case.dims is not None, "tensorized methods need resolved dims"
    return tensorized_attention_sdpa(q, k, v, case.dims, case.causal, case.softmax_scale)


# The SDPA backends tensorized-sdpa tries on each hop (the math backend materialises the scores).
HOP_CANDIDATES = (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)
BACKEND_NAMES = {SDPBackend.CUDNN_ATTENTION: "cuDNN", SDPBackend.FLASH_ATTENTION: "FlashAttention-2",
                 SDPBackend.EFFICIENT_ATTENTION: "memory-efficient", None: "default dispatch"}


# GPU wait before each start event, so that the host has issued the whole call when the clock
# starts: about 2.5 ms at 2 GHz, far above the 0.05-0.3 ms it takes to issue one hop.
_HOLD_CYCLES = 5_000_000


def _median_cuda_seconds(fn: Callable[[], object], calls: int = 5) -> float:
    """Median of a few CUDA-event timings after two warm-up calls, the GPU held before each until
    the host has issued the call: enough to rank backends whose times differ by tens of percent,
    cheap enough to run once per shape. Without the hold, a backend with more host work per call
    (SDPA's dispatch, a cuDNN graph lookup) would be charged for it on hops of 0.1 ms and lose
    to a slower kernel (seen on an H200: Triton chosen at L = 128 and 256, where cuDNN is 1.3-1.8x
    faster)."""
    fn()
    fn()
    times = []
    for _ in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        torch.cuda._sleep(_HOLD_CYCLES)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def _per_hop(dims: tuple[int, ...], choices: list[str]) -> str:
    """'hop 1 (L=512): ...; hop 2 (L=256): ...' for a provenance, in the order the hops run."""
    return "; ".join(f"hop {t + 1} (L={length}): {choice}"
                     for t, (length, choice) in enumerate(zip(_hop_lengths(dims), choices, strict=True)))


def _hop_lengths(dims: tuple[int, ...]) -> list[int]:
    """Each hop's slice length, in the order the hops run."""
    return [dims[axis] for axis in hop_axes(len(dims))]


def _plan_name(plan: HopPlan) -> str:
    return f"{BACKEND_NAMES[plan.backend]}, {'native GQA' if plan.native_gqa else 'K repeated'}"


@dataclass
class HopBackends:
    """The SDPA plan chosen for each hop (backend, and native GQA or K repeated), per
    configuration: filled by `bind`, read by the method's provenance."""

    chosen: dict[str, tuple[HopPlan, ...]] = field(default_factory=dict)

    def bind(self, case: Case) -> Call:
        assert case.dims is not None, "tensorized methods need resolved dims"
        plans: tuple[HopPlan, ...] | None = None
        if case.device != "cpu":
            # measured on inputs of the case's shape (times do not depend on the values)
            q, k, v = make_inputs(case, seed=0)
            # in training modes a plan is timed on its hop's forward and backward
            plans = choose_plans(q, k, v, case.dims, case.causal, case.softmax_scale, HOP_CANDIDATES,
                                 _median_cuda_seconds, train=case.mode.needs_backward)
            del q, k, v
            self.chosen[case.key] = plans

        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
            assert case.dims is not None
            return tensorized_attention_sdpa(q, k, v, case.dims, case.causal, case.softmax_scale, plans)

        return call

    def describe(self, case: Case) -> str:
        timed = "forward and backward" if case.mode.needs_backward else "forward"
        text = ("PyTorch SDPA per hop on strided views; each hop's backend the fastest of cuDNN, "
                "FlashAttention-2 and memory-efficient, with SDPA's own GQA or K repeated, measured once per shape "
                f"on the hop's {timed}")
        if case.device == "cpu":
            return "PyTorch SDPA per hop on strided views, native GQA on hop 1; default backend dispatch (CPU)"
        plans = self.chosen.get(case.key)
        if plans is None or case.dims is None:
            return text
        return f"{text}; chosen: {_per_hop(case.dims, [_plan_name(plan) for plan in plans])}"


def _make_tensorized_sdpa() -> Method:
    hops = HopBackends()

    def unbound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
        return hops.bind(case)(q, k, v, case)

    return method(
        name="tensorized-sdpa",
        family="tensorized",
        description="Tensorized attention, the strongest PyTorch composition: per hop the fastest SDPA backend "
                    "(measured once per shape) on strided views, native GQA",
        availability=always_available("PyTorch SDPA per hop on strided views, backend and GQA pairing per hop "
                                      "measured in bind"),
        memory_estimate=_ref_memory,
        bind=hops.bind,
        describe=hops.describe,
    )(unbound)


tensorized_sdpa = _make_tensorized_sdpa()


def _triton_availability(device: str) -> Availability:
    if not has_module("triton"):
        return Availability(False, reason="triton is not installed")
    if device == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return Availability(True, provenance="Triton kernel in the interpreter (CPU): timings are not meaningful")
        return Availability(False, reason="needs a CUDA GPU (set TRITON_INTERPRET=1 to run it on the CPU, slowly)")
    import triton

    try:
        from ..kernels import tensorized_triton  # noqa: F401
    except Exception as exc:
        return Availability(False, reason=f"the Triton kernel failed to import: {type(exc).__name__}: {exc}")
    return cuda_availability(device, f"tbench Triton kernel, triton {triton.__version__}")


def _triton_memory(case: Case) -> int:
    # the output plus one intermediate value tensor, both N rows long
    return 2 * case.batch * case.heads * case.seq_len * case.head_dim * case.element_size


def _triton_describe(case: Case) -> str:
    """What ran, with the config the autotuner chose for each slice length once it has (after the
    warm-up), since two runs that chose differently can differ by a few percent."""
    text = _triton_availability(case.device).provenance
    if case.dims is None or case.device == "cpu":
        return text
    from ..kernels.tensorized_triton import tuned_configs

    # hops are tuned per stride C and per size too; a training pass's forward (which saves the
    # log-sum-exps) apart from an inference one
    chosen = [f"L={key.length} C={key.stride} {kernel} {config}"
              for kernel, key, config in tuned_configs()
              if key.length in case.dims
              and (key.head_dim, key.causal, key.dtype) == (case.head_dim, case.causal, torch_dtype(case))
              and (key.batch, key.heads, key.kv_heads, key.n) == (case.batch, case.heads, case.kv_heads, case.seq_len)
              and key.saves_lse == case.mode.needs_backward]
    return f"{text}; tuned: {'; '.join(sorted(set(chosen)))}" if chosen else text


def _train_or_infer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor | None:
    """The Triton autograd op when a gradient is wanted (training modes, quality runs), else None."""
    assert case.dims is not None, "tensorized methods need resolved dims"
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        # the differentiable op: the same forward kernels, saving what the Triton backward needs
        from ..kernels.tensorized_autograd import tensorized_attention_train

        return tensorized_attention_train(q, k, v, case.dims, case.causal, case.softmax_scale)
    return None


@method(
    name="tensorized-triton",
    family="tensorized",
    description="Tensorized attention, tbench's Triton kernel alone (one strided-hop kernel per axis)",
    availability=_triton_availability,
    head_dims=frozenset({32, 64, 128}),  # kernels.tensorized_triton.SUPPORTED_HEAD_DIMS
    memory_estimate=_triton_memory,
    describe=_triton_describe,
)
def tensorized_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    trained = _train_or_infer(q, k, v, case)
    if trained is not None:
        return trained
    from ..kernels.tensorized_triton import tensorized_attention_triton

    assert case.dims is not None
    return tensorized_attention_triton(q, k, v, case.dims, case.causal, case.softmax_scale)


@dataclass
class HopDispatch:
    """What `tensorized` chose per configuration: in fwd mode the backend of each hop, in training
    modes the chain (kernels/hop_backend.TrainChain). Filled by `bind` (timed on the GPU, the
    forward alone in fwd mode and whole training steps in training modes), read by the method's
    provenance."""

    chosen: dict[str, tuple[HopBackend, ...]] = field(default_factory=dict)
    chains: dict[str, TrainChain] = field(default_factory=dict)

    def bind(self, case: Case) -> Call:
        assert case.dims is not None, "tensorized methods need resolved dims"
        if case.mode.needs_backward:
            return self._bind_train(case)
        if case.device != "cpu":
            self.chosen[case.key] = self._choose(case)
        backends = self.chosen.get(case.key)
        if backends is None or all_triton(backends):
            return tensorized_triton.call

        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
            assert case.dims is not None
            trained = _train_or_infer(q, k, v, case)
            if trained is not None:
                return trained
            from ..kernels.tensorized_dispatch import tensorized_attention_dispatch

            return tensorized_attention_dispatch(q, k, v, case.dims, case.causal, case.softmax_scale, backends)

        return call

    def _bind_train(self, case: Case) -> Call:
        if case.device != "cpu":
            self.chains[case.key] = self._choose_chain(case)
        chain = self.chains.get(case.key)
        if chain is None or chain.is_table_chain:
            return tensorized_triton.call  # the fused Triton chain

        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
            assert case.dims is not None
            from ..kernels.tensorized_train_dispatch import tensorized_attention_train_dispatch

            return tensorized_attention_train_dispatch(q, k, v, case.dims, case.causal, case.softmax_scale, chain)

        return call

    @staticmethod
    def _choose(case: Case) -> tuple[HopBackend, ...]:
        assert case.dims is not None
        from ..kernels.tensorized_dispatch import choose_hop_backends, library_candidates

        q, k, v = make_inputs(case, seed=0)  # times do not depend on the values
        with torch.no_grad():
            return choose_hop_backends(q, k, v, case.dims, case.causal, case.softmax_scale, library_candidates(),
                                       _median_cuda_seconds)

    @staticmethod
    def _choose_chain(case: Case) -> TrainChain:
        assert case.dims is not None
        from ..kernels.tensorized_train_dispatch import choose_train_chain

        q, k, v = make_inputs(case, seed=0)
        return choose_train_chain(q, k, v, case.dims, case.causal, case.softmax_scale, _median_cuda_seconds)

    def describe(self, case: Case) -> str:
        text = _triton_describe(case)
        if case.dims is None:
            return text
        if case.mode.needs_backward:
            return f"{text}; {_describe_chain(case.dims, self.chains.get(case.key))}"
        backends = self.chosen.get(case.key)
        if backends is None:
            return text
        hops = _per_hop(case.dims, [backend.value for backend in backends])
        return f"{text}; each hop on the fastest of Triton, FlashAttention-3 and cuDNN, measured once per shape: {hops}"


def _describe_chain(dims: tuple[int, ...], chain: TrainChain | None) -> str:
    if chain is None:
        return "forward and backward on the fused Triton chain"
    measured = ("chosen by timing whole steps against the fused Triton chain, each hop's forward + backward on "
                "the faster of Triton and cuDNN, and the fused Triton backward behind each hop's fastest forward")
    packed = ""
    if chain.staged_hops:
        lengths = _hop_lengths(dims)
        hops = ", ".join(f"hop {t + 1} (L={lengths[t]})" for t in chain.staged_hops)
        packed = f" (its packed kernel in {PackedBackward.STAGED_BOXES.value} on {hops})"
    if chain.all_triton:
        return f"forward and backward on the fused Triton chain{packed}, {measured}"
    hops = _per_hop(dims, [backend.value for backend in chain.forward])
    if chain.fused_backward:
        return (f"each hop's forward on the fastest library ({hops}), the backward on the fused Triton "
                f"chain{packed}; {measured}")
    return f"each hop's forward and backward on one backend ({hops}); {measured}"


def _make_tensorized() -> Method:
    hops = HopDispatch()

    def unbound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
        return hops.bind(case)(q, k, v, case)

    return method(
        name="tensorized",
        family="tensorized",
        description="Tensorized attention, the fastest way tbench has: each hop on tbench's Triton kernel, "
                    "FlashAttention-3 or cuDNN, whichever runs it fastest (measured once per shape; in training, "
                    "the hop's forward + backward on Triton or cuDNN; Triton on a CPU)",
        availability=_triton_availability,
        head_dims=frozenset({32, 64, 128}),
        memory_estimate=_triton_memory,
        bind=hops.bind,
        describe=hops.describe,
    )(unbound)


tensorized = _make_tensorized()


def _recompute_unsupported(case: Case) -> str | None:
    if not case.mode.needs_backward:
        return "the same forward as tensorized-triton; it differs only in what a training step keeps (bwd, fwd_bwd)"
    return None


@method(
    name="tensorized-recompute",
    family="tensorized",
    description="tbench's Triton kernels for training, keeping only the result between the passes and "
                "running the first m - 1 hops again in the backward (less memory, more work)",
    availability=_triton_availability,
    head_dims=frozenset({32, 64, 128}),
    memory_estimate=_triton_memory,
    describe=_triton_describe,
    unsupported=_recompute_unsupported,
)
def tensorized_recompute(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    assert case.dims is not None, "tensorized methods need resolved dims"
    from ..kernels.tensorized_autograd import tensorized_attention_train

    return tensorized_attention_train(q, k, v, case.dims, case.causal, case.softmax_scale, recompute=True)
