"""Running a quality plan: one model per configuration, each result stored as soon as it is scored,
and a configuration that fails (out of memory, a kernel error, a worker that dies) stored as such
without stopping the rest. A run that lacks configurations (interrupted) can be resumed."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..core.case import Status
from ..core.errors import UsageError
from ..core.records import RunInfo
from ..harness.signals import stop_on_signals
from ..methods.registry import Registry
from ..results.quality import (
    QualityRecord,
    finish_quality_run,
    quality_run_sweep,
    quality_statuses,
    record_quality,
    reopen_quality_run,
    start_quality_run,
)
from ..results.store import Store
from .job import train_configuration
from .plan import Configuration, QualityPlan, expand, settings_from_sweep
from .pool import train_in_workers

# Workers: 0 trains in the calling process (a registry built in code, which a spawned worker cannot
# rebuild; a crash then ends the run); N >= 1 trains in up to N spawned worker processes.
IN_PROCESS = 0


@dataclass(frozen=True)
class QualityOutcome:
    run_id: int
    status: str
    counts: dict[str, int]  # the run's stored results by status (all of them, when resumed)
    seconds: float


def run_quality(plan: QualityPlan, registry: Registry, store: Store, info: RunInfo,
                on_result: Callable[[int, QualityRecord], None] | None = None,
                jobs: int = IN_PROCESS) -> QualityOutcome:
    run_id = start_quality_run(store, info)
    return train_into_run(plan, plan.configurations, registry, store, run_id, on_result, jobs)


def resume_plan(store: Store, run_id: int) -> tuple[QualityPlan, tuple[Configuration, ...]]:
    """A quality run's plan, read back from its stored settings, and the configurations it has no
    result for (any status counts as a result: a failed configuration is not retrained)."""
    sweep = quality_run_sweep(store, run_id)
    if sweep.get("kind") != "quality":
        raise UsageError(f"quality run {run_id} was not made by `tbench quality` and cannot be resumed")
    settings = settings_from_sweep(sweep)
    plan = QualityPlan(settings, expand(settings), ())
    stored = quality_statuses(store, run_id)
    return plan, tuple(c for c in plan.configurations if c.key not in stored)


def train_into_run(plan: QualityPlan, configs: Sequence[Configuration], registry: Registry, store: Store,
                   run_id: int, on_result: Callable[[int, QualityRecord], None] | None = None,
                   jobs: int = IN_PROCESS) -> QualityOutcome:
    """Trains `configs` and adds their results to run `run_id`, then marks it finished (every
    configuration of the plan `ok`), failed, or (Ctrl-C, SIGTERM, SIGHUP) interrupted."""
    started = time.monotonic()
    reopen_quality_run(store, run_id)
    done = [0]

    def store_one(rec: QualityRecord) -> None:
        record_quality(store, run_id, rec)
        if on_result is not None:
            on_result(done[0], rec)
        done[0] += 1

    # installed around the clean-up too: a repeated signal must not cut it short
    with stop_on_signals():
        try:
            if jobs == IN_PROCESS:
                for config in configs:
                    store_one(train_configuration(plan, config, registry))
            else:
                train_in_workers(plan, configs, registry, jobs, store_one)
        except KeyboardInterrupt:
            finish_quality_run(store, run_id, "interrupted")
            raise
    statuses = quality_statuses(store, run_id)
    # a configuration the method cannot train here (said before training) does not make the run fail
    complete = all(statuses.get(c.key) in (Status.OK, Status.UNSUPPORTED) for c in plan.configurations)
    finish_quality_run(store, run_id, "finished" if complete else "failed")
    return QualityOutcome(run_id, "finished" if complete else "finished with failures",
                          dict(Counter(statuses.values())), time.monotonic() - started)
