"""Splitting one sweep into N disjoint parts, so N independent jobs (a Slurm or Kubernetes job
array) can measure it together into one shared store.

Every job expands the same sweep and keeps only its own part; no job talks to another, so the
split must depend on nothing but the set of cases: not on process, machine, or the order in which
methods or lengths were written on the command line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..core.case import Case
from ..core.errors import UsageError

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the second of four parts (1-based, as a job array numbers its tasks)."""
    match = _SHARD.match(text)
    if not match:
        raise UsageError(f"shard '{text}' is not of the form i/N, e.g. 2/4")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"shard '{text}': i must be between 1 and N (N >= 1), e.g. 1/{max(count, 1)}")
    return index, count


def _group_order(key: tuple) -> tuple:
    # Sequence length first so that parts interleave short and long (cheap and costly) shapes;
    # the rest as text, which sorts the same everywhere.
    return (key[0], repr(key))


def shard_cases(cases: Sequence[Case], index: int, count: int) -> list[Case]:
    """The `index`-th (1-based) of `count` disjoint parts of `cases`, in their original order.

    The cases of one shape (which the runner measures side by side on shared inputs) stay in one
    part, unless there are fewer shapes than parts; then cases are dealt out one by one so that
    no part is left idle.
    """
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"shard {index}/{count}: i must be between 1 and N (N >= 1)")
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.shape_key, []).append(case)
    if len(groups) >= count:
        units = [groups[key] for key in sorted(groups, key=_group_order)]
    else:
        units = [[case] for case in sorted(cases, key=lambda c: (c.seq_len, c.key))]
    mine: set[Case] = set()
    for position, unit in enumerate(units):
        # Snake order (1..N, N..1, ...) evens out the cost when later units are larger.
        turn, offset = divmod(position, count)
        if (offset if turn % 2 == 0 else count - 1 - offset) == index - 1:
            mine.update(unit)
    return [case for case in cases if case in mine]
