"""The gate's rule on synthetic samples: false-positive and detection rates, floors, and failures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tbench.analysis.gate import (
    ConfigResult,
    GateError,
    GateReport,
    GateSettings,
    Side,
    block_medians,
    classify_ratio,
    compare_samples,
    gate,
    holm,
)

TRIALS = 1000
N = 30
NOISE = 0.03
BASE_MS = 1.0  # 3% noise on 1 ms is 30 us, above the 20 us floor: the floor does not help here


def _trials(kind: str, slowdown: float, settings: GateSettings, seed: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    if kind == "lognormal":
        base = BASE_MS * rng.lognormal(0.0, NOISE, (TRIALS, N))
        cand = BASE_MS * slowdown * rng.lognormal(0.0, NOISE, (TRIALS, N))
    else:
        base = BASE_MS * rng.normal(1.0, NOISE, (TRIALS, N))
        cand = BASE_MS * slowdown * rng.normal(1.0, NOISE, (TRIALS, N))
    med_b, med_c = np.median(base, axis=1), np.median(cand, axis=1)
    counts: dict[str, int] = {}
    for i in range(TRIALS):
        verdict = compare_samples(float(med_b[i]), float(med_c[i]), base[i], cand[i], settings).verdict
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


@pytest.mark.parametrize("kind", ["lognormal", "normal"])
def test_aa_trials_rarely_say_slower(kind):
    counts = _trials(kind, 1.0, GateSettings(), seed=1)
    assert counts.get("SLOWER", 0) <= TRIALS * 0.01, counts


def test_aa_trials_statistics_alone_hold_the_false_positive_rate():
    # With the threshold and the floor out of the way, only the block-median test
    # stands between noise and a SLOWER verdict: they alone must keep false alarms near alpha.
    settings = GateSettings(threshold=1e-6, min_delta_us=0.0)
    counts = _trials("lognormal", 1.0, settings, seed=2)
    assert counts.get("SLOWER", 0) <= TRIALS * 0.01, counts
    assert counts.get("SLOWER", 0) + counts.get("FASTER", 0) + counts.get("UNSURE", 0) > 0.5 * TRIALS, counts


@pytest.mark.parametrize("kind", ["lognormal", "normal"])
def test_true_ten_percent_slowdown_is_flagged(kind):
    counts = _trials(kind, 1.10, GateSettings(), seed=3)
    assert counts.get("SLOWER", 0) >= TRIALS * 0.95, counts


def test_ten_percent_speedup_is_faster():
    counts = _trials("lognormal", 0.90, GateSettings(), seed=4)
    assert counts.get("FASTER", 0) >= TRIALS * 0.95, counts


def _samples(median: float, n: int = N, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    return median * np.random.default_rng(seed).lognormal(0.0, noise, n)


def test_threshold_floor():
    base, cand = _samples(1.0), _samples(1.04, seed=1)  # clearly different, but only 4% slower
    ev = compare_samples(float(np.median(base)), float(np.median(cand)), base, cand)
    assert ev.verdict == "SAME" and "within" in ev.reason
    # Within one run 4% is clear; across two runs it is within what a run's level drifts (2% each).
    loose = GateSettings(threshold=0.02)
    drifting = compare_samples(float(np.median(base)), float(np.median(cand)), base, cand, loose)
    assert drifting.verdict == "UNSURE" and "not significant" in drifting.reason
    still = GateSettings(threshold=0.02, run_noise=0.0)
    loose = compare_samples(float(np.median(base)), float(np.median(cand)), base, cand, still)
    assert loose.verdict == "SLOWER" and loose.p_value < 0.01 and loose.ci_low > 1


def test_min_delta_floor_keeps_tiny_kernels_from_flapping():
    base, cand = _samples(0.1), _samples(0.115, seed=1)  # 15% slower, but only 15 us
    ev = compare_samples(float(np.median(base)), float(np.median(cand)), base, cand)
    assert ev.verdict == "SAME" and "20 us" in ev.reason
    no_floor = GateSettings(min_delta_us=0.0)
    assert compare_samples(float(np.median(base)), float(np.median(cand)), base, cand, no_floor).verdict == "SLOWER"


def test_without_evidence_the_verdict_is_unsure():
    few = compare_samples(1.0, 1.2, [1.0, 1.01, 0.99], [1.2, 1.21, 1.19])
    assert few.verdict == "UNSURE" and "too few samples" in few.reason
    missing = compare_samples(1.0, 1.2, None, None)
    assert missing.verdict == "UNSURE"
    rng = np.random.default_rng(5)  # 10% apart in the medians, but 50% noise: not significant
    base, cand = rng.lognormal(0, 0.5, 8), rng.lognormal(0, 0.5, 8)
    noisy = compare_samples(1.0, 1.1, base, cand)
    assert noisy.verdict == "UNSURE" and "not significant" in noisy.reason


def test_classify_ratio_is_the_same_rule():
    base, slow = _samples(1.0), _samples(1.2, seed=1)
    assert classify_ratio(1.0) == "SAME"
    assert classify_ratio(1.049) == "SAME" and classify_ratio(0.951) == "SAME"
    assert classify_ratio(1.2, base, slow) == "SLOWER"
    assert classify_ratio(1 / 1.2, slow, base) == "FASTER"
    assert classify_ratio(1.2) == "UNSURE"  # a ratio alone is no evidence
    assert classify_ratio(1.2, base, slow, threshold=0.3) == "SAME"
    # the floor applies from the baseline's samples: 0.1 ms, 20% slower is 20 us... just at the floor
    assert classify_ratio(1.15, _samples(0.1), _samples(0.115, seed=1)) == "SAME"
    assert classify_ratio(1.15, _samples(0.1), _samples(0.115, seed=1), min_delta_us=0) == "SLOWER"
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            classify_ratio(bad)


# --- whole runs ------------------------------------------------------------------------------------


def _ok(key: str, median: float, seed: int = 0, method: str = "m") -> ConfigResult:
    s = _samples(median, seed=seed)
    return ConfigResult(key, "ok", float(np.median(s)), tuple(s), method=method, seq_len=4096)


def _side(results: list[ConfigResult], gpu: str | None = "NVIDIA H100 80GB HBM3", label: str = "x") -> Side:
    return Side.of(label, gpu, results)


def test_gate_passes_unchanged_and_fails_slower():
    base = _side([_ok("a", 1.0), _ok("b", 2.0, 1)], label="base")
    same = gate(base, _side([_ok("a", 1.0, 2), _ok("b", 2.0, 3)]))
    assert same.passed and same.counts() == {"SAME": 2}
    slower = gate(base, _side([_ok("a", 1.0, 2), _ok("b", 2.4, 3)]))
    assert not slower.passed and [v.key for v in slower.failures] == ["b"]
    faster = gate(base, _side([_ok("a", 0.5, 2), _ok("b", 2.0, 3)]))
    assert faster.passed and faster.counts() == {"FASTER": 1, "SAME": 1}


def test_missing_and_newly_failing_configurations_fail_unless_allowed():
    base = _side([_ok("a", 1.0), _ok("b", 1.0, 1), _ok("c", 1.0, 2)])
    cand = _side([_ok("a", 1.0, 3), ConfigResult("b", "oom", message="CUDA out of memory")])
    report = gate(base, cand)
    assert {v.key: v.verdict for v in report.verdicts} == {"a": "SAME", "b": "FAIL", "c": "FAIL"}
    reasons = {v.key: v.reason for v in report.verdicts}
    assert "now oom" in reasons["b"] and "missing" in reasons["c"]
    allowed = gate(base, cand, GateSettings(allow_missing=True))
    assert allowed.passed and allowed.counts() == {"SAME": 1, "SKIP": 2}
    for status in ("error", "timeout"):
        assert not gate(base, _side([_ok("a", 1.0), _ok("b", 1.0), ConfigResult("c", status)])).passed


def test_wrong_always_fails_even_when_missing_is_allowed():
    base = _side([_ok("a", 1.0), _ok("b", 1.0, 1)])
    cand = _side([_ok("a", 1.0, 2), ConfigResult("b", "wrong", message="max error 0.3")])
    for settings in (GateSettings(), GateSettings(allow_missing=True)):
        report = gate(base, cand, settings)
        assert not report.passed and report.failures[0].key == "b" and "wrong" in report.failures[0].reason


def test_baseline_failures_and_new_configurations_are_not_compared():
    base = _side([_ok("a", 1.0), ConfigResult("b", "oom")])
    report = gate(base, _side([_ok("a", 1.0, 1), _ok("b", 5.0), _ok("new", 1.0)]))
    assert report.passed and {v.key: v.verdict for v in report.verdicts} == {"a": "SAME", "b": "SKIP", "new": "SKIP"}


def test_cross_device_is_refused_unless_allowed():
    base = _side([_ok("a", 1.0)], gpu="NVIDIA H100 80GB HBM3")
    cand = _side([_ok("a", 1.0, 1)], gpu="NVIDIA A100-SXM4-80GB")
    with pytest.raises(GateError, match=r"H100.*A100.*--allow-cross-device"):
        gate(base, cand)
    with pytest.raises(GateError, match="CPU"):
        gate(base, _side([_ok("a", 1.0, 1)], gpu=None))
    assert gate(base, cand, GateSettings(allow_cross_device=True)).passed


def test_run_noise_defaults_to_the_device_class_and_an_explicit_value_wins():
    # a 9 % shift of tight samples: beyond what 2 % per run allows, within what 5 % allows
    base = [_ok("a", 1.0)]
    cand = [_ok("a", 1.09, 1)]
    gpu = gate(_side(base), _side(cand))
    assert gpu.settings.run_noise == 0.02 and gpu.counts() == {"SLOWER": 1}
    cpu = gate(_side(base, gpu=None), _side(cand, gpu=None))
    assert cpu.settings.run_noise == 0.05 and cpu.counts() == {"UNSURE": 1}
    told = gate(_side(base, gpu=None), _side(cand, gpu=None), GateSettings(run_noise=0.02))
    assert told.settings.run_noise == 0.02 and told.counts() == {"SLOWER": 1}


def test_nothing_compared_is_an_error_not_a_pass():
    base = _side([_ok("a", 1.0)])
    with pytest.raises(GateError, match="nothing was compared"):
        gate(base, _side([]), GateSettings(allow_missing=True))
    with pytest.raises(GateError, match="no measurements"):
        gate(_side([]), base)


@pytest.mark.parametrize("kwargs", [{"threshold": 0}, {"threshold": 1.5}, {"alpha": 0.7}, {"min_delta_us": -1},
                                    {"min_delta_us": float("nan")}, {"run_noise": -0.01}, {"run_noise": 1.5},
                                    {"run_noise": float("inf")}, {"blocks": 1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(GateError):
        GateSettings(**kwargs)


# --- run-level drift ---------------------------------------------------------------------------------
# Each run's level shifts at random (a common part for the whole run and a part per configuration,
# about 2% together) and, within a run, the samples follow an AR(1) process (a clock that wanders
# over many samples), as on a GPU at its power cap or a shared CPU. Samples come in bursts of 5.

DRIFT_TRIALS, CONFIGS, SAMPLES, BURST = 300, 20, 60, 5
RUN_SHIFT, CONFIG_SHIFT, AR_PHI, AR_SD = 0.015, 0.01, 0.9, 0.01


def _drifting_run(rng: np.random.Generator, slowdown: np.ndarray) -> list[ConfigResult]:
    run_shift = rng.normal(0.0, RUN_SHIFT)
    results = []
    for c in range(CONFIGS):
        level = run_shift + rng.normal(0.0, CONFIG_SHIFT)
        ar = np.empty(SAMPLES)
        ar[0] = rng.normal(0.0, AR_SD)
        innovations = rng.normal(0.0, AR_SD * math.sqrt(1 - AR_PHI**2), SAMPLES)
        for i in range(1, SAMPLES):
            ar[i] = AR_PHI * ar[i - 1] + innovations[i]
        samples = 1.0 * slowdown[c] * np.exp(level + ar + rng.normal(0.0, 0.003, SAMPLES))
        results.append(ConfigResult(f"c{c}", "ok", float(np.median(samples)), tuple(samples), method="m",
                                    seq_len=4096, burst_starts=tuple(range(0, SAMPLES, BURST))))
    return results


def _drift_gates(slowdown: np.ndarray, seed: int, settings: GateSettings | None = None) -> list[GateReport]:
    rng = np.random.default_rng(seed)
    return [gate(_side(_drifting_run(rng, np.ones(CONFIGS)), label="base"), _side(_drifting_run(rng, slowdown)),
                 settings) for _ in range(DRIFT_TRIALS)]


def test_aa_with_run_level_drift_rarely_fails_the_gate():
    reports = _drift_gates(np.ones(CONFIGS), seed=11)
    failed = sum(not r.passed for r in reports)
    assert failed <= 0.01 * DRIFT_TRIALS, failed
    # the drift is real: a per-sample test that ignores it (no run noise, one sample per block)
    # fails many of the same A/A gates
    naive = GateSettings(run_noise=0.0, blocks=SAMPLES)
    naive_failed = sum(not r.passed for r in _drift_gates(np.ones(CONFIGS), seed=11, settings=naive))
    assert naive_failed >= 0.1 * DRIFT_TRIALS, naive_failed


def test_fifteen_percent_slowdown_is_detected_under_drift():
    one = np.ones(CONFIGS)
    one[3] = 1.15
    reports = _drift_gates(one, seed=12)
    caught = sum([v.key for v in r.failures] == ["c3"] for r in reports)
    assert caught >= 0.9 * DRIFT_TRIALS, caught
    everywhere = _drift_gates(np.full(CONFIGS, 1.15), seed=13)
    assert sum(not r.passed for r in everywhere) >= 0.9 * DRIFT_TRIALS


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([]) == []


def test_block_medians_follow_bursts():
    samples = np.array([1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 9.0, 9.0])
    assert list(block_medians(samples, (3, 6), blocks=3)) == [1.0, 5.0, 9.0]
    assert list(block_medians(samples, (), blocks=4)) == [1.0, 3.0, 5.0, 9.0]  # equal blocks without marks
    assert block_medians(samples, (), blocks=10).size == 4  # at least 2 samples per block


def test_unchecked_candidate_fails_unless_allowed():
    base = _side([_ok("a", 1.0), _ok("b", 1.0, 1)])
    unchecked = ConfigResult("b", "unchecked", 1.0, tuple(_samples(1.0, seed=5)), method="m", seq_len=4096)
    cand = _side([_ok("a", 1.0, 2), unchecked])
    report = gate(base, cand)
    assert not report.passed and report.failures[0].key == "b" and "unchecked" in report.failures[0].reason
    allowed = gate(base, cand, GateSettings(allow_unchecked=True))
    assert allowed.passed and allowed.counts() == {"SAME": 2}
