"""The layer and the model evaluated from their definition, in float64 (or any dtype), with an
attention function given by the caller: the method's own float64 definition for the correctness
gate, exact attention for fidelity. Written out from the Llama layer's definition (RMSNorm, Q/K/V
projections, RoPE, attention, output projection, residual, RMSNorm, SwiGLU MLP, residual) with the
module's weights, not by running the module, so it also catches a module wired wrongly (an
attention output in the wrong layout, say); and it evaluates only the query rows asked for, which
the gate needs at long lengths.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# (q (B, H, N, D), k, v (B, H_kv, N, D), rows or None, dtype) -> (B, H, rows, D)
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.dtype], torch.Tensor]


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    eps = getattr(norm, "variance_epsilon", 1e-5)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope(x: torch.Tensor, rotary: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """RoPE at positions 0..N-1 from the module's inverse frequencies, computed in `dtype`."""
    positions = torch.arange(x.shape[2], device=x.device, dtype=dtype)
    freqs = positions[:, None] * rotary.inv_freq.to(x.device, dtype)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    scaling = getattr(rotary, "attention_scaling", 1.0)
    cos, sin = emb.cos() * scaling, emb.sin() * scaling
    return x * cos + _rotate_half(x) * sin


def _linear(x: torch.Tensor, layer: torch.nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    return x @ layer.weight.to(dtype).T


def layer_reference(layer: torch.nn.Module, rotary: torch.nn.Module, x: torch.Tensor, attention: Attention,
                    rows: torch.Tensor | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Llama decoder layer's output (B, rows, hidden) for hidden states x (B, N, hidden), every
    operation in `dtype`."""
    x = x.to(dtype)
    attn = layer.self_attn
    batch, n, _ = x.shape
    head_dim = attn.head_dim
    h = _rms_norm(x, layer.input_layernorm, dtype)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, n, -1, head_dim).transpose(1, 2)

    q = _rope(heads(_linear(h, attn.q_proj, dtype)), rotary, dtype)
    k = _rope(heads(_linear(h, attn.k_proj, dtype)), rotary, dtype)
    v = heads(_linear(h, attn.v_proj, dtype))
    out = attention(q, k, v, rows, dtype)  # (B, H, R, D)
    out = out.transpose(1, 2).reshape(batch, out.shape[2], -1)
    residual = (x if rows is None else x[:, rows]) + _linear(out, attn.o_proj, dtype)
    mlp = layer.mlp
    g = _rms_norm(residual, layer.post_attention_layernorm, dtype)
    inner = torch.nn.functional.silu(_linear(g, mlp.gate_proj, dtype)) * _linear(g, mlp.up_proj, dtype)
    return residual + _linear(inner, mlp.down_proj, dtype)


def model_reference(model: torch.nn.Module, ids: torch.Tensor, attention: Attention,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The model's last hidden state (B, N, hidden): embedding, every layer, the final norm."""
    x = model.embed_tokens.weight.to(dtype)[ids]
    for layer in model.layers:
        x = layer_reference(layer, model.rotary_emb, x, attention, None, dtype)
    return _rms_norm(x, model.norm, dtype)
