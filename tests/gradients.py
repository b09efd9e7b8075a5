"""NaN-poisoned gradient buffers for the gradient tests (their error measures are in errors.py)."""

from __future__ import annotations

import pytest
import torch

from tbench.kernels import tensorized_backward as tb


@pytest.fixture
def poisoned_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradient buffers the kernels write start as NaN: a row a hop forgets to write shows."""
    monkeypatch.setattr(tb, "_new_gradient_buffer", lambda like: torch.full_like(like, float("nan")))
