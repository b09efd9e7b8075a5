"""The sweep runner: expands a sweep, measures every case (in an isolated worker by default)
and commits each record to the store as soon as it exists."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..methods.registry import Registry
from ..results.records import MeasurementRecord, RunInfo, utcnow
from ..results.store import Store
from . import cost
from .config import Case
from .correctness import INPUT_DISTRIBUTION
from .measure import MeasureSettings, measure_group
from .peaks import measure_peaks
from .sweep import Sweep
from .worker import Worker, WorkerEvent


class WorkerStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunOptions:
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    isolate: bool = True
    case_timeout_s: float = 300.0  # silence from a worker longer than this is a hang
    plugins: bool = True
    peaks: bool = True


@dataclass
class RunOutcome:
    run_id: int
    status: str  # finished | interrupted | failed
    counts: Counter = field(default_factory=Counter)
    message: str = ""


def group_by_shape(cases: list[Case]) -> list[list[Case]]:
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.shape_key, []).append(case)
    return list(groups.values())


def failure_record(case: Case, status: str, message: str, registry: Registry) -> MeasurementRecord:
    rec = MeasurementRecord(case=case, status=status, message=message, flops=cost.flops(case),
                            min_bytes=cost.min_bytes(case))
    method = registry.methods.get(case.method)
    if method is not None:
        with contextlib.suppress(Exception):
            rec.provenance = method.provenance(case)
    rec.finished_at = utcnow()
    return rec


class Runner:
    def __init__(self, store: Store, registry: Registry, options: RunOptions, console: Console | None = None,
                 show_progress: bool = True) -> None:
        self.store = store
        self.registry = registry
        self.options = options
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self._worker: Worker | None = None

    # --- entry point -----------------------------------------------------------------------------

    def run(self, sweep: Sweep, info: RunInfo | None = None, resume_run_id: int | None = None) -> RunOutcome:
        cases = sweep.cases(self.registry)
        if resume_run_id is not None:
            run_id = resume_run_id
            done = self.store.measured_keys(run_id)
            cases = [c for c in cases if c.key not in done]
        else:
            assert info is not None
            run_id = self.store.start_run(info)
        outcome = RunOutcome(run_id, "finished")
        progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
            disable=not self.show_progress, transient=False,
        )

        def emit(rec: MeasurementRecord) -> None:
            self.store.record(run_id, rec)
            outcome.counts[rec.status] += 1
            progress.advance(task)

        try:
            with progress:
                task = progress.add_task("starting", total=len(cases))
                if self.options.peaks and cases:
                    progress.update(task, description="measuring device peaks")
                    self.store.update_environment(run_id, peaks=self._peaks(sweep.device),
                                                  inputs=INPUT_DISTRIBUTION)
                for group in group_by_shape(cases):
                    if self.options.isolate:
                        self._run_isolated(group, emit, lambda text: progress.update(task, description=text),
                                           sweep.device)
                    else:
                        measure_group(group, self.registry, self.options.settings, emit,
                                      beacon=lambda case, step: progress.update(
                                          task, description=f"{case.label()}: {step}"))
        except KeyboardInterrupt:
            outcome.status = "interrupted"
        except WorkerStartError as exc:
            outcome.status = "failed"
            outcome.message = str(exc)
        finally:
            self._stop_worker()
            self.store.finish_run(run_id, outcome.status)
        return outcome

    # --- helpers ---------------------------------------------------------------------------------

    def _peaks(self, device: str) -> dict:
        if not self.options.isolate:
            return measure_peaks(device)
        worker = self._ensure_worker(device)
        worker.send(("peaks",))
        event = worker.next_event(self.options.case_timeout_s)
        if event.kind == "peaks":
            return dict(event.payload)
        self._drop_worker(kill=True)
        if event.kind == "died":
            raise WorkerStartError(f"the measurement worker could not start: {event.message}")
        return {"error": f"peak measurement failed: {event.kind} {event.message}"}

    def _ensure_worker(self, device: str) -> Worker:
        if self._worker is None:
            self._worker = Worker(self.options.settings, self.options.plugins, device)
        return self._worker

    def _drop_worker(self, kill: bool) -> None:
        if self._worker is not None:
            if kill:
                self._worker.kill()
            else:
                self._worker.stop()
            self._worker = None

    def _stop_worker(self) -> None:
        self._drop_worker(kill=False)

    def _run_isolated(self, group: list[Case], emit: Callable[[MeasurementRecord], None],
                      describe: Callable[[str], None], device: str) -> None:
        pending = {case.key: case for case in group}
        while pending:
            worker = self._ensure_worker(device)
            worker.send(("group", list(pending.values())))
            while True:
                event = worker.next_event(self.options.case_timeout_s)
                if event.kind == "beacon":
                    case = pending.get(event.case_key or "")
                    describe(f"{case.label() if case else event.case_key}: {event.step}")
                elif event.kind == "record" and event.record is not None:
                    if pending.pop(event.record.case.key, None) is not None:
                        emit(event.record)
                elif event.kind == "done":
                    for case in pending.values():  # every case must end with a record
                        emit(failure_record(case, "error", "worker returned no result", self.registry))
                    pending.clear()
                    break
                else:
                    self._handle_failure(event, pending, emit)
                    break

    def _handle_failure(self, event: WorkerEvent, pending: dict[str, Case],
                        emit: Callable[[MeasurementRecord], None]) -> None:
        """The worker died, hung or poisoned its CUDA context: record the culprit, replace the worker."""
        self._drop_worker(kill=True)
        if event.kind == "poisoned":
            return  # the culprit's record was sent before the worker stopped
        culprit = pending.pop(event.case_key, None) if event.case_key else None
        if event.kind == "timeout":
            status = "timeout"
            message = f"no progress for {self.options.case_timeout_s:g} s during {event.step}; worker killed"
        else:
            status = "oom" if "SIGKILL" in event.message else "error"
            message = event.message + (" (likely out of host memory)" if status == "oom" else "")
        if culprit is None:
            # died before any case started: every case would fail the same way, so stop here and
            # leave the rest unmeasured for `--resume` once the cause is fixed
            raise WorkerStartError(f"the measurement worker could not start: {message}")
        emit(failure_record(culprit, status, message, self.registry))
