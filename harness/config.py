"""What one measurement is: the Case. Shared by methods, runner, store and CLI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..kernels.folding import format_dims

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}

FAMILIES = ("exact", "tensorized")

# Statuses a measurement can end in; only `ok` rows are ranked.
STATUSES = ("ok", "oom", "unsupported", "skipped", "error", "wrong", "timeout")


@dataclass(frozen=True)
class Case:
    """One configuration of one method: everything that determines its inputs and its operator."""

    method: str
    family: str
    seq_len: int
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    causal: bool
    device: str
    order: int | None = None  # tensorized methods only
    dims: tuple[int, ...] | None = None  # resolved folding dims, tensorized methods only
    timing: str = "events"
    scale: float | None = field(default=None, compare=False)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def element_size(self) -> int:
        return torch.tensor([], dtype=self.torch_dtype).element_size()

    @property
    def softmax_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.head_dim)

    @property
    def dims_text(self) -> str:
        return format_dims(self.dims) if self.dims else ""

    @property
    def shape_key(self) -> tuple:
        """Cases with the same shape key share their inputs (and are measured side by side)."""
        return (self.seq_len, self.batch, self.heads, self.kv_heads, self.head_dim, self.dtype,
                self.causal, self.device)

    @property
    def key(self) -> str:
        """The full identity of a configuration; matched across runs by gate and resume."""
        causal = "causal" if self.causal else "full"
        order = f"m{self.order}" if self.order is not None else "m-"
        return (f"{self.method}|N{self.seq_len}|{order}|{self.dims_text or '-'}|B{self.batch}"
                f"|H{self.heads}|KV{self.kv_heads}|D{self.head_dim}|{self.dtype}|{causal}|{self.timing}")

    def label(self) -> str:
        order = f" m={self.order} ({self.dims_text})" if self.order is not None else ""
        return f"{self.method}{order} N={self.seq_len}"

    def as_dict(self) -> dict:
        data = asdict(self)
        data["dims"] = list(self.dims) if self.dims else None
        return data


def make_inputs(case: Case, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded standard-normal q, k, v on the case's device (never zeros: they hide bugs)."""
    generator = torch.Generator(device=case.device).manual_seed(seed)
    shape_q = (case.batch, case.heads, case.seq_len, case.head_dim)
    shape_kv = (case.batch, case.kv_heads, case.seq_len, case.head_dim)
    make = lambda shape: torch.randn(  # noqa: E731
        shape, generator=generator, device=case.device, dtype=torch.float32
    ).to(case.torch_dtype)
    return make(shape_q), make(shape_kv), make(shape_kv)


def input_bytes(case: Case) -> int:
    return case.batch * (case.heads + 2 * case.kv_heads) * case.seq_len * case.head_dim * case.element_size
