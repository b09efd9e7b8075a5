"""Measuring a group of cases that share one shape, in one process.

Order of work per case: supported? available? fits in memory? warm-up (compilation and
autotuning happen here), correctness gate on fresh inputs, peak memory of one call. Then all
surviving cases are timed in interleaved rounds (A B C A B C ...) so that drift in clocks or
temperature hits them alike, each until its own stopping rule says done. Cases of very different
cost per call (a 2 ms tensorized hop and a 400 ms exact kernel at the board's power cap) are
interleaved only with their own kind, in separate rotations, lightest first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core import cost
from ..core.case import PAPER_PASSES, Case, Scope, Status, TimingProtocol
from ..core.device import device_kind
from ..core.records import MeasurementRecord, utcnow
from ..kernels.tensors import make_inputs
from ..methods.registry import Method, Registry
from .allocator import keep_heap
from .correctness import check, new_seed
from .devicestate import ClockTrace, DeviceMonitor, clock_summary
from .memory import free_bytes, measure_peak, preflight
from .passes import Step, make_step
from .timing import Prepared, Sampling, Timer, TimingPolicy, clocks_settled, cool_down, make_timer, summarize


@dataclass(frozen=True)
class MeasureSettings:
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    seed: int = 0
    check: bool = True
    # Seed of the correctness check's inputs; None: a fresh one per measurement (recorded).
    check_seed: int | None = None


Emit = Callable[[MeasurementRecord], None]

PAPER_BACKWARD = "the paper's protocol times forward passes only (mode fwd)"
# Called before each step that runs method code, so an isolating parent knows what crashed.
Beacon = Callable[[Case, str], None]


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


@dataclass
class _Active:
    case: Case
    method: Method
    fn: Prepared
    sampling: Sampling
    record: MeasurementRecord
    call_s: float = 0.0  # fastest warm-up call, for grouping by cost
    passes: int = 1  # forward passes per timed call (the paper's protocol averages 50)
    spans: list[tuple[float, float]] = field(default_factory=list)  # its bursts, on the clock trace's time


def cost_tiers(call_s: list[float], ratio: float) -> list[list[int]]:
    """Indices grouped so that within a group the slowest call is at most `ratio` times the
    fastest; groups in order of increasing cost, indices in their original order."""
    order = sorted(range(len(call_s)), key=lambda i: call_s[i])
    tiers: list[list[int]] = []
    floor = 0.0
    for i in order:
        if not tiers or call_s[i] > ratio * floor:
            tiers.append([])
            floor = call_s[i]
        tiers[-1].append(i)
    return [sorted(t) for t in tiers]


def _base_record(case: Case, method: Method | None) -> MeasurementRecord:
    rec = MeasurementRecord(case=case, status="ok", started_at=utcnow())
    rec.flops = cost.flops(case)
    rec.min_bytes = cost.min_bytes(case)
    if method is not None:
        try:
            rec.provenance = method.provenance(case)
        except Exception as exc:
            rec.provenance = f"provenance unknown ({_one_line(exc)})"
    return rec


def _finish(rec: MeasurementRecord, status: str, message: str, emit: Emit) -> None:
    rec.status, rec.message = status, message
    rec.finished_at = utcnow()
    emit(rec)


def measure_group(
    cases: list[Case],
    registry: Registry,
    settings: MeasureSettings,
    emit: Emit,
    beacon: Beacon = lambda case, step: None,
    device_index: int | None = None,
) -> None:
    """Measure cases of one shape; emit one record per case, whatever happens to it."""
    if not cases:
        return
    first = cases[0]
    device = first.device
    keep_heap(device)
    monitor = DeviceMonitor(device)
    timer: Timer = make_timer(first.timing, device)
    active: list[_Active] = []
    inputs: tuple[torch.Tensor, ...] | None = None
    built = None  # layer and model scope: the group's module and its input, built once

    for case in cases:
        method = registry.methods.get(case.method)
        rec = _base_record(case, method)
        rec.device_index = device_index
        if method is None:
            _finish(rec, "error", f"method '{case.method}' is not in this registry", emit)
            continue
        reason = method.unsupported_reason(case)
        if reason is None and case.mode.needs_backward and case.protocol is TimingProtocol.PAPER:
            reason = PAPER_BACKWARD
        if reason is not None:
            _finish(rec, "unsupported", reason, emit)
            continue
        availability = method.availability(device_kind(device))
        if not availability.available:
            _finish(rec, "unsupported", f"unavailable: {availability.reason}", emit)
            continue
        if case.is_op:
            estimate = method.memory_estimate(case) if method.memory_estimate else None
        else:
            from .scoped import scoped_memory_estimate

            # the group's module, once built, is already held: count it as free for its cases
            estimate = scoped_memory_estimate(case, method) - (_module_bytes(built[0]) if built else 0)
        skip = preflight(case, estimate, free_bytes(device) + _input_bytes_held(inputs))
        if skip is not None:
            _finish(rec, "skipped", skip, emit)
            continue
        try:
            if case.is_op:
                if inputs is None:
                    inputs = make_inputs(case, settings.seed)
                entry = _warm_up(case, method, inputs, rec, settings, timer, beacon)
            else:
                if built is None:
                    from .scoped import build_for

                    beacon(case, f"building the {case.scope}")
                    built = build_for(case, settings.seed)
                entry = _warm_up(case, method, (), rec, settings, timer, beacon, built)
        except Exception as exc:
            _release()
            _finish(rec, "oom" if _is_oom(exc) else "error", _one_line(exc), emit)
            continue
        if entry is None:
            emit(rec)
            continue
        active.append(entry)

    _timed_rounds(active, timer, monitor, emit, beacon, settings.policy)


def _module_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.module.parameters())  # type: ignore[attr-defined]


def _input_bytes_held(inputs: tuple[torch.Tensor, ...] | None) -> int:
    # Inputs already allocated for this group are not extra: preflight counts them itself.
    return sum(t.numel() * t.element_size() for t in inputs) if inputs else 0


def _release() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _Phases:
    """Seconds spent in each step before the timed rounds (the warm-up holds compilation and
    autotuning), kept with the row as device_state["phases_s"]: where a sweep's time goes."""

    def __init__(self, state: dict) -> None:
        self.spent: dict[str, float] = state.setdefault("phases_s", {})
        self.current: str | None = None
        self.since = time.perf_counter()

    def enter(self, name: str | None) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.spent[self.current] = round(self.spent.get(self.current, 0.0) + now - self.since, 3)
        self.current, self.since = name, now


def _warm_up(
    case: Case,
    method: Method,
    inputs: tuple[torch.Tensor, ...],
    rec: MeasurementRecord,
    settings: MeasureSettings,
    timer: Timer,
    beacon: Beacon,
    built: tuple | None = None,
) -> _Active | None:
    """Prepare, warm up, check and size one case. Returns None if the record is already final.
    `built`: the module and input of a layer or model case (harness/scoped.py)."""
    phases = _Phases(rec.device_state)

    def step(name: str) -> None:
        phases.enter(name)
        beacon(case, name)

    step("warm-up")
    if built is not None:
        from .scoped import scoped_step

        fn = scoped_step(case, method, *built)
    else:
        q, k, v = method.prepared(*inputs, case)
        call = method.bound(case)
        # fwd: the call under no_grad; bwd: the backward, its forward run untimed before each sample;
        # fwd_bwd: both (harness/passes.py)
        fn = make_step(lambda a, b, c: call(a, b, c, case), (q, k, v), case)
        if case.protocol is TimingProtocol.PAPER:
            fn = _passes(fn, PAPER_PASSES)

    deadline = time.perf_counter() + settings.policy.warmup_s
    calls = 0
    fastest = float("inf")
    while calls < settings.policy.warmup_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        calls += 1
        if case.device != "cpu":
            torch.cuda.synchronize()
        fastest = min(fastest, time.perf_counter() - start)

    if settings.check:
        step("check")
        check_seed = settings.check_seed if settings.check_seed is not None else new_seed()
        if built is not None:
            from .scoped import check_scoped

            result = check_scoped(case, method, built[0], check_seed, tolerance=method.tolerance)
        else:
            result = check(lambda a, b, c: call(*method.prepared(a, b, c, case), case), case.attention(),
                           seed=check_seed, tolerance=method.tolerance, reference=method.reference)
        rec.device_state["check"] = result.details
        rec.check_error = result.error
        rec.fidelity_rel_l2 = result.fidelity_rel_l2
        rec.fidelity_max_abs = result.fidelity_max_abs
        if not result.passed:
            phases.enter(None)
            rec.status, rec.message = "wrong", result.message
            rec.finished_at = utcnow()
            return None
        rec.message = result.message
    else:
        # Timed but never compared with its definition: kept apart from `ok`, never passed off as it.
        rec.status, rec.message = Status.UNCHECKED, "correctness not checked (--no-check)"

    # what ran may only be known now (e.g. the configs an autotuner chose during the warm-up)
    with contextlib.suppress(Exception):  # else keep the description taken before the warm-up
        rec.provenance = method.provenance(case)
    step("memory")
    # bwd and fwd_bwd: the forward's saved activations, the backward's work and the gradients,
    # as a training step holds them (the forward runs inside the measured call here)
    fn.release()
    peak = measure_peak(fn, case.device)
    fn.release()
    rec.peak_bytes, rec.total_peak_bytes = peak.extra_bytes, peak.total_bytes
    step("graph capture" if timer.mode == "graph" else "timing")
    timed = timer.prepare(fn.call, fn.setup, call_s=fastest)
    phases.enter(None)
    policy, passes = settings.policy, 1
    if case.protocol is TimingProtocol.PAPER:
        from .scoped import paper_policy

        policy, passes = paper_policy(policy), PAPER_PASSES
        rec.device_state["protocol"] = (f"one sample: the mean of {PAPER_PASSES} forward passes back to back, "
                                        "after the warm-up")
    return _Active(case, method, timed, Sampling(policy, []), rec, fastest / passes, passes=passes)


def _passes(fn: Step, count: int) -> Step:
    """`count` calls of a forward step back to back, as one timed call."""

    def repeated() -> object:
        out = None
        for _ in range(count):
            out = fn.call()
        return out

    return Step(repeated, fn.setup, fn.release)


def _timed_rounds(active: list[_Active], timer: Timer, monitor: DeviceMonitor, emit: Emit, beacon: Beacon,
                  policy: TimingPolicy) -> None:
    with ClockTrace(monitor.sm_clock_mhz) as trace:
        for tier in cost_tiers([entry.call_s for entry in active], policy.tier_ratio):
            entries = [active[i] for i in tier]
            if entries[0].case.device != "cpu":
                if policy.cool_to_c is not None:
                    for entry in entries:
                        beacon(entry.case, f"cooling to {policy.cool_to_c:g} C")
                    waited, temp = cool_down(lambda: monitor.sample().get("temperature_c"), policy.cool_to_c,
                                             policy.cool_max_s)
                    for entry in entries:
                        entry.record.device_state["cooled"] = {"waited_s": round(waited, 1), "temperature_c": temp}
                for entry in entries:
                    beacon(entry.case, "settling clocks")
                settled = _settle_clocks(entries, trace, policy, lambda: monitor.throttled(monitor.sample()))
                for entry in entries:
                    entry.record.device_state["settle"] = settled
                    if settled["held_back"] is True:
                        entry.sampling.policy = dataclasses.replace(
                            policy, min_time_s=max(policy.min_time_s, policy.held_back_min_time_s))
            _rotation(entries, timer, monitor, trace, emit, beacon, policy)


def _settle_clocks(entries: list[_Active], trace: ClockTrace, policy: TimingPolicy,
                   limited: Callable[[], bool | None] = lambda: None) -> dict:
    """Untimed calls of the rotation's cases in turn, for at least `tier_settle_s`; then, if the
    GPU is held back (`limited()` not False), until the SM clock stops drifting or
    `clock_settle_max_s` has passed."""
    start = trace.now()
    calls = 0
    checked = start
    held_back: bool | None = None  # None: unknown (no NVML), treated as held back while settling
    asked = False
    while True:
        entries[calls % len(entries)].fn()
        torch.cuda.synchronize()
        calls += 1
        now = trace.now()
        elapsed = now - start
        if elapsed < policy.tier_settle_s or now - checked < trace.period_s:
            continue
        checked = now
        if not asked:
            held_back, asked = limited(), True
        readings = [(t, mhz) for t, mhz in list(trace.readings) if t >= start]
        if held_back is False or not readings or elapsed >= policy.clock_settle_max_s:
            break
        if clocks_settled(readings, now, policy.clock_window_s, policy.clock_tolerance):
            break
    last = trace.between([(max(start, now - policy.clock_window_s), now)])
    return {"s": round(elapsed, 2), "calls": calls, "held_back": held_back, "sm_clock_mhz": clock_summary(last)}


def _rotation(active: list[_Active], timer: Timer, monitor: DeviceMonitor, trace: ClockTrace, emit: Emit,
              beacon: Beacon, policy: TimingPolicy) -> None:
    """Rounds over the active cases. In each round a case first runs untimed for `settle_s`, so its
    samples see the clock and power state its own kernels produce rather than the one the
    previous case left behind, then takes a short burst of samples."""
    for entry in active:
        entry.record.device_state["before"] = monitor.sample()
    interleaved = len(active) > 1
    while active:
        for entry in list(active):
            beacon(entry.case, "timing")
            try:
                if interleaved:
                    _settle(entry.fn, policy.settle_s, entry.case.device)
                burst_start = trace.now()
                entry.sampling.start_burst()
                burst_end = time.perf_counter() + policy.burst_s
                while True:
                    start = time.perf_counter()
                    sample = timer.sample(entry.fn) / entry.passes
                    entry.sampling.add(sample, time.perf_counter() - start)
                    if entry.sampling.done or time.perf_counter() >= burst_end:
                        break
                entry.spans.append((burst_start, trace.now()))
            except Exception as exc:
                active.remove(entry)
                entry.sampling.samples.clear()
                _release()
                _finish(entry.record, "oom" if _is_oom(exc) else "error", _one_line(exc), emit)
                continue
            if entry.sampling.done:
                active.remove(entry)
                rec = entry.record
                rec.timing = summarize(entry.sampling.samples)
                if entry.case.scope is Scope.MODEL:
                    from .scoped import depth_estimate

                    rec.device_state["depth"] = depth_estimate(entry.case, rec.timing.median_ms)
                after = monitor.sample()
                rec.device_state["after"] = after
                rec.device_state["stop"] = entry.sampling.stop_reason
                # where each burst's samples start: the gate compares burst medians, not samples
                rec.device_state["burst_starts"] = list(entry.sampling.burst_starts)
                rec.device_state.setdefault("phases_s", {})["sampling"] = round(
                    sum(end - start for start, end in entry.spans), 3)
                during = clock_summary(trace.between(entry.spans))
                if during is not None:
                    rec.device_state["sm_clock_mhz_during_samples"] = during
                if entry.fn.host_ms is not None:
                    rec.device_state["host_ms"] = round(entry.fn.host_ms, 4)
                    rec.device_state["hold_ms"] = round(entry.fn.hold_ms, 4)
                    rec.device_state["hold_retakes"] = entry.fn.retakes
                rec.throttled = monitor.throttled(rec.device_state.get("before"), after)
                if rec.throttled:
                    reasons = monitor.reasons(rec.device_state.get("before"), after)
                    rec.message = (rec.message + "; " if rec.message else "") + f"GPU clocks limited ({reasons})"
                rec.finished_at = utcnow()
                emit(rec)


def _settle(fn: Callable[[], object], seconds: float, device: str) -> None:
    deadline = time.perf_counter() + seconds
    while True:
        fn()
        if device != "cpu":
            torch.cuda.synchronize()
        if time.perf_counter() >= deadline:
            return
