"""Helpers of the gradient tests: the per-head error measure and NaN-poisoned gradient buffers."""

from __future__ import annotations

import pytest
import torch

from tbench.kernels import tensorized_backward as tb


def worst_head_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest relative L2 error over (batch, head) pairs: one wrong head cannot hide."""
    diff = (got.double().cpu() - ref.double().cpu()).flatten(2).norm(dim=-1)
    return (diff / ref.double().cpu().flatten(2).norm(dim=-1)).max().item()


@pytest.fixture
def poisoned_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradient buffers the kernels write start as NaN: a row a hop forgets to write shows."""
    monkeypatch.setattr(tb, "_new_gradient_buffer", lambda like: torch.full_like(like, float("nan")))
