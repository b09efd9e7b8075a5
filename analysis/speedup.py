"""Speedups over a baseline method: one definition for the terminal table, the Markdown report and
the dashboard, and the one rule for which baseline to use when the asked-for one has no data."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..core.case import TIMED_STATUSES
from ..core.sweep import BASELINE_PREFERENCE, BEST_EXACT

# What makes two measurements comparable: the same inputs on the same device, the same pass timed
# the same way.
SHAPE_KEY = ("seq_len", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal", "device", "timing_mode",
             "mode", "scope", "model", "layers", "protocol")


def with_speedup(df: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Adds `baseline_ms`, `baseline_method`, `speedup`, `speedup_lo` and `speedup_hi` to
    measurement rows.

    For each row, `baseline_ms` is the baseline method's ok median on the same shape: the same
    values of the SHAPE_KEY columns the frame has (a frame already cut to one GPU model and shape,
    as the dashboard's is, carries only `seq_len` of them). Where the baseline has several ok rows
    for one shape (a tensorized method at several orders m), the fastest counts; rows of failed
    baseline measurements never do. The baseline BEST_EXACT is the fastest ok row of the exact
    family on each shape (`baseline_method` names it). Then, for ok rows only,
    `speedup` = baseline_ms / median_ms, and `speedup_lo` / `speedup_hi` = baseline_ms over the
    row's own p80 / p20 (the spread of its timing). A row without an ok baseline on its shape,
    or not ok itself, gets NaN. The baseline's own rows get 1.
    """
    if "seq_len" not in df.columns:
        raise ValueError("speedups need a seq_len column")
    key = [c for c in SHAPE_KEY if c in df.columns]
    out = df.copy()
    out["baseline_ms"] = float("nan")
    out["baseline_method"] = None
    if baseline is not None and not df.empty:
        rows = df[baseline_rows(df, baseline) & df["status"].isin(TIMED_STATUSES)]
        rows = rows.assign(median_ms=rows["median_ms"].astype(float)).sort_values("median_ms", kind="stable")
        base = (rows.groupby(key, dropna=False)[["median_ms", "method"]].first()
                .rename(columns={"median_ms": "_base", "method": "_method"}).reset_index())
        joined = df[key].merge(base, on=key, how="left")  # a left merge keeps the rows' order
        out["baseline_ms"] = joined["_base"].astype(float).to_numpy()
        out["baseline_method"] = joined["_method"].to_numpy()
    ok = out["status"].isin(TIMED_STATUSES)
    out["speedup"] = (out["baseline_ms"] / out["median_ms"].astype(float)).where(ok)
    out["speedup_lo"] = (out["baseline_ms"] / out["p80_ms"].astype(float)).where(ok)
    out["speedup_hi"] = (out["baseline_ms"] / out["p20_ms"].astype(float)).where(ok)
    return out


def baseline_rows(df: pd.DataFrame, baseline: str | None) -> pd.Series:
    """Which rows can set the baseline time (whatever their status)."""
    if baseline is None:
        return pd.Series(False, index=df.index)
    if baseline != BEST_EXACT:
        return df["method"] == baseline
    if "family" not in df.columns:
        raise ValueError(f"the '{BEST_EXACT}' baseline needs a family column")
    return df["family"] == "exact"


def baseline_label(baseline: str | None) -> str:
    """How tables and charts name the baseline."""
    if baseline is None:
        return "no baseline"
    return "the fastest exact method" if baseline == BEST_EXACT else baseline


@dataclass(frozen=True)
class BaselineChoice:
    method: str | None
    note: str


def ok_methods(df: pd.DataFrame, family: str | None = None) -> list[str]:
    rows = df[df["status"].isin(TIMED_STATUSES)]
    if family is not None:
        rows = rows[rows["family"] == family]
    return sorted(rows["method"].unique())


def baseline_candidates(df: pd.DataFrame) -> list[str]:
    """Baselines with ok rows, best first: the fastest exact method on each shape (BEST_EXACT),
    exact methods in BASELINE_PREFERENCE order, other exact methods, then the rest (a tensorized
    method can be a baseline too, if asked for)."""
    exact = ok_methods(df, "exact")
    ranked = [m for m in BASELINE_PREFERENCE if m in exact] + [m for m in exact if m not in BASELINE_PREFERENCE]
    rest = [m for m in ok_methods(df) if m not in ranked]
    return ([BEST_EXACT] if exact else []) + ranked + rest


def pick_baseline(df: pd.DataFrame, requested: str | None = BEST_EXACT) -> BaselineChoice:
    """The requested baseline if it has ok rows, else the fastest exact method on each shape; the
    note (Markdown) says which one is used and why."""
    exact = ok_methods(df, "exact")
    if requested == BEST_EXACT and exact:
        return BaselineChoice(BEST_EXACT, "Speedups are against **the fastest exact method on each shape** "
                                          f"(of {', '.join(exact)}).")
    if requested in ok_methods(df):
        return BaselineChoice(requested, f"Speedups are against **{requested}**.")
    if not exact:
        return BaselineChoice(None, "No exact method has an ok measurement here, so there is no baseline "
                                    "for speedups.")
    wanted = f"{requested} has no ok measurement here" if requested else "no baseline chosen"
    return BaselineChoice(BEST_EXACT, "Speedups are against **the fastest exact method on each shape** "
                                      f"(of {', '.join(exact)}; {wanted}).")
