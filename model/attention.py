"""Every tbench method as a Hugging Face `transformers` attention implementation.

`transformers` looks an attention function up by the name in `config._attn_implementation` and
calls it as `fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kwargs)`
with query (B, H, N, D) and key, value (B, H_kv, N, D), expecting `(output (B, N, H, D), weights
or None)`. `TbenchAttention` makes a tbench method into such a function: it builds the method's
Case from the tensors, binds the method once per shape (a block mask, a compiled function) and
calls it.

Names: `tbench-<method>` for every method; a tensorized method also as `tbench-<method>-m<m>`
for each order m it supports (plain `tbench-<method>` is order 2). Folding dims are the spec's
default for the length; a forward keyword `tbench_dims=(n1, n2, ...)` passed to the model overrides
them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..core.case import Case, DType
from ..core.folding import resolve_dims
from ..methods.registry import Call, Method, Registry

PREFIX = "tbench-"
DEFAULT_ORDER = 2
# The orders registered by name for a tensorized method (up to its max_order).
NAMED_ORDERS = (1, 2, 3, 4)

_DTYPES = {torch.bfloat16: DType.BF16, torch.float16: DType.FP16, torch.float32: DType.FP32}


def attention_name(method: str, order: int | None = None) -> str:
    """The attention implementation name of a method (and order, for tensorized methods)."""
    return f"{PREFIX}{method}" if order is None else f"{PREFIX}{method}-m{order}"


@dataclass
class TbenchAttention:
    """One method (at one order, for tensorized methods) as a `transformers` attention function."""

    method: Method
    order: int | None = None
    causal: bool = True
    _bound: dict[str, Call] = field(default_factory=dict, repr=False)

    def case(self, query: torch.Tensor, key: torch.Tensor, scaling: float | None,
             dims: Iterable[int] | None = None) -> Case:
        batch, heads, seq_len, head_dim = query.shape
        if query.dtype not in _DTYPES:
            allowed = ", ".join(str(d) for d in _DTYPES)
            raise ValueError(f"tbench attention: dtype {query.dtype} unsupported; allowed: {allowed}")
        order = self.order if self.method.is_tensorized else None
        resolved = resolve_dims(seq_len, order, tuple(dims) if dims else None) if order is not None else None
        return Case(method=self.method.name, family=self.method.family, seq_len=seq_len, batch=batch, heads=heads,
                    kv_heads=key.shape[1], head_dim=head_dim, dtype=_DTYPES[query.dtype], causal=self.causal,
                    device=str(query.device), order=order, dims=resolved, scale=scaling)

    def __call__(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                 tbench_dims: Iterable[int] | None = None, **kwargs: object) -> tuple[torch.Tensor, None]:
        if attention_mask is not None:
            raise ValueError(f"{attention_name(self.method.name, self.order)}: an attention mask (padding or a "
                             "packed batch) is not supported; tbench methods take causal or full attention only")
        if dropout:
            raise ValueError(f"{attention_name(self.method.name, self.order)}: attention dropout is not supported")
        case = self.case(query, key, scaling, tbench_dims)
        reason = self.method.unsupported_reason(case)
        if reason is not None:
            raise ValueError(f"{attention_name(self.method.name, self.order)}: {reason}")
        call = self._bound.get(case.key)
        if call is None:
            call = self._bound[case.key] = self.method.bound(case)
        q, k, v = self.method.prepared(query, key, value, case)
        out = call(q, k, v, case)  # (B, H, N, D)
        return out.transpose(1, 2).contiguous(), None


def attention_functions(registry: Registry) -> dict[str, TbenchAttention]:
    """The attention functions of every method in `registry`, by name."""
    functions: dict[str, TbenchAttention] = {}
    for method in registry:
        if method.is_tensorized:
            functions[attention_name(method.name)] = TbenchAttention(method, DEFAULT_ORDER)
            for m in NAMED_ORDERS:
                if m <= method.max_order:
                    functions[attention_name(method.name, m)] = TbenchAttention(method, m)
        else:
            functions[attention_name(method.name)] = TbenchAttention(method)
    return functions


def register_attention(registry: Registry | None = None) -> list[str]:
    """Register every tbench method (the built-in ones and plugins, or those of `registry`) with
    `transformers`' attention interface; returns the names. Then, for any Llama-style model,
    `model.config._attn_implementation = "tbench-tensorized-m2"` (or `attn_implementation=` when
    loading) runs that method."""
    from transformers import AttentionInterface

    from ..methods.catalog import load_registry

    functions = attention_functions(registry if registry is not None else load_registry())
    for name, fn in functions.items():
        AttentionInterface.register(name, fn)
    return list(functions)
