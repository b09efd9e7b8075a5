"""The regression gate: per configuration FASTER / SAME / SLOWER / UNSURE / FAIL, and pass or fail.

Pure logic on plain records, no store and no printing, so the CLI, the dashboard and the tests share
one rule (docs/gate.md has its mathematics). A change must clear three bars before it counts:

1. the median moved by more than `threshold` (relative);
2. it moved by more than `min_delta_us` (absolute): a 3 us kernel that takes 4 us is launch jitter;
3. the change is significant against noise at two levels. Within a run, samples are not
   independent (a clock that drifts over seconds moves a whole burst of samples together), so a run
   is cut into at most `blocks` contiguous blocks of whole bursts and only the spread of the block
   medians counts. Between runs, the whole run shifts (the chip, its temperature, the host), which
   no statistic inside one run can see: each side adds `run_noise` (a relative standard deviation
   per run) to the variance. The one-sided p-values of all configurations compared in one gate are
   adjusted together (Holm), so twenty configurations do not get twenty chances to fail by luck.
   Without that evidence (noisy or too few samples) the verdict is UNSURE: reported, never failing.

Correctness and disappearance are not statistical: a `wrong` candidate always fails, a configuration
that was ok in the baseline but is missing or fails now (oom, error, timeout, ...) fails unless
`allow_missing`, and a candidate timed without the correctness gate (`unchecked`) fails unless
`allow_unchecked`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.stats import t as student_t

from ..core.case import TIMED_STATUSES

Verdict = Literal["FASTER", "SAME", "SLOWER", "UNSURE", "FAIL", "SKIP"]
FAILING: frozenset[str] = frozenset({"SLOWER", "FAIL"})

THRESHOLD = 0.05
ALPHA = 0.01
MIN_DELTA_US = 20.0
MIN_SAMPLES = 5
# Relative standard deviation of a whole run's level; see docs/gate.md for where 2 % (a GPU) and
# 5 % (a CPU, whose runs share cores and caches with the host) come from.
RUN_NOISE = 0.02
CPU_RUN_NOISE = 0.05
BLOCKS = 10  # at most this many blocks per side; fewer samples, fewer blocks (at least 2 samples each)

# Statuses whose timing the gate compares; `unchecked` only with allow_unchecked.


class GateError(Exception):
    """Comparing these two inputs makes no sense (other GPU, nothing in common); one line for the user."""


@dataclass(frozen=True)
class GateSettings:
    threshold: float = THRESHOLD
    alpha: float = ALPHA
    min_delta_us: float = MIN_DELTA_US
    min_samples: int = MIN_SAMPLES
    run_noise: float | None = None  # None: RUN_NOISE on GPUs, CPU_RUN_NOISE when a side ran on a CPU
    blocks: int = BLOCKS
    allow_cross_device: bool = False
    allow_missing: bool = False
    allow_unchecked: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise GateError(f"threshold {self.threshold} must be between 0 and 1 (0.05 means 5%)")
        if not 0 < self.alpha < 0.5:
            raise GateError(f"alpha {self.alpha} must be between 0 and 0.5")
        if not (math.isfinite(self.min_delta_us) and self.min_delta_us >= 0):
            raise GateError(f"min-delta-us {self.min_delta_us} must be a number >= 0")
        if self.run_noise is not None and not (math.isfinite(self.run_noise) and 0 <= self.run_noise < 1):
            raise GateError(f"run-noise {self.run_noise} must be between 0 and 1 (0.02 means 2% per run)")
        if self.min_samples < 4 or self.blocks < 2:
            raise GateError("min-samples must be at least 4 and blocks at least 2")


@dataclass(frozen=True)
class Evidence:
    """The statistical comparison of one configuration (both sides ok)."""

    verdict: Verdict
    ratio: float  # candidate median / baseline median
    delta_us: float  # candidate median - baseline median
    p_value: float | None = None  # one-sided, in the direction of the change (Holm-adjusted in a gate)
    ci_low: float | None = None  # interval of the ratio, 1 - 2*alpha coverage, run noise included
    ci_high: float | None = None
    reason: str = ""
    direction: Verdict | None = None  # the way the medians moved, once beyond both floors


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
    burst_starts: tuple[int, ...] = ()  # index of each burst's first sample, in sampling order


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


def block_medians(samples: np.ndarray, burst_starts: Sequence[int] = (), blocks: int = BLOCKS) -> np.ndarray:
    """Medians of at most `blocks` contiguous blocks of the samples (in sampling order), each at
    least 2 samples. With burst marks, a block is made of whole bursts (as equal in count as they
    allow), so samples that shared one moment's clock never straddle two blocks."""
    n = samples.size
    k = max(1, min(blocks, n // 2))
    starts = sorted({int(b) for b in burst_starts if 0 < int(b) < n})
    if len(starts) + 1 >= k:
        bursts = [0, *starts]
        cut = [bursts[round(i * len(bursts) / k)] for i in range(k)]
    else:
        cut = [round(i * n / k) for i in range(k)]
    edges = [*cut, n]
    return np.array([np.median(samples[a:b]) for a, b in itertools.pairwise(edges) if b > a])


def _log_level(samples: np.ndarray, burst_starts: Sequence[int], blocks: int) -> tuple[float, float, float]:
    """(mean log block median, its variance, its degrees of freedom)."""
    logs = np.log(block_medians(samples, burst_starts, blocks))
    k = logs.size
    var = float(np.var(logs, ddof=1)) / k if k > 1 else math.inf
    return float(logs.mean()), var, k - 1


def compare_samples(base_median_ms: float, cand_median_ms: float, base_samples: Sequence[float] | None,
                    cand_samples: Sequence[float] | None, settings: GateSettings | None = None,
                    base_bursts: Sequence[int] = (), cand_bursts: Sequence[int] = ()) -> Evidence:
    """The SAME / FASTER / SLOWER / UNSURE rule for one configuration that is timed on both sides,
    alone (a gate adjusts the p-values of its configurations together, see `gate`)."""
    settings = settings or GateSettings()
    if not (math.isfinite(base_median_ms) and math.isfinite(cand_median_ms)
            and base_median_ms > 0 and cand_median_ms > 0):
        raise ValueError(f"medians {base_median_ms}, {cand_median_ms} must be positive finite numbers")
    ratio = cand_median_ms / base_median_ms
    delta_us = (cand_median_ms - base_median_ms) * 1e3
    t = settings.threshold
    beyond = not (1 - t <= ratio <= 1 + t) and abs(delta_us) >= settings.min_delta_us
    direction: Verdict = "SLOWER" if ratio > 1 else "FASTER"
    base = np.asarray(base_samples if base_samples is not None else (), dtype=float)
    cand = np.asarray(cand_samples if cand_samples is not None else (), dtype=float)
    keep_b, keep_c = np.isfinite(base) & (base > 0), np.isfinite(cand) & (cand > 0)
    if not keep_b.all() or not keep_c.all():  # a dropped sample would shift the burst marks
        base_bursts, cand_bursts = (), ()
    base, cand = base[keep_b], cand[keep_c]
    if min(base.size, cand.size) < settings.min_samples:
        if not beyond:
            return Evidence("SAME", ratio, delta_us, reason=_same_reason(ratio, delta_us, settings))
        return Evidence("UNSURE", ratio, delta_us, direction=direction,
                        reason=f"{direction.lower()} but too few samples ({base.size} vs {cand.size}, "
                               f"need {settings.min_samples})")
    level_b, var_b, df_b = _log_level(base, base_bursts, settings.blocks)
    level_c, var_c, df_c = _log_level(cand, cand_bursts, settings.blocks)
    run_var = 2 * (RUN_NOISE if settings.run_noise is None else settings.run_noise) ** 2
    total = var_b + var_c + run_var
    # Welch-Satterthwaite; the run noise is a known allowance (infinite degrees of freedom)
    df = total**2 / (var_b**2 / df_b + var_c**2 / df_c) if var_b + var_c > 0 else math.inf
    se = math.sqrt(total)
    # the test uses the block medians' own estimate of the change, the estimate its error belongs to
    d = level_c - level_b
    sign = 1.0 if ratio > 1 else -1.0
    dist = student_t(df) if math.isfinite(df) else student_t(1e9)
    p_value = float(dist.sf(sign * d / se)) if se > 0 else (0.0 if sign * d > 0 else 1.0)
    half = float(dist.isf(settings.alpha)) * se
    ci_low, ci_high = math.exp(d - half), math.exp(d + half)
    if not beyond:
        return Evidence("SAME", ratio, delta_us, p_value, ci_low, ci_high,
                        reason=_same_reason(ratio, delta_us, settings))
    return _decide(Evidence(direction, ratio, delta_us, p_value, ci_low, ci_high, direction=direction),
                   p_value, settings.alpha)


def _same_reason(ratio: float, delta_us: float, settings: GateSettings) -> str:
    if 1 - settings.threshold <= ratio <= 1 + settings.threshold:
        return f"within ±{settings.threshold:.0%}"
    return f"|Δ| < {settings.min_delta_us:g} us"


def _decide(ev: Evidence, p_adjusted: float, alpha: float, family: int = 1) -> Evidence:
    """The verdict of a configuration beyond both floors, given its (adjusted) p-value."""
    assert ev.direction is not None
    if p_adjusted < alpha:
        return dataclasses.replace(ev, verdict=ev.direction, p_value=p_adjusted, reason="significant")
    what = f"p={p_adjusted:.2g}" + (f", Holm-adjusted over {family}" if family > 1 else "")
    return dataclasses.replace(ev, verdict="UNSURE", p_value=p_adjusted,
                               reason=f"{ev.direction.lower()} but not significant ({what})")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at most alpha under any dependence)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


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


def _verdict_for(key: str, base: ConfigResult | None, cand: ConfigResult | None,
                 settings: GateSettings) -> tuple[ConfigVerdict, Evidence | None]:
    """The verdict of one configuration, and its evidence when it was compared statistically."""
    ref = cand or base
    assert ref is not None
    common = dict(key=key, method=ref.method, seq_len=ref.seq_len,
                  baseline_status=base.status if base else None, candidate_status=cand.status if cand else None,
                  baseline_ms=base.median_ms if base else None, candidate_ms=cand.median_ms if cand else None)
    if cand is not None and cand.status == "wrong":
        # A wrong result is never acceptable, not even with --allow-missing.
        detail = f": {cand.message}" if cand.message else ""
        return ConfigVerdict(verdict="FAIL", reason=f"candidate is wrong{detail}", **common), None
    if base is None:
        return ConfigVerdict(verdict="SKIP", reason="new in the candidate", **common), None
    if base.status not in TIMED_STATUSES:
        status_after = cand.status if cand else "missing"
        return ConfigVerdict(verdict="SKIP", reason=f"baseline was {base.status}, candidate {status_after}",
                             **common), None
    if cand is not None and cand.status == "unchecked" and not settings.allow_unchecked:
        # Timed without the correctness gate: its speed says nothing until it is known to be right.
        return ConfigVerdict(verdict="FAIL", reason="candidate is unchecked (timed with --no-check; "
                             "--allow-unchecked compares it anyway)", **common), None
    if cand is None or cand.status not in TIMED_STATUSES:
        what = "missing from the candidate" if cand is None else f"now {cand.status}"
        if cand is not None and cand.message:
            what += f": {cand.message}"
        if settings.allow_missing:
            return ConfigVerdict(verdict="SKIP", reason=f"{what} (allowed)", **common), None
        return ConfigVerdict(verdict="FAIL", reason=what, **common), None
    base_ms = base.median_ms if base.median_ms is not None else _median(base.samples_ms)
    cand_ms = cand.median_ms if cand.median_ms is not None else _median(cand.samples_ms)
    if base_ms is None or cand_ms is None or base_ms <= 0 or cand_ms <= 0:
        return ConfigVerdict(verdict="UNSURE", reason="timed but without a timing", **common), None
    ev = compare_samples(base_ms, cand_ms, base.samples_ms, cand.samples_ms, settings,
                         base.burst_starts, cand.burst_starts)
    verdict = ConfigVerdict(verdict=ev.verdict, reason=ev.reason, ratio=ev.ratio, delta_us=ev.delta_us,
                            p_value=ev.p_value, ci_low=ev.ci_low, ci_high=ev.ci_high,
                            **{**common, "baseline_ms": base_ms, "candidate_ms": cand_ms})
    return verdict, ev


def _adjust(verdicts: list[ConfigVerdict], evidence: list[Evidence | None],
            settings: GateSettings) -> list[ConfigVerdict]:
    """Holm's adjustment over every configuration compared statistically in this gate."""
    tested = [i for i, ev in enumerate(evidence) if ev is not None and ev.p_value is not None]
    adjusted = holm([evidence[i].p_value for i in tested])  # type: ignore[union-attr,misc]
    out = list(verdicts)
    for i, p in zip(tested, adjusted, strict=True):
        ev = evidence[i]
        assert ev is not None
        if ev.direction is None or ev.verdict == "SAME":
            out[i] = dataclasses.replace(out[i], p_value=p)
            continue
        decided = _decide(ev, p, settings.alpha, len(tested))
        out[i] = dataclasses.replace(out[i], verdict=decided.verdict, reason=decided.reason, p_value=p)
    return out


def _median(samples: Sequence[float]) -> float | None:
    return float(np.median(np.asarray(samples, dtype=float))) if len(samples) else None


def device_label(gpu_name: str | None) -> str:
    return gpu_name or "CPU"


def gate(baseline: Side, candidate: Side, settings: GateSettings | None = None) -> GateReport:
    """Compares every configuration of the baseline (and notes those new in the candidate)."""
    settings = settings or GateSettings()
    if settings.run_noise is None:
        on_cpu = baseline.gpu_name is None or candidate.gpu_name is None
        settings = dataclasses.replace(settings, run_noise=CPU_RUN_NOISE if on_cpu else RUN_NOISE)
    if baseline.gpu_name != candidate.gpu_name and not settings.allow_cross_device:
        raise GateError(f"baseline ran on {device_label(baseline.gpu_name)} but the candidate on "
                        f"{device_label(candidate.gpu_name)}; timings of different devices are not comparable "
                        "(use --allow-cross-device to compare anyway)")
    if not baseline.results:
        raise GateError(f"baseline {baseline.label} has no measurements; nothing to gate against")
    keys = list(baseline.results) + [k for k in candidate.results if k not in baseline.results]
    pairs = [_verdict_for(k, baseline.results.get(k), candidate.results.get(k), settings) for k in keys]
    verdicts = _adjust([v for v, _ in pairs], [ev for _, ev in pairs], settings)
    if all(v.verdict == "SKIP" for v in verdicts):
        # Passing because nothing was compared would let a broken CI job go green.
        raise GateError(f"no configuration of baseline {baseline.label} is ok in both it and candidate "
                        f"{candidate.label}; nothing was compared")
    verdicts.sort(key=lambda v: (v.method, v.seq_len, v.key))
    return GateReport(baseline, candidate, settings, verdicts)
