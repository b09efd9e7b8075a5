"""Float64 recurrent evaluations of the linear-attention family, written from their recurrences.

Every method of the family keeps, per (batch, head), a state S of D_k x D_v and reads it out:
    S_t = A_t S_{t-1} + (write of token t),   o_t = scale * q_t^T S_t.
- linear attention:   A_t = I,                     write k_t v_t^T
- simple GLA / retention: A_t = exp(g_t) I (one log-decay per head and token; retention's is a
  constant per head),  write k_t v_t^T
- GLA:                A_t = diag(exp(g_t)) over the key dims, write k_t v_t^T
- delta rule:         A_t = I - beta_t k_t k_t^T,   write beta_t k_t v_t^T (q and k L2-normalised)
These loop over tokens: slow by design, for small N or a few heads.
Inputs are (B, H, N, D) for q, k, v with as many heads each (expand GQA heads first).
"""

from __future__ import annotations

import torch


def gated_recurrence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """o_t = scale * q_t^T S_t with S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_t^T.

    `log_decay` is None (no decay), (B, H, N) (one decay per head and token) or (B, H, N, D_k)
    (one per key dim)."""
    q, k, v = (t.to(torch.float64) for t in (q, k, v))
    b, h, n, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    out = torch.empty(b, h, n, v.shape[-1], dtype=torch.float64, device=q.device)
    decay = None
    if log_decay is not None:
        decay = log_decay.to(torch.float64).exp()
        if decay.dim() == 3:
            decay = decay.unsqueeze(-1)
    for t in range(n):
        if decay is not None:
            state = state * decay[:, :, t, :, None]
        state = state + k[:, :, t, :, None] * v[:, :, t, None, :]
        out[:, :, t] = torch.einsum("bhk,bhkv->bhv", q[:, :, t], state) * scale
    return out


def delta_rule_recurrence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, scale: float
) -> torch.Tensor:
    """The delta rule with L2-normalised q and k: S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T,
    o_t = scale * q_t^T S_t; `beta` is (B, H, N) in (0, 1)."""
    q, k, v, beta = (t.to(torch.float64) for t in (q, k, v, beta))
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    b, h, n, dk = q.shape
    state = q.new_zeros(b, h, dk, v.shape[-1])
    out = torch.empty(b, h, n, v.shape[-1], dtype=torch.float64, device=q.device)
    for t in range(n):
        kt = k[:, :, t]
        error = v[:, :, t] - torch.einsum("bhk,bhkv->bhv", kt, state)
        state = state + beta[:, :, t, None, None] * kt[..., None] * error[..., None, :]
        out[:, :, t] = torch.einsum("bhk,bhkv->bhv", q[:, :, t], state) * scale
    return out


def retention_log_decay(heads: int) -> torch.Tensor:
    """RetNet's fixed per-head decay, gamma_h = 1 - 2^(-5 - h), as a log: (H,) float64."""
    return torch.log1p(-(2.0 ** (-5.0 - torch.arange(heads, dtype=torch.float64))))
