"""The approximate family: exact attention's operator computed with lossy arithmetic.

`sage`: SageAttention 1.0.6 (`pip install 'tbench[sage]'`), Triton kernels with Q and K quantised
to INT8 per block (K smoothed by its mean over the sequence first) and P V in FP16. Its error
against exact attention is the point of the measurement: the correctness gate compares it with
float64 exact attention within SAGE_TOLERANCE, and the error is recorded as its fidelity.
"""

from __future__ import annotations

from importlib import metadata

import torch

from ..core.case import Case
from .availability import cuda_availability, import_problem
from .exact import LOW_PRECISION, io_bytes
from .registry import Availability, method

# Relative L2 error allowed against float64 exact attention: INT8 scores and FP16 P V put
# SageAttention's error at 1.3e-2 on an H200 (16k..128k, docs/results-h200.md), a few times bf16
# rounding; 2.5 times that, like the calibrated tolerances, still fails a 2 % softmax-scale error.
SAGE_TOLERANCE = 0.035


def _availability(device: str) -> Availability:
    if device != "cuda":
        return Availability(False, reason=f"needs a CUDA GPU (SageAttention's Triton kernels), device is {device}")
    problem = import_problem("sageattention", "sageattention is not installed (pip install 'tbench[sage]')")
    if problem is not None:
        return problem
    try:
        version = metadata.version("sageattention")
    except metadata.PackageNotFoundError:
        version = "version unknown"
    return cuda_availability(device, f"SageAttention {version} sageattn (INT8 QK per block, smoothed K, FP16 PV), "
                                     "native GQA, HND layout")


def _prepare(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # sageattn subtracts K's mean from K in place: its own copy keeps the shared inputs intact
    return q, k.clone(), v


@method(
    name="sage",
    family="approximate",
    description="SageAttention 1.0.6 (INT8 Q K, FP16 P V; Triton), error vs exact attention recorded",
    availability=_availability,
    devices=frozenset({"cuda"}),
    dtypes=LOW_PRECISION,
    head_dims=frozenset({64, 96, 128}),
    memory_estimate=lambda case: 2 * io_bytes(case) + case.input_bytes(),
    prepare=_prepare,
    tolerance=lambda case: SAGE_TOLERANCE,
    backward=False,
)
def sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="HND", is_causal=case.causal, sm_scale=case.softmax_scale)
