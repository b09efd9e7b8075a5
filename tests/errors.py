"""The kernel tests' two error measures: relative L2 over the whole tensor, and its worst (batch, head)
pair. Pure torch, so that importing them imports no kernel module."""

from __future__ import annotations

import torch


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error over the whole tensor, in float64."""
    return float((got.double() - ref.double()).norm() / ref.double().norm())


def worst_head_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest relative L2 error over (batch, head) pairs: one wrong head cannot hide."""
    diff = (got.double().cpu() - ref.double().cpu()).flatten(2).norm(dim=-1)
    return (diff / ref.double().cpu().flatten(2).norm(dim=-1)).max().item()
