"""Training one model on one task with one method, and scoring it on held-out sequences."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .model import AttentionSpec, ModelSpec, RecallModel
from .prefetch import Prefetcher
from .tasks import IGNORE, TaskBatch, TaskSpec, distance_bucket, generate

# Held-out sequences come from a generator seeded apart from every training seed.
EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class TrainSpec:
    steps: int
    batch: int
    lr: float
    seed: int
    warmup: float = 0.1  # fraction of the steps with a linearly rising learning rate (cosine decay after)
    weight_decay: float = 0.1
    eval_sequences: int = 256
    eval_batch: int = 64


@dataclass
class Score:
    """Accuracy on the scored positions of held-out sequences, overall and by distance bucket."""

    correct: int = 0
    total: int = 0
    by_distance: dict[int, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else math.nan

    def add(self, predictions: torch.Tensor, batch: TaskBatch) -> None:
        scored = batch.targets != IGNORE
        hits = (predictions == batch.targets) & scored
        self.correct += int(hits.sum())
        self.total += int(scored.sum())
        for d, hit in zip(batch.distance[scored].tolist(), hits[scored].tolist(), strict=True):
            cell = self.by_distance[distance_bucket(d)]
            cell[0] += int(hit)
            cell[1] += 1

    def buckets(self) -> dict[str, dict[str, int]]:
        """{"<lower end>": {"correct": c, "total": t}}, ascending, for storing as JSON."""
        return {str(lo): {"correct": c, "total": t} for lo, (c, t) in sorted(self.by_distance.items())}


@dataclass(frozen=True)
class TrainResult:
    score: Score
    final_loss: float
    seconds: float
    steps: int


def _lr_factor(step: int, spec: TrainSpec) -> float:
    warm = max(1, int(spec.warmup * spec.steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, spec.steps - warm)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def build_model(task: TaskSpec, model: ModelSpec, attention: AttentionSpec, seed: int) -> RecallModel:
    torch.manual_seed(seed)
    return RecallModel(model, attention).to(attention.device)


def evaluate(net: RecallModel, task: TaskSpec, spec: TrainSpec, device: str) -> Score:
    generator = torch.Generator().manual_seed(spec.seed + EVAL_SEED_OFFSET)
    score = Score()
    net.eval()
    with torch.no_grad():
        left = spec.eval_sequences
        while left > 0:
            batch = generate(task, min(spec.eval_batch, left), generator).to(device)
            score.add(net(batch.inputs).argmax(dim=-1), batch)
            left -= batch.inputs.shape[0]
    net.train()
    return score


def _optimizer(net: RecallModel, spec: TrainSpec, device: str) -> torch.optim.AdamW:
    # one fused kernel per step on CUDA instead of a few per parameter; on the CPU the foreach form
    on_gpu = device.startswith("cuda")
    return torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98),
                             fused=on_gpu or None, foreach=None if on_gpu else True)


def train(task: TaskSpec, model: ModelSpec, attention: AttentionSpec, spec: TrainSpec) -> TrainResult:
    """Trains from scratch (AdamW, warmup then cosine decay, gradients clipped at 1) on freshly
    generated sequences, then scores held-out ones."""
    started = time.perf_counter()
    net = build_model(task, model, attention, spec.seed)
    optimizer = _optimizer(net, spec, attention.device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, spec))
    generator = torch.Generator().manual_seed(spec.seed)
    loss = torch.tensor(math.nan)
    with Prefetcher(lambda: generate(task, spec.batch, generator), spec.steps, attention.device) as batches:
        for batch in batches:
            loss = _loss(net(batch.inputs), batch.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    final_loss = float(loss.detach())
    score = evaluate(net, task, spec, attention.device)
    if attention.device.startswith("cuda"):
        torch.cuda.synchronize()
    return TrainResult(score, final_loss, time.perf_counter() - started, spec.steps)
