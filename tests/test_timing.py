"""Adaptive sampling on synthetic timers (no real kernels: the stopping rule itself)."""

import numpy as np

from tbench.harness.measure import cost_tiers
from tbench.harness.timing import Sampling, TimingPolicy, cool_down, median_rse, summarize


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
