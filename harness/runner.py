"""The sweep runner: expands a sweep, measures every case (in an isolated worker by default)
and commits each record to the store as soon as it exists."""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..core import cost
from ..core.case import Case
from ..core.records import MeasurementRecord, RunInfo, utcnow
from ..core.sweep import Sweep
from ..methods.registry import Registry
from ..results.store import Store
from . import busy, estimate
from .correctness import INPUT_DISTRIBUTION
from .measure import MeasureSettings, measure_group
from .peaks import measure_peaks
from .shard import shard_cases
from .signals import Stopped, signal_name, stop_on_signals
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
    watch_load: bool = True  # warn about, and flag rows measured on, a busy machine or noisy timings


@dataclass
class RunOutcome:
    run_id: int
    status: str  # finished | partial | interrupted | failed
    counts: Counter = field(default_factory=Counter)
    message: str = ""
    signal: int | None = None  # the termination signal that interrupted the run, if any


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

    def run(self, sweep: Sweep, info: RunInfo | None = None, resume_run_id: int | None = None,
            devices: list[str] | None = None, shard: tuple[int, int] | None = None) -> RunOutcome:
        """Measure the sweep into a new run (`info`) or into an existing one (`resume_run_id`,
        skipping what it has); `shard` (i, n) keeps only the i-th of n parts of the sweep."""
        cases = sweep.cases(self.registry)
        if shard is not None:
            cases = shard_cases(cases, *shard)
        if resume_run_id is not None:
            run_id = resume_run_id
            done = self.store.measured_keys(run_id)
            cases = [c for c in cases if c.key not in done]
        else:
            assert info is not None
            run_id = self.store.start_run(info)
        outcome = RunOutcome(run_id, "finished")
        # The bar advances by each configuration's estimated seconds, not by one per configuration:
        # counted, the short configurations done first would make the ETA read seconds for hours.
        weights = self._estimate(cases, sweep.device, len(devices or [sweep.device]))
        progress = Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(),
            TextColumn("{task.fields[done]}/{task.fields[count]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
            disable=not self.show_progress, transient=False,
        )
        measured = [0]

        watch = _LoadWatch(self.console, self.options.settings.policy.target_rse) \
            if self.options.watch_load and cases else None

        def emit(rec: MeasurementRecord) -> None:
            if watch is not None:
                watch.check(rec)
            self.store.record(run_id, rec)
            outcome.counts[rec.status] += 1
            measured[0] += 1
            progress.update(task, advance=weights.get(rec.case.key, 0.0), done=measured[0])

        # installed around the clean-up too: a repeated signal must not cut it short
        with stop_on_signals():
            try:
                with progress:
                    task = progress.add_task("starting", total=sum(weights.values()) or None, done=0,
                                             count=len(cases))
                    if self.options.peaks and cases:
                        progress.update(task, description="measuring device peaks")
                        self.store.update_environment(run_id, peaks=self._peaks((devices or [sweep.device])[0]),
                                                      inputs=INPUT_DISTRIBUTION)
                    groups = group_by_shape(cases)
                    if self.options.isolate:
                        self._run_isolated(groups, devices or [sweep.device], emit,
                                           lambda text: progress.update(task, description=escape(text)))
                    else:
                        for group in groups:
                            measure_group(group, self.registry, self.options.settings, emit,
                                          beacon=lambda case, step: progress.update(
                                              task, description=escape(f"{case.label()}: {step}")))
            except Stopped as exc:
                outcome.status = "interrupted"
                outcome.signal = exc.signum
                outcome.message = f"stopped by {signal_name(exc.signum)}"
            except KeyboardInterrupt:
                outcome.status = "interrupted"
            except WorkerStartError as exc:
                outcome.status = "failed"
                outcome.message = str(exc)
            finally:
                self._drop_worker(kill=False)
                if watch is not None:
                    watch.summary()
                if outcome.status == "finished" and not self._complete(sweep, run_id):
                    outcome.status = "partial"  # other shards of this sweep still have to report
                self.store.finish_run(run_id, outcome.status)
        return outcome

    # --- helpers ---------------------------------------------------------------------------------

    def _estimate(self, cases: list[Case], device: str, devices: int) -> dict[str, float]:
        """Seconds each case should take (roughly); says so up front when the sweep is long."""
        if not cases:
            return {}
        settings = self.options.settings
        runnable = [c for c in cases if c.method not in self.registry
                    or self.registry.get(c.method).unsupported_reason(c) is None]
        guess = estimate.estimate(runnable, device, settings.policy, settings.check, devices)
        weights = {c.key: guess.seconds.get(c.key, 0.01) for c in cases}
        if guess.total_s > 120:
            self.console.print(f"Estimated time: ~{estimate.duration(guess.total_s)} for {len(cases)} "
                               f"configurations (rough: {guess.rate / 1e9:.3g} GFLOP/s assumed)",
                               markup=False, highlight=False)
        if guess.far_beyond and runnable:
            case, seconds = guess.longest(runnable)
            text = (f"this sweep will take far longer than its budgets suggest ({len(cases)} configurations x "
                    f"{settings.policy.budget_s:g} s = {estimate.duration(guess.nominal_s)}): the longest "
                    f"configuration, {case.label()}, alone needs ~{estimate.duration(seconds)}; narrow --lengths "
                    "or --methods to shorten it")
            self.console.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False)
        return weights

    def _complete(self, sweep: Sweep, run_id: int) -> bool:
        wanted = {case.key for case in sweep.cases(self.registry)}
        return wanted <= self.store.measured_keys(run_id)

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

    def _stop_workers(self, slots: list[_Slot]) -> None:
        self._drop_worker(kill=False)
        for slot in slots:
            if slot.worker is not None:
                # a worker still measuring (the run was interrupted) reads no "stop" until its group ends
                if slot.busy:
                    slot.worker.kill()
                else:
                    slot.worker.stop()
                slot.worker = None

    def _run_isolated(self, groups: list[list[Case]], devices: list[str], emit: Callable[[MeasurementRecord], None],
                      describe: Callable[[str], None]) -> None:
        """Shape groups go to one worker per device as each becomes free; results come back as
        they finish, from whichever device."""
        if len(devices) > 1:
            # longest shapes first, so that no GPU is left with the longest group at the end
            groups = sorted(groups, key=lambda group: -group[0].seq_len * group[0].batch * group[0].heads)
        queue = deque(groups)
        slots = [_Slot(device) for device in devices]
        # the worker that measured the peaks serves the first device
        if self._worker is not None:
            slots[0].worker, self._worker = self._worker, None
        try:
            while queue or any(slot.busy for slot in slots):
                for slot in slots:
                    if not slot.busy and queue:
                        group = queue.popleft()
                        if len(devices) > 1:
                            group = [replace(case, device=slot.device) for case in group]
                        slot.pending = {case.key: case for case in group}
                        self._send_group(slot)
                busy = [slot for slot in slots if slot.busy]
                wait = 0.5 if len(busy) == 1 else 0.05
                for slot in busy:
                    assert slot.worker is not None
                    event = slot.worker.poll_event(wait)
                    if event is None:
                        if slot.worker.silent_for() <= self.options.case_timeout_s:
                            continue
                        event = slot.worker.timeout_event()
                    self._on_event(slot, event, emit, describe, len(devices) > 1)
        finally:
            self._stop_workers(slots)

    def _send_group(self, slot: _Slot) -> None:
        if slot.worker is None:
            slot.worker = Worker(self.options.settings, self.options.plugins, slot.device)
        slot.worker.send(("group", list(slot.pending.values())))
        slot.busy = True

    def _on_event(self, slot: _Slot, event: WorkerEvent, emit: Callable[[MeasurementRecord], None],
                  describe: Callable[[str], None], show_device: bool) -> None:
        pending = slot.pending
        if event.kind == "beacon":
            case = pending.get(event.case_key or "")
            prefix = f"[{slot.device}] " if show_device else ""
            describe(f"{prefix}{case.label() if case else event.case_key}: {event.step}")
        elif event.kind == "record" and event.record is not None:
            if pending.pop(event.record.case.key, None) is not None:
                emit(event.record)
        elif event.kind == "done":
            for case in pending.values():  # every case must end with a record
                emit(failure_record(case, "error", "worker returned no result", self.registry))
            pending.clear()
            slot.busy = False
        elif event.kind in ("died", "timeout", "poisoned"):
            slot.busy = False
            if slot.worker is not None:
                slot.worker.kill()
                slot.worker = None
            self._handle_failure(event, pending, emit)
            if pending:
                self._send_group(slot)  # a fresh worker takes the rest of the group

    def _handle_failure(self, event: WorkerEvent, pending: dict[str, Case],
                        emit: Callable[[MeasurementRecord], None]) -> None:
        """The worker died, hung or poisoned its CUDA context: record the culprit."""
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


class _LoadWatch:
    """Warns once up front if the machine is busy, once at the first busy or noisy row, and at the
    end with the number of rows flagged; the flags themselves go into the rows."""

    def __init__(self, console: Console, target_rse: float) -> None:
        self.console = console
        self.target_rse = target_rse
        self.load, others = busy.probe_host()
        self.flagged: Counter = Counter()
        if self.load.busy(others):
            assert others is not None
            self._warn(f"the machine is busy before the run: {self.load.describe(others)}; timings will be "
                       "slower and noisier than on an idle machine")

    def _warn(self, text: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {escape(text)}", highlight=False)

    def check(self, rec: MeasurementRecord) -> None:
        others = self.load.others() if rec.status == "ok" else None
        for warning in busy.flag(rec, self.load, others, self.target_rse):
            kind = warning.split(":")[0].split(" ")[0]  # machine / GPU / noisy
            if not self.flagged[kind]:
                self._warn(f"{rec.case.label()}: {warning}; such rows are flagged")
            self.flagged[kind] += 1

    def summary(self) -> None:
        if self.flagged:
            parts = ", ".join(f"{n} {dict(machine='on a busy machine', GPU='on a shared GPU').get(k, k)}"
                              for k, n in self.flagged.items())
            self._warn(f"rows flagged: {parts}; measure again on an idle machine to trust them")


@dataclass
class _Slot:
    """One device and the worker measuring on it."""

    device: str
    worker: Worker | None = None
    pending: dict[str, Case] = field(default_factory=dict)
    busy: bool = False  # a group was sent and its "done" has not come back yet
