"""A small causal language model whose attention is any registered method, chosen by name.

Pre-norm residual blocks: attention (q, k, v and output projections around the method's call) and,
unless `mlp` is off (Zoology's MLP-free setting, where recall rests on attention alone), a GELU MLP.
Token and learned position embeddings. The attention call gets q, k, v as (B, H, N, D) in the
method's dtype and the Case that says the method, the length and (tensorized) the folding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.case import Case, DType, Mode, TimingMode
from ..core.folding import resolve_dims
from ..kernels.tensors import TORCH_DTYPES
from ..methods.registry import Call, Method


@dataclass(frozen=True)
class ModelSpec:
    vocab: int
    seq_len: int
    d_model: int = 128
    layers: int = 2
    heads: int = 2
    mlp: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads


@dataclass(frozen=True)
class AttentionSpec:
    """Which method computes attention, at which order (tensorized methods) and in which dtype."""

    method: Method
    device: str
    dtype: DType = DType.FP32
    order: int | None = None

    def case(self, model: ModelSpec, batch: int) -> Case:
        dims = resolve_dims(model.seq_len, self.order) if self.method.is_tensorized and self.order else None
        return Case(method=self.method.name, family=self.method.family, seq_len=model.seq_len, batch=batch,
                    heads=model.heads, kv_heads=model.heads, head_dim=model.head_dim, dtype=self.dtype, causal=True,
                    device=self.device, order=self.order if dims else None, dims=dims,
                    timing=TimingMode.CPU if self.device == "cpu" else TimingMode.EVENTS, mode=Mode.FWD_BWD)


class Attention(nn.Module):
    def __init__(self, model: ModelSpec, attention: AttentionSpec) -> None:
        super().__init__()
        self.model, self.attention = model, attention
        self.qkv = nn.Linear(model.d_model, 3 * model.d_model, bias=False)
        self.out = nn.Linear(model.d_model, model.d_model, bias=False)
        # a call per batch size: some methods bind per shape (a linear method's gates have the batch's shape)
        self._bound: dict[int, tuple[Case, Call]] = {}

    def _call(self, batch: int) -> tuple[Case, Call]:
        if batch not in self._bound:
            case = self.attention.case(self.model, batch)
            reason = self.attention.method.unsupported_reason(case)
            if reason is not None:
                raise ValueError(f"{self.attention.method.name}: {reason}")
            self._bound[batch] = (case, self.attention.method.bound(case))
        return self._bound[batch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, d = x.shape
        case, call = self._call(batch)
        dtype = TORCH_DTYPES[case.dtype]
        # contiguous (B, H, N, D): the layout every method's call is measured with
        q, k, v = (t.reshape(batch, n, self.model.heads, self.model.head_dim).transpose(1, 2).to(dtype).contiguous()
                   for t in self.qkv(x).chunk(3, dim=-1))
        q, k, v = self.attention.method.prepared(q, k, v, case)
        y = call(q, k, v, case)  # (B, H, N, D), any strides
        return self.out(y.transpose(1, 2).reshape(batch, n, d).to(x.dtype))


class Block(nn.Module):
    def __init__(self, model: ModelSpec, attention: AttentionSpec) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(model.d_model)
        self.attn = Attention(model, attention)
        self.mlp = None
        if model.mlp:
            self.norm2 = nn.LayerNorm(model.d_model)
            self.mlp = nn.Sequential(nn.Linear(model.d_model, 4 * model.d_model), nn.GELU(),
                                     nn.Linear(4 * model.d_model, model.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class RecallModel(nn.Module):
    def __init__(self, model: ModelSpec, attention: AttentionSpec) -> None:
        super().__init__()
        self.spec = model
        self.tokens = nn.Embedding(model.vocab, model.d_model)
        self.positions = nn.Embedding(model.seq_len, model.d_model)
        self.blocks = nn.ModuleList(Block(model, attention) for _ in range(model.layers))
        self.norm = nn.LayerNorm(model.d_model)
        self.head = nn.Linear(model.d_model, model.vocab, bias=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, N) token ids -> (B, N, vocab) logits."""
        positions = torch.arange(inputs.shape[1], device=inputs.device)
        x = self.tokens(inputs) + self.positions(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
