"""The torch side of a Case: its torch dtype and its seeded inputs (the lowest floor that imports torch)."""

from __future__ import annotations

import torch

from ..core.case import Case, DType

TORCH_DTYPES: dict[DType, torch.dtype] = {
    DType.BF16: torch.bfloat16,
    DType.FP16: torch.float16,
    DType.FP32: torch.float32,
}


def torch_dtype(case: Case) -> torch.dtype:
    return TORCH_DTYPES[case.dtype]


def make_inputs(case: Case, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded standard-normal q, k, v on the case's device (never zeros: they hide bugs)."""
    generator = torch.Generator(device=case.device).manual_seed(seed)
    shape_q = (case.batch, case.heads, case.seq_len, case.head_dim)
    shape_kv = (case.batch, case.kv_heads, case.seq_len, case.head_dim)

    def make(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=case.device, dtype=torch.float32).to(torch_dtype(case))

    return make(shape_q), make(shape_kv), make(shape_kv)
