"""A stand-in for FlashAttention-3's forward op on a CPU, as the fa3-fwd wheel exposes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def stand_in_fa3(calls: list[tuple]):
    """FA3's op: (batch, seqlen, heads, D) views with contiguous rows, equal key and value heads, the
    result written into `out`; returns (out, log-sum-exps, ...) with the log-sum-exps (batch, heads,
    seqlen) float32 in natural log of the scaled scores' softmax denominator, as FA3 does."""

    def fwd(q, k, v, k_new, v_new, qv, out, *rest):
        scale, causal = rest[16], rest[17]
        assert q.dim() == 4 and q.stride(-1) == 1 and k.shape[2] == v.shape[2] and q.shape[2] % k.shape[2] == 0
        assert out.shape == q.shape and out.stride(-1) == 1
        calls.append((tuple(q.shape), tuple(k.shape)))
        q_, k_, v_ = (x.transpose(1, 2) for x in (q, k, v))
        y = F.scaled_dot_product_attention(q_, k_, v_, scale=scale, is_causal=causal, enable_gqa=True)
        out.copy_(y.transpose(1, 2))
        scores = q_.double() @ k_.double().repeat_interleave(q.shape[2] // k.shape[2], dim=1).transpose(-1, -2)
        if causal:
            length = q.shape[1]
            scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), -torch.inf)
        return out, torch.logsumexp(scores * scale, dim=-1).float(), None, None

    return fwd
