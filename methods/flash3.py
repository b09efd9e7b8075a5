"""FlashAttention-3 (Hopper) and FlashAttention-4 (CuTe DSL; Hopper and Blackwell), when installed.

Both come from the flash-attention project as separate builds: FA3 as the `flash_attn_interface`
module of its `hopper/` package, FA4 as `flash_attn.cute`. FA3 is also taken from the `fa3-fwd`
wheel (`pip install 'tbench[fa3]'`), which builds the same Hopper kernels forward only, for bf16
and fp8 (no fp16 kernels), as the module `fa3_fwd_interface`. All take (B, N, H, D) tensors and
handle GQA themselves; depending on the release they return the output alone or (output, lse).
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

import torch

from ..core.case import Case, DType
from .availability import cuda_availability, has_module, import_problem
from .exact import LOW_PRECISION, io_bytes, to_bnhd
from .registry import Availability, Call, method


def _version(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "version unknown"


def _output(result: torch.Tensor | tuple) -> torch.Tensor:
    out = result[0] if isinstance(result, tuple) else result
    return out.transpose(1, 2)  # back to (B, H, N, D)


# FA3's builds, in order of preference: the upstream Hopper package (forward and backward, bf16,
# fp16 and fp8), then the forward-only fa3-fwd wheel (bf16 and fp8).
FA3_MODULES = ("flash_attn_interface", "fa3_fwd_interface")
FA3_DISTRIBUTIONS = {"flash_attn_interface": ("flash_attn_3",), "fa3_fwd_interface": ("fa3_fwd", "fa3-fwd")}
FA3_DTYPES = {"flash_attn_interface": frozenset({DType.BF16, DType.FP16}),
              "fa3_fwd_interface": frozenset({DType.BF16})}


def fa3_module() -> str | None:
    """The FA3 module that is installed (the first of FA3_MODULES), or None."""
    return next((name for name in FA3_MODULES if name in sys.modules or has_module(name)), None)


def _fa3_availability(device: str) -> Availability:
    module = fa3_module()
    if module is None:
        return Availability(False, reason="FlashAttention-3 is not installed (pip install 'tbench[fa3]' for the "
                                          "forward-only fa3-fwd wheel, or build flash-attention's hopper/ package)")
    problem = import_problem(module, f"{module} is not installed")
    if problem is not None:
        return problem
    build = "forward only, bf16" if module == "fa3_fwd_interface" else "bf16 and fp16"
    return cuda_availability(
        device, f"FlashAttention-3 via {module} ({_version(*FA3_DISTRIBUTIONS[module])}; {build})", (9, 0))


def _fa3_unsupported(case: Case) -> str | None:
    """What the installed build cannot run (the method's static dtypes cover the widest build)."""
    module = fa3_module()
    if module is not None and case.dtype not in FA3_DTYPES[module]:
        allowed = ", ".join(sorted(FA3_DTYPES[module]))
        return f"dtype {case.dtype} unsupported by {module}; it has kernels for {allowed} (and fp8)"
    return None


def _fa3_bind(case: Case) -> Call:
    module = importlib.import_module(fa3_module() or FA3_MODULES[0])
    attention = module.flash_attn_func

    def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
        return _output(attention(q, k, v, softmax_scale=case.softmax_scale, causal=case.causal))

    return call


def _fa3_unbound(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    return _fa3_bind(case)(q, k, v, case)


flash3 = method(
    name="flash3",
    family="exact",
    description="FlashAttention-3 (flash_attn_interface, or the forward-only fa3-fwd wheel; Hopper), when installed",
    availability=_fa3_availability,
    devices=frozenset({"cuda"}),
    dtypes=LOW_PRECISION,
    head_dims=frozenset({64, 96, 128, 192, 256}),
    memory_estimate=io_bytes,
    prepare=to_bnhd,
    bind=_fa3_bind,
    unsupported=_fa3_unsupported,
    backward=False,  # the fa3-fwd wheel is forward-only; one build for every mode
)(_fa3_unbound)


def _fa4_availability(device: str) -> Availability:
    problem = import_problem("flash_attn.cute", "FlashAttention-4 is not installed (pip install flash-attn-4)")
    if problem is not None:
        return problem
    return cuda_availability(device, f"FlashAttention-4 via flash_attn.cute ({_version('flash-attn-4', 'flash_attn')})",
                             (9, 0))


@method(
    name="flash4",
    family="exact",
    description="FlashAttention-4 (flash_attn.cute, CuTe DSL), when installed",
    availability=_fa4_availability,
    devices=frozenset({"cuda"}),
    dtypes=LOW_PRECISION,
    head_dims=frozenset({64, 96, 128}),
    memory_estimate=io_bytes,
    prepare=to_bnhd,
    backward=False,  # timed as the forward kernel only
)
def flash4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    from flash_attn.cute import flash_attn_func

    return _output(flash_attn_func(q, k, v, softmax_scale=case.softmax_scale, causal=case.causal))
