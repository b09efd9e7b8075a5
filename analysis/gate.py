"""The regression gate: per configuration FASTER / SAME / SLOWER / UNSURE / FAIL, and pass or fail.

Pure logic on plain records, no store and no printing, so the CLI, the dashboard and the tests share
one rule. A change must clear three bars before it counts:

1. the median moved by more than `threshold` (relative): smaller moves are run-to-run drift on a
   real GPU, which no within-run statistic can see;
2. it moved by more than `min_delta_us` (absolute): a 3 us kernel that takes 4 us is launch jitter;
3. the stored samples show it: a one-sided Mann-Whitney U test at `alpha` AND a bootstrap
   confidence interval of the median ratio that excludes 1. Without that evidence (noisy or too
   few samples) the verdict is UNSURE, which is reported but does not fail the gate.

Correctness and disappearance are not statistical: a `wrong` candidate always fails, and a
configuration that was ok in the baseline but is missing or fails now (oom, error, timeout, ...)
fails unless `allow_missing`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.stats import mannwhitneyu

Verdict = Literal["FASTER", "SAME", "SLOWER", "UNSURE", "FAIL", "SKIP"]
FAILING: frozenset[str] = frozenset({"SLOWER", "FAIL"})

THRESHOLD = 0.05
ALPHA = 0.01
MIN_DELTA_US = 20.0
MIN_SAMPLES = 5  # with 5 vs 5 the smallest one-sided U-test p-value is 1/252 < 0.01
BOOTSTRAP = 1000
_SEED = 20240601  # fixed: the same inputs always give the same verdict


class GateError(Exception):
    """Comparing these two inputs makes no sense (other GPU, nothing in common); one line for the user."""


@dataclass(frozen=True)
class GateSettings:
    threshold: float = THRESHOLD
    alpha: float = ALPHA
    min_delta_us: float = MIN_DELTA_US
    min_samples: int = MIN_SAMPLES
    bootstrap: int = BOOTSTRAP
    allow_cross_device: bool = False
    allow_missing: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise GateError(f"threshold {self.threshold} must be between 0 and 1 (0.05 means 5%)")
        if not 0 < self.alpha < 0.5:
            raise GateError(f"alpha {self.alpha} must be between 0 and 0.5")
        if not (math.isfinite(self.min_delta_us) and self.min_delta_us >= 0):
            raise GateError(f"min-delta-us {self.min_delta_us} must be a number >= 0")
        if self.min_samples < 2 or self.bootstrap < 100:
            raise GateError("min-samples must be at least 2 and bootstrap at least 100")


@dataclass(frozen=True)
class Evidence:
    """The statistical comparison of one configuration (both sides ok)."""

    verdict: Verdict
    ratio: float  # candidate median / baseline median
    delta_us: float  # candidate median - baseline median
    p_value: float | None = None  # one-sided, in the direction of the change
    ci_low: float | None = None  # bootstrap interval of the ratio, 1 - 2*alpha coverage
    ci_high: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class ConfigResult:
    """One configuration of one side: its key, status and timings (milliseconds)."""

    key: str
    status: str
    median_ms: float | None = None
    samples_ms: tuple[float, ...] = ()
    method: str = ""
    seq_len: int = 0
    message: str = ""


@dataclass(frozen=True)
class Side:
    """A baseline or a candidate: where it came from, its GPU (None: CPU) and its configurations."""

    label: str
    gpu_name: str | None
    results: dict[str, ConfigResult]
    provenance: dict = field(default_factory=dict)

    @classmethod
    def of(cls, label: str, gpu_name: str | None, results: Iterable[ConfigResult],
           provenance: dict | None = None) -> Side:
        return cls(label, gpu_name, {r.key: r for r in results}, provenance or {})


@dataclass(frozen=True)
class ConfigVerdict:
    key: str
    verdict: Verdict
    reason: str
    method: str
    seq_len: int
    baseline_status: str | None
    candidate_status: str | None
    baseline_ms: float | None = None
    candidate_ms: float | None = None
    ratio: float | None = None
    delta_us: float | None = None
    p_value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class GateReport:
    baseline: Side
    candidate: Side
    settings: GateSettings
    verdicts: list[ConfigVerdict]

    @property
    def failures(self) -> list[ConfigVerdict]:
        return [v for v in self.verdicts if v.verdict in FAILING]

    @property
    def passed(self) -> bool:
        return not self.failures

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for v in self.verdicts:
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
        return counts


def _median_ratio_ci(base: np.ndarray, cand: np.ndarray, alpha: float, n_boot: int) -> tuple[float, float]:
    """Percentile bootstrap of median(cand) / median(base), resampling each side on its own."""
    rng = np.random.default_rng(_SEED)
    med_b = np.median(base[rng.integers(0, base.size, (n_boot, base.size))], axis=1)
    med_c = np.median(cand[rng.integers(0, cand.size, (n_boot, cand.size))], axis=1)
    ratios = med_c / med_b
    low, high = np.quantile(ratios, [alpha, 1 - alpha])
    return float(low), float(high)


def compare_samples(base_median_ms: float, cand_median_ms: float, base_samples: Sequence[float] | None,
                    cand_samples: Sequence[float] | None, settings: GateSettings | None = None) -> Evidence:
    """The SAME / FASTER / SLOWER / UNSURE rule for one configuration that is ok on both sides."""
    settings = settings or GateSettings()
    if not (math.isfinite(base_median_ms) and math.isfinite(cand_median_ms)
            and base_median_ms > 0 and cand_median_ms > 0):
        raise ValueError(f"medians {base_median_ms}, {cand_median_ms} must be positive finite numbers")
    ratio = cand_median_ms / base_median_ms
    delta_us = (cand_median_ms - base_median_ms) * 1e3
    t = settings.threshold
    if 1 - t <= ratio <= 1 + t:
        return Evidence("SAME", ratio, delta_us, reason=f"within ±{t:.0%}")
    if abs(delta_us) < settings.min_delta_us:
        return Evidence("SAME", ratio, delta_us, reason=f"|Δ| < {settings.min_delta_us:g} us")
    direction: Verdict = "SLOWER" if ratio > 1 else "FASTER"
    base = np.asarray(base_samples if base_samples is not None else (), dtype=float)
    cand = np.asarray(cand_samples if cand_samples is not None else (), dtype=float)
    base, cand = base[np.isfinite(base) & (base > 0)], cand[np.isfinite(cand) & (cand > 0)]
    if min(base.size, cand.size) < settings.min_samples:
        return Evidence("UNSURE", ratio, delta_us,
                        reason=f"{direction.lower()} but too few samples ({base.size} vs {cand.size}, "
                               f"need {settings.min_samples})")
    # `less`: the baseline's times are stochastically smaller, i.e. the candidate is slower.
    alternative = "less" if direction == "SLOWER" else "greater"
    p_value = float(mannwhitneyu(base, cand, alternative=alternative).pvalue)
    ci_low, ci_high = _median_ratio_ci(base, cand, settings.alpha, settings.bootstrap)
    ci_clear = ci_low > 1 if direction == "SLOWER" else ci_high < 1
    if p_value < settings.alpha and ci_clear:
        return Evidence(direction, ratio, delta_us, p_value, ci_low, ci_high, reason="significant")
    why = f"p={p_value:.2g}" if not p_value < settings.alpha else "bootstrap interval includes 1"
    return Evidence("UNSURE", ratio, delta_us, p_value, ci_low, ci_high,
                    reason=f"{direction.lower()} but not significant ({why})")


def classify_ratio(ratio: float, samples_before: Sequence[float] | None = None,
                   samples_after: Sequence[float] | None = None, *, threshold: float = THRESHOLD,
                   alpha: float = ALPHA, min_delta_us: float = MIN_DELTA_US,
                   median_before_ms: float | None = None) -> Verdict:
    """The gate's rule for callers holding a ratio (median after / median before) and maybe samples.

    The absolute floor needs the baseline's median: `median_before_ms`, else the median of
    `samples_before`; with neither, only the relative threshold applies. Beyond the threshold,
    missing or too few samples give UNSURE, never SLOWER or FASTER."""
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"ratio {ratio} must be a positive finite number")
    settings = GateSettings(threshold=threshold, alpha=alpha, min_delta_us=min_delta_us)
    if median_before_ms is None:
        if samples_before is not None and len(samples_before):
            median_before_ms = float(np.median(np.asarray(samples_before, dtype=float)))
        else:
            # No absolute scale known: the floor cannot apply, so make it vanish.
            settings = GateSettings(threshold=threshold, alpha=alpha, min_delta_us=0.0)
            median_before_ms = 1.0
    return compare_samples(median_before_ms, median_before_ms * ratio, samples_before, samples_after,
                           settings).verdict


# Statuses that mean "this configuration does not run (properly) any more".
_BROKEN = ("oom", "error", "timeout", "unsupported", "skipped")


def _verdict_for(key: str, base: ConfigResult | None, cand: ConfigResult | None,
                 settings: GateSettings) -> ConfigVerdict:
    ref = cand or base
    assert ref is not None
    common = dict(key=key, method=ref.method, seq_len=ref.seq_len,
                  baseline_status=base.status if base else None, candidate_status=cand.status if cand else None,
                  baseline_ms=base.median_ms if base else None, candidate_ms=cand.median_ms if cand else None)
    if cand is not None and cand.status == "wrong":
        # A wrong result is never acceptable, not even with --allow-missing.
        detail = f": {cand.message}" if cand.message else ""
        return ConfigVerdict(verdict="FAIL", reason=f"candidate is wrong{detail}", **common)
    if base is None:
        return ConfigVerdict(verdict="SKIP", reason="new in the candidate", **common)
    if base.status != "ok":
        status_after = cand.status if cand else "missing"
        return ConfigVerdict(verdict="SKIP", reason=f"baseline was {base.status}, candidate {status_after}", **common)
    if cand is None or cand.status != "ok":
        what = "missing from the candidate" if cand is None else f"now {cand.status}"
        if cand is not None and cand.message:
            what += f": {cand.message}"
        if settings.allow_missing:
            return ConfigVerdict(verdict="SKIP", reason=f"{what} (allowed)", **common)
        return ConfigVerdict(verdict="FAIL", reason=what, **common)
    base_ms = base.median_ms if base.median_ms is not None else _median(base.samples_ms)
    cand_ms = cand.median_ms if cand.median_ms is not None else _median(cand.samples_ms)
    if base_ms is None or cand_ms is None or base_ms <= 0 or cand_ms <= 0:
        return ConfigVerdict(verdict="UNSURE", reason="ok but without a timing", **common)
    ev = compare_samples(base_ms, cand_ms, base.samples_ms, cand.samples_ms, settings)
    return ConfigVerdict(verdict=ev.verdict, reason=ev.reason, ratio=ev.ratio, delta_us=ev.delta_us,
                         p_value=ev.p_value, ci_low=ev.ci_low, ci_high=ev.ci_high,
                         **{**common, "baseline_ms": base_ms, "candidate_ms": cand_ms})


def _median(samples: Sequence[float]) -> float | None:
    return float(np.median(np.asarray(samples, dtype=float))) if len(samples) else None


def device_label(gpu_name: str | None) -> str:
    return gpu_name or "CPU"


def gate(baseline: Side, candidate: Side, settings: GateSettings | None = None) -> GateReport:
    """Compares every configuration of the baseline (and notes those new in the candidate)."""
    settings = settings or GateSettings()
    if baseline.gpu_name != candidate.gpu_name and not settings.allow_cross_device:
        raise GateError(f"baseline ran on {device_label(baseline.gpu_name)} but the candidate on "
                        f"{device_label(candidate.gpu_name)}; timings of different devices are not comparable "
                        "(use --allow-cross-device to compare anyway)")
    if not baseline.results:
        raise GateError(f"baseline {baseline.label} has no measurements; nothing to gate against")
    keys = list(baseline.results) + [k for k in candidate.results if k not in baseline.results]
    verdicts = [_verdict_for(k, baseline.results.get(k), candidate.results.get(k), settings) for k in keys]
    if all(v.verdict == "SKIP" for v in verdicts):
        # Passing because nothing was compared would let a broken CI job go green.
        raise GateError(f"no configuration of baseline {baseline.label} is ok in both it and candidate "
                        f"{candidate.label}; nothing was compared")
    verdicts.sort(key=lambda v: (v.method, v.seq_len, v.key))
    return GateReport(baseline, candidate, settings, verdicts)
