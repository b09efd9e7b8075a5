"""Adaptive sampling on synthetic timers (no real kernels: the stopping rule itself)."""

import time

import numpy as np
import pytest
import torch

from tbench.harness.devicestate import ClockTrace, clock_summary
from tbench.harness.measure import _Active, _settle_clocks, cost_tiers
from tbench.harness.timing import (
    MAX_RETAKES,
    Prepared,
    Sampling,
    TimingPolicy,
    clocks_settled,
    cool_down,
    hold_for,
    median_rse,
    retake_until_covered,
    summarize,
)


def sample_until_done(policy, draw, cost_s=0.001):
    sampling = Sampling(policy, [])
    while not sampling.done:
        sampling.add(draw(), cost_s)
    return sampling


def test_quiet_timer_reaches_the_target_precision():
    rng = np.random.default_rng(0)
    policy = TimingPolicy(target_rse=0.005, min_samples=10, min_time_s=0.0, budget_s=100.0)
    sampling = sample_until_done(policy, lambda: 1.0 + 0.01 * rng.standard_normal())
    assert sampling.stop_reason == "target precision"
    assert median_rse(sampling.samples) <= 0.005
    assert 10 <= len(sampling.samples) < 100


def test_noisy_timer_stops_at_the_budget():
    rng = np.random.default_rng(1)
    policy = TimingPolicy(target_rse=0.005, min_samples=10, min_time_s=0.0, budget_s=0.5)
    sampling = sample_until_done(policy, lambda: float(rng.lognormal(0.0, 1.0)), cost_s=0.01)
    assert sampling.stop_reason.startswith("time budget")
    assert len(sampling.samples) == 50  # 0.5 s of 10 ms samples
    assert median_rse(sampling.samples) > 0.005


def test_minimum_samples_and_time_are_honoured():
    policy = TimingPolicy(target_rse=0.5, min_samples=10, min_time_s=0.25, budget_s=100.0)
    sampling = sample_until_done(policy, lambda: 1.0, cost_s=1 / 64)
    assert len(sampling.samples) == 16  # the 0.25 s floor, not the 10-sample floor, decided
    sampling = sample_until_done(policy, lambda: 1.0, cost_s=1 / 16)
    assert len(sampling.samples) == 10  # now the sample floor decides


def test_summary_statistics():
    t = summarize([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert t.median_ms == 5.5 and t.min_ms == 1.0 and t.count == 10
    assert t.p20_ms == np.percentile(range(1, 11), 20) and t.p80_ms == np.percentile(range(1, 11), 80)


def test_cases_of_very_different_cost_are_timed_in_separate_rotations():
    # The 64k shape on an H100: tensorized and tensorized-ref (1.6-4.8 ms), cuDNN and FA2 (60-100 ms).
    call_ms = [101.0, 1.8, 59.0, 2.6, 4.8, 1.65]
    assert cost_tiers(call_ms, 4.0) == [[1, 3, 4, 5], [0, 2]]
    assert cost_tiers(call_ms, 100.0) == [[0, 1, 2, 3, 4, 5]]
    assert cost_tiers([3.0, 3.0], 4.0) == [[0, 1]]
    assert cost_tiers([], 4.0) == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_cooling_waits_until_the_target_temperature():
    clock = FakeClock()
    temps = iter([70, 66, 61, 55, 49, 45, 40])
    waited, temp = cool_down(lambda: next(temps), 50, 60, sleep=clock.sleep, clock=lambda: clock.now)
    assert temp == 49 and waited == 2.0  # four half-second naps before 49 was read


def test_cooling_gives_up_at_its_limit_and_on_an_unreadable_sensor():
    clock = FakeClock()
    waited, temp = cool_down(lambda: 80, 50, 5, sleep=clock.sleep, clock=lambda: clock.now)
    assert (waited, temp) == (5.0, 80)
    assert cool_down(lambda: None, 50, 5, sleep=clock.sleep, clock=lambda: clock.now)[0] == 0.0


def test_clocks_settle_once_two_windows_agree():
    ramp = [(t / 20, 1500 + 300 * t / 20) for t in range(40)]  # +300 MHz/s for 2 s
    assert not clocks_settled(ramp, 1.95, 0.5, 0.0075)
    flat = ramp[:20] + [(1 + t / 20, 1800 + (t % 2) * 10) for t in range(40)]
    assert clocks_settled(flat, 2.95, 0.5, 0.0075)  # 1800-1810 MHz jitter is within 0.75 %
    assert not clocks_settled(flat, 1.45, 0.5, 0.0075)  # the window before still ramps
    assert not clocks_settled(flat[:2], 0.06, 0.5, 0.0075)  # too few readings


def test_clock_trace_reads_in_the_background_and_selects_spans():
    start = time.perf_counter()
    with ClockTrace(lambda: 1000 + 1000 * (time.perf_counter() - start), period_s=0.01) as trace:
        time.sleep(0.2)
        half = trace.now() / 2
    assert len(trace.readings) >= 5
    times = [t for t, _ in trace.readings]
    assert times == sorted(times)
    early = trace.between([(0.0, half)])
    late = trace.between([(half, 1.0)])
    assert early and late and max(early) < min(late)
    summary = clock_summary(early + late)
    assert summary["n"] == len(early) + len(late) and summary["min"] <= summary["mean"] <= summary["max"]
    assert clock_summary([]) is None
    with ClockTrace(lambda: None, period_s=0.01) as silent:
        time.sleep(0.05)
    assert silent.readings == []


def test_the_gpu_hold_covers_the_host_time_with_a_margin_and_a_cap():
    cycles, ms = hold_for(0.2, cycles_per_ms=1.5e6)
    assert ms > 0.2 and cycles == int(ms * 1.5e6)
    assert hold_for(100.0, cycles_per_ms=1.5e6, cap_ms=20.0)[1] == 20.0


def test_a_sample_the_host_outlasted_is_retaken_with_a_hold_that_covers_it():
    cycles, ms = hold_for(0.2, cycles_per_ms=1.5e6)
    prepared = Prepared(lambda: None, cycles, ms, host_ms=0.2)
    assert prepared.covers(0.25)  # within the hold's margin: the call was queued when the clock started
    assert not prepared.covers(1.0)  # the host was still issuing when the hold ran out
    prepared.lengthen_hold(1.0, cycles_per_ms=1.5e6)
    assert prepared.covers(1.0) and prepared.hold_ms > 1.0
    assert prepared.hold_cycles == int(prepared.hold_ms * 1.5e6)
    capped = Prepared(lambda: None, *hold_for(100.0, cycles_per_ms=1.5e6), host_ms=100.0)
    assert capped.covers(200.0)  # a host-bound call: its hold is at the cap, taken as it is
    assert Prepared(lambda: None).covers(5.0)  # no hold (the call waits for the GPU itself)


@pytest.mark.parametrize(("issues", "kept", "retakes"), [
    ((0.1,), 0, 0),  # covered at once
    ((1.0, 1.0), 1, 1),  # the host outlasted the hold once: one retake, covered
    ((1.0, 2.0, 4.0, 8.0, 16.0), MAX_RETAKES, MAX_RETAKES),  # slower each time: the last allowed kept
], ids=["covered", "one-retake", "never-covered"])
def test_a_sample_is_retaken_until_its_hold_covers_the_host_and_each_retake_is_counted(issues, kept, retakes):
    """Each attempt returns (its time, the host's issue time); the sample kept is the first covered,
    or the last allowed; `retakes` counts the attempts run again, not the holds lengthened (the last
    uncovered attempt lengthens the hold for the samples after it, and is not retaken)."""
    prepared = Prepared(lambda: None, *hold_for(0.2, cycles_per_ms=1.5e6), host_ms=0.2)
    attempts = iter(enumerate(issues))
    took = retake_until_covered(prepared, lambda: next(attempts), cycles_per_ms=1.5e6)
    assert took == kept and prepared.retakes == retakes
    assert prepared.covers(issues[min(kept, len(issues) - 1)])  # the samples after it start covered


def _settling(reader, policy, monkeypatch, limited=lambda: True):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    entry = _Active(case=None, method=None, fn=Prepared(lambda: time.sleep(0.002)), sampling=None, record=None)
    with ClockTrace(reader, period_s=0.01) as trace:
        return _settle_clocks([entry], trace, policy, limited)


def test_settling_waits_for_the_clock_to_stop_ramping(monkeypatch):
    start = time.perf_counter()
    ramp_s = 0.6

    def reader():  # 1500 MHz rising to 1800 MHz over 0.6 s, then flat
        return 1500 + 300 * min((time.perf_counter() - start) / ramp_s, 1.0)

    policy = TimingPolicy(tier_settle_s=0.1, clock_window_s=0.2, clock_tolerance=0.0075, clock_settle_max_s=5.0)
    settled = _settling(reader, policy, monkeypatch)
    assert ramp_s + 0.2 <= settled["s"] < 3.0
    assert settled["sm_clock_mhz"]["min"] >= 1780


def test_settling_gives_up_at_its_limit_and_without_a_clock(monkeypatch):
    start = time.perf_counter()
    policy = TimingPolicy(tier_settle_s=0.1, clock_window_s=0.1, clock_tolerance=0.0075, clock_settle_max_s=0.5)
    settled = _settling(lambda: 1000 + 1000 * (time.perf_counter() - start), policy, monkeypatch)  # never settles
    assert 0.5 <= settled["s"] < 1.0
    settled = _settling(lambda: None, policy, monkeypatch)
    assert 0.1 <= settled["s"] < 0.3 and settled["sm_clock_mhz"] is None


def test_a_gpu_that_is_not_held_back_settles_for_the_minimum_only(monkeypatch):
    start = time.perf_counter()
    policy = TimingPolicy(tier_settle_s=0.1, clock_window_s=0.1, clock_tolerance=0.0075, clock_settle_max_s=0.5)
    reader = lambda: 1000 + 1000 * (time.perf_counter() - start)  # noqa: E731 - would never settle
    settled = _settling(reader, policy, monkeypatch, limited=lambda: False)
    assert 0.1 <= settled["s"] < 0.3 and settled["held_back"] is False
    unknown = _settling(reader, policy, monkeypatch, limited=lambda: None)
    assert unknown["s"] >= 0.5 and unknown["held_back"] is None  # unknown: settle all the same


@pytest.mark.gpu
def test_event_samples_hold_the_gpu_until_the_host_has_issued_the_call():
    from tbench.harness.timing import make_timer

    x = torch.zeros(1024, device="cuda")

    def slow_host_call():  # 5 ms of host work before one tiny kernel
        time.sleep(0.005)
        x.add_(1)

    for mode in ("events", "graph"):
        timer = make_timer(mode, "cuda")
        prepared = timer.prepare(slow_host_call)
        if mode == "events":
            assert prepared.host_ms >= 5.0 and prepared.hold_ms > prepared.host_ms
        samples = sorted(timer.sample(prepared) for _ in range(9))
        assert samples[4] < 1.0, (mode, samples)  # the kernel alone; without the hold, >= 5 ms


@pytest.mark.gpu
def test_a_host_slower_than_when_the_call_was_prepared_gets_a_longer_hold():
    from tbench.harness.timing import make_timer

    x = torch.zeros(1024, device="cuda")
    host_s = [0.001]

    def call():  # host work before one tiny kernel, slower after the call is prepared
        time.sleep(host_s[0])
        x.add_(1)

    timer = make_timer("events", "cuda")
    prepared = timer.prepare(call)
    assert prepared.hold_ms < 3.0 and prepared.retakes == 0
    host_s[0] = 0.005
    samples = sorted(timer.sample(prepared) for _ in range(9))
    # without the retake the GPU waits for the host inside the interval: >= 3 ms
    assert samples[4] < 1.0, samples
    assert prepared.retakes >= 1 and prepared.hold_ms > 5.0


@pytest.mark.gpu
def test_a_long_call_is_probed_once_for_its_host_time_a_short_one_five_times():
    from tbench.harness.timing import LONG_CALL_S, make_timer

    x = torch.zeros(1024, device="cuda")
    calls = []

    def call():
        calls.append(1)
        x.add_(1)

    timer = make_timer("events", "cuda")
    for call_s, probes in ((None, 5), (LONG_CALL_S / 10, 5), (LONG_CALL_S, 1), (3.0, 1)):
        calls.clear()
        timer.prepare(call, call_s=call_s)
        assert len(calls) == probes, (call_s, len(calls))


def test_swinging_clocks_need_more_bursts_than_independent_samples_suggest():
    # Each 10-sample burst runs at one clock, drawn anew per burst (+-4 %); samples within a burst
    # vary by 0.2 %. Per sample the median looks precise after 10 samples; the burst medians do not.
    rng = np.random.default_rng(3)
    policy = TimingPolicy(target_rse=0.005, min_samples=10, min_time_s=0.0, budget_s=1000.0, max_samples=100000)
    sampling = Sampling(policy, [])
    bursts = 0
    while not sampling.done:
        sampling.start_burst()
        bursts += 1
        level = 1.0 + 0.04 * rng.standard_normal()
        for _ in range(10):
            sampling.add(level * (1 + 0.002 * rng.standard_normal()), 0.001)
            if sampling.done:
                break
    assert sampling.stop_reason == "target precision"
    assert bursts >= 30  # (4 % / 0.5 %)^2 = 64 expected; one burst would have satisfied the per-sample rule
    assert sampling.burst_rse() <= 0.005
    unbursted = Sampling(policy, [])
    for _ in range(50):
        unbursted.add(1.0 + 0.002 * rng.standard_normal(), 0.001)
    assert unbursted.done  # without burst marks, only the per-sample rule applies


def test_each_row_says_where_its_time_went():
    from tbench.core.case import Case
    from tbench.harness.measure import MeasureSettings, measure_group
    from tbench.methods.catalog import load_registry

    registry = load_registry(plugins=False)
    cases = [Case(name, registry.get(name).family, 256, 1, 2, 1, 16, "fp32", True, "cpu",
                  **({"order": 2, "dims": (16, 16)} if name == "tensorized-ref" else {}), timing="cpu")
             for name in ("sdpa-math", "tensorized-ref")]
    records = []
    start = time.perf_counter()
    measure_group(cases, registry, MeasureSettings(policy=TimingPolicy.quick()), records.append)
    wall = time.perf_counter() - start
    assert [r.status for r in records] == ["ok", "ok"]
    for rec in records:
        phases = rec.device_state["phases_s"]
        assert {"warm-up", "check", "memory", "timing", "sampling"} <= set(phases)
        assert all(s >= 0 for s in phases.values())
    assert sum(sum(r.device_state["phases_s"].values()) for r in records) <= wall
