"""Which earlier positions influence each output of causal tensorized attention: measured (the
gradient of each output row of the float64 reference with respect to q, k and v), and what that
leaves a recall task (the share of its scored positions that can reach every token they need)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from ..core.folding import coordinates
from ..kernels.reference import tensorized_attention_f64
from .plan import Configuration, Settings
from .tasks import IGNORE, Task, TaskBatch, TaskSpec, generate


def measured_reach(n: int, dims: Sequence[int], head_dim: int = 4, seed: int = 0,
                   threshold: float = 1e-12) -> list[list[bool]]:
    """reach[p][x]: whether the output at p changes with q, k or v at x (|gradient| above threshold),
    on seeded random inputs; causal, float64."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 1, n, head_dim, generator=generator, dtype=torch.float64).requires_grad_()
               for _ in range(3))
    out = tensorized_attention_f64(q, k, v, dims, causal=True)
    projection = torch.randn(head_dim, generator=generator, dtype=torch.float64)
    reach = []
    for p in range(n):
        grads = torch.autograd.grad(out[0, 0, p] @ projection, (q, k, v), retain_graph=True)
        size = sum(g[0, 0].abs().sum(dim=-1) for g in grads)  # (n,): influence of each input position
        reach.append([bool(s > threshold) for s in size.tolist()])
    return reach


def _coordinates(positions: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """(...,) positions -> (..., m) coordinates, looked up in a table of `coordinates` for every
    position of the fold (positions lie in [0, prod(dims)))."""
    table = torch.tensor([coordinates(p, dims) for p in range(math.prod(dims))])
    return table[positions]


def needed_positions(task: Task, batch: TaskBatch) -> list[torch.Tensor]:
    """For each position of the batch, the positions whose tokens its answer needs (meaningful where
    it is scored): mqar and needle need the key (`distance` back) and the value after it; copy needs
    the content token it reproduces."""
    position = torch.arange(batch.inputs.shape[1]).expand_as(batch.inputs)
    source = position - batch.distance
    return [source] if Task(task) is Task.COPY else [source, source + 1]


def reachable_share(task: Task, batch: TaskBatch, dims: Sequence[int]) -> float:
    """The share of the batch's scored positions from which every token the answer needs is
    reachable under the spec's causal rule for the fold `dims` (its coordinates <= the scored
    position's on every axis). Whatever a stack of causal tensorized attention layers learns, a
    scored position outside this share can only guess, so its accuracy is at most the share plus
    the guessing rate on the rest. Exact causal attention is the fold (N,): share 1."""
    scored = batch.targets != IGNORE
    if not bool(scored.any()):
        raise ValueError("the batch has no scored position")
    positions = torch.arange(batch.inputs.shape[1]).expand_as(batch.inputs)
    here = _coordinates(positions, dims)
    ok = scored.clone()
    for needed in needed_positions(task, batch):
        # a position that is not scored may point anywhere (distance 0, plus one): clamp, it is masked anyway
        ok &= (_coordinates(needed.clamp(0, batch.inputs.shape[1] - 1), dims) <= here).all(dim=-1)
    return float(ok.sum()) / float(scored.sum())


# Held-out sequences drawn to estimate a reachable share: enough that its sampling error is < 0.01.
SHARE_SEQUENCES = 512


def reachable_shares(task: TaskSpec, folds: Iterable[tuple[int, ...]], seed: int = 0) -> dict[tuple[int, ...], float]:
    """reachable_share of each fold on the same `SHARE_SEQUENCES` sequences of the task, drawn from
    `seed` (a fold of one axis, exact causal attention, gives 1)."""
    batch = generate(task, SHARE_SEQUENCES, torch.Generator().manual_seed(seed))
    return {dims: reachable_share(task.task, batch, dims) for dims in dict.fromkeys(folds)}


def plan_reachable_shares(settings: Settings, configurations: Iterable[Configuration]
                          ) -> dict[tuple[str, int | None, int], float]:
    """{(method, order, N): reachable share} for the folded configurations of a quality plan."""
    shares: dict[tuple[str, int | None, int], float] = {}
    for n in settings.lengths:
        folds = {(c.method, c.order): c.dims for c in configurations if c.seq_len == n and c.dims}
        found = reachable_shares(TaskSpec(settings.task, n, settings.vocab, settings.items), folds.values())
        shares.update({(method, order, n): found[dims] for (method, order), dims in folds.items()})
    return shares
