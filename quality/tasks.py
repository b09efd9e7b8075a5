"""Synthetic recall tasks, generated in-process from a seed (nothing is downloaded).

Every task gives a `TaskBatch`: token ids (B, N), the target id at each position that is scored
(IGNORE elsewhere: loss and accuracy count only those positions), and for each scored position
how far back the token it has to recall stands (its distance, for accuracy by distance).

- mqar: multi-query associative recall as in Zoology (Arora et al.): key-value pairs at the start,
  keys from one half of the vocabulary and values from the other; later, each key again at a
  position drawn with power-law distributed gaps (short gaps likelier), where the target is its value.
- needle: one key-value pair somewhere in a long random filler; the key again at the last position.
- copy: selective copying (as in the Mamba paper): a few content tokens scattered among blanks,
  to be reproduced in order after as many marker tokens at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from ..core.errors import UsageError

IGNORE = -100  # the target of a position that is not scored (torch's cross-entropy ignore_index)
BLANK = 0  # filler token of mqar and copy
MARKER = 1  # copy: "write the next content token here"


class Task(StrEnum):
    MQAR = "mqar"
    NEEDLE = "needle"
    COPY = "copy"


TASK_NAMES: tuple[str, ...] = tuple(t.value for t in Task)


@dataclass(frozen=True)
class TaskSpec:
    """A task at one length: vocabulary size and how many items it holds (key-value pairs for mqar,
    content tokens for copy; needle has one). `power` is mqar's gap exponent a: gaps g >= 1 are
    drawn with probability proportional to g^(a-1)."""

    task: Task
    seq_len: int
    vocab: int
    items: int
    power: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))
        if self.vocab < 8:
            raise UsageError(f"vocabulary size {self.vocab} is too small; it must be at least 8")
        if self.items < 1:
            raise UsageError(f"{self.task} needs at least one item, not {self.items}")
        need = {Task.MQAR: 3 * self.items, Task.NEEDLE: 3, Task.COPY: 2 * self.items}[self.task]
        if self.seq_len < need:
            raise UsageError(f"{self.task} with {self.items} items needs sequences of at least {need} tokens, "
                             f"not {self.seq_len}")
        if self.task is Task.MQAR and self.items > self.vocab // 2 - 1:
            raise UsageError(f"mqar with {self.items} pairs needs a vocabulary of at least {2 * self.items + 2} "
                             f"tokens, not {self.vocab}")

    @property
    def scored_per_sequence(self) -> int:
        return 1 if self.task is Task.NEEDLE else self.items


@dataclass(frozen=True)
class TaskBatch:
    inputs: torch.Tensor  # (B, N) int64 token ids
    targets: torch.Tensor  # (B, N) int64; IGNORE where not scored
    distance: torch.Tensor  # (B, N) int64; for scored positions the distance to the recalled token, else 0

    def to(self, device: str | torch.device, non_blocking: bool = False) -> TaskBatch:
        return TaskBatch(*(t.to(device, non_blocking=non_blocking) for t in (self.inputs, self.targets, self.distance)))


def generate(spec: TaskSpec, batch: int, generator: torch.Generator) -> TaskBatch:
    """`batch` sequences of the task, drawn from `generator` (on the CPU: the same seed gives the
    same tokens everywhere)."""
    make = {Task.MQAR: _mqar, Task.NEEDLE: _needle, Task.COPY: _selective_copy}[spec.task]
    return make(spec, batch, generator)


def _rows(batch: int) -> torch.Tensor:
    return torch.arange(batch).unsqueeze(1)


def _permutations(batch: int, size: int, low: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, size) distinct values from [low, high) per row."""
    scores = torch.rand(batch, high - low, generator=generator)
    return scores.argsort(dim=1)[:, :size] + low


def gap_weights(count: int, power: float) -> torch.Tensor:
    """Probabilities of gaps 1..count, proportional to g^(power-1) (power < 1: short gaps likelier)."""
    gaps = torch.arange(1, count + 1, dtype=torch.float64)
    weights = gaps ** (power - 1.0)
    return (weights / weights.sum()).float()


def _mqar(spec: TaskSpec, batch: int, generator: torch.Generator) -> TaskBatch:
    n, pairs, half = spec.seq_len, spec.items, spec.vocab // 2
    keys = _permutations(batch, pairs, 1, half, generator)  # never BLANK
    values = _permutations(batch, pairs, half, spec.vocab, generator)
    inputs = torch.full((batch, n), BLANK, dtype=torch.long)
    inputs[:, 0 : 2 * pairs : 2] = keys
    inputs[:, 1 : 2 * pairs : 2] = values
    # query positions: 2K + gap - 1 for distinct gaps drawn by the power law
    start = 2 * pairs
    weights = gap_weights(n - start, spec.power).expand(batch, -1)
    positions = torch.multinomial(weights, pairs, replacement=False, generator=generator) + start
    which = torch.rand(batch, pairs, generator=generator).argsort(dim=1)  # the pair asked at each query
    rows = _rows(batch)
    inputs[rows, positions] = keys[rows, which]
    targets = torch.full((batch, n), IGNORE, dtype=torch.long)
    targets[rows, positions] = values[rows, which]
    distance = torch.zeros((batch, n), dtype=torch.long)
    distance[rows, positions] = positions - 2 * which  # back to the key of the pair
    return TaskBatch(inputs, targets, distance)


def _needle(spec: TaskSpec, batch: int, generator: torch.Generator) -> TaskBatch:
    """Filler from the lower half of the vocabulary, keys from the third quarter, values from the last."""
    n, v = spec.seq_len, spec.vocab
    inputs = torch.randint(1, v // 2, (batch, n), generator=generator)
    keys = torch.randint(v // 2, 3 * v // 4, (batch,), generator=generator)
    values = torch.randint(3 * v // 4, v, (batch,), generator=generator)
    where = torch.randint(0, n - 2, (batch,), generator=generator)  # the needle: key at `where`, value after it
    rows = torch.arange(batch)
    inputs[rows, where] = keys
    inputs[rows, where + 1] = values
    inputs[:, -1] = keys
    targets = torch.full((batch, n), IGNORE, dtype=torch.long)
    targets[:, -1] = values
    distance = torch.zeros((batch, n), dtype=torch.long)
    distance[:, -1] = n - 1 - where
    return TaskBatch(inputs, targets, distance)


def _selective_copy(spec: TaskSpec, batch: int, generator: torch.Generator) -> TaskBatch:
    n, count = spec.seq_len, spec.items
    region = n - count  # content tokens lie in [0, region); the last `count` positions are markers
    content = torch.randint(MARKER + 1, spec.vocab, (batch, count), generator=generator)
    places = torch.rand(batch, region, generator=generator).argsort(dim=1)[:, :count].sort(dim=1).values
    rows = _rows(batch)
    inputs = torch.full((batch, n), BLANK, dtype=torch.long)
    inputs[rows, places] = content
    inputs[:, region:] = MARKER
    targets = torch.full((batch, n), IGNORE, dtype=torch.long)
    targets[:, region:] = content
    distance = torch.zeros((batch, n), dtype=torch.long)
    distance[:, region:] = torch.arange(region, n).unsqueeze(0) - places
    return TaskBatch(inputs, targets, distance)


def distance_bucket(distance: int) -> int:
    """The power-of-two bucket [2^j, 2^(j+1)) a distance falls in, named by its lower end."""
    return 1 << (max(1, distance).bit_length() - 1)
