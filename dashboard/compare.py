"""Comparing two runs configuration by configuration, with one SAME / FASTER / SLOWER rule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import pandas as pd
from scipy.stats import mannwhitneyu

Verdict = Literal["SAME", "FASTER", "SLOWER"]

THRESHOLD = 0.05  # a change of the median smaller than 5% is noise on a real GPU
ALPHA = 0.01  # the Mann-Whitney U p-value under which two sample sets really differ


def classify_ratio(ratio: float, samples_before: Sequence[float] | None = None,
                   samples_after: Sequence[float] | None = None, *, threshold: float = THRESHOLD,
                   alpha: float = ALPHA) -> Verdict:
    """SAME, FASTER or SLOWER for `ratio` = median after / median before.

    The median must move by more than `threshold` (SLOWER above 1 + threshold, FASTER below
    1 - threshold). When both sides have their timing samples, the move must also be significant:
    a two-sided Mann-Whitney U test with p < `alpha`, so that a noisy pair of runs is not called a
    change. Too few samples for that p-value read as SAME."""
    if not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"ratio {ratio} must be a positive finite number")
    if 1 - threshold <= ratio <= 1 + threshold:
        return "SAME"
    if samples_before is not None and samples_after is not None and len(samples_before) and len(samples_after):
        p_value = mannwhitneyu(list(samples_before), list(samples_after), alternative="two-sided").pvalue
        if not p_value < alpha:
            return "SAME"
    return "FASTER" if ratio < 1 else "SLOWER"


def _samples(value: object) -> list[float] | None:
    return [float(x) for x in value] if isinstance(value, (list, tuple)) and value else None


def compare_runs(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Configurations of two runs matched on config_key: ratio of medians (after / before) and the
    verdict. A configuration missing on one side, or not ok on both, gets its status change as the
    verdict instead (e.g. 'ok → oom', 'only before')."""
    keep = ["config_key", "method", "seq_len", "order_m", "dims", "dtype", "causal", "batch", "heads",
            "kv_heads", "head_dim"]
    merged = before.merge(after, on="config_key", how="outer", suffixes=("_before", "_after"), indicator=True)
    records = []
    for row in merged.to_dict("records"):
        side = "_before" if row["_merge"] != "right_only" else "_after"
        record = {c: row[c] if c == "config_key" else row[c + side] for c in keep}
        status_before = row.get("status_before") if row["_merge"] != "right_only" else None
        status_after = row.get("status_after") if row["_merge"] != "left_only" else None
        median_before, median_after = row.get("median_ms_before"), row.get("median_ms_after")
        ratio = math.nan
        if status_before is None:
            verdict = "only after"
        elif status_after is None:
            verdict = "only before"
        elif status_before == "ok" and status_after == "ok":
            ratio = float(median_after) / float(median_before)
            verdict = classify_ratio(ratio, _samples(row.get("samples_ms_before")),
                                     _samples(row.get("samples_ms_after")))
        elif status_before == status_after:
            verdict = f"{status_before} (both)"
        else:
            verdict = f"{status_before} → {status_after}"
        records.append({**record, "status before": status_before, "status after": status_after,
                        "median before ms": median_before, "median after ms": median_after,
                        "ratio": ratio, "verdict": verdict})
    columns = [*keep, "status before", "status after", "median before ms", "median after ms", "ratio", "verdict"]
    out = pd.DataFrame(records, columns=columns)
    return out.sort_values(["method", "seq_len", "order_m", "config_key"], kind="stable").reset_index(drop=True)
