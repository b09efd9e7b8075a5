"""Speedups over a baseline method: one definition for the terminal table, the Markdown report and
the dashboard, and the one rule for which baseline to use when the asked-for one has no data."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..core.case import TIMED_STATUSES
from ..core.sweep import BASELINE_PREFERENCE

# What makes two measurements comparable: the same inputs on the same device, the same pass timed
# the same way.
SHAPE_KEY = ("seq_len", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal", "device", "timing_mode",
             "mode", "scope", "model", "layers", "protocol")


def with_speedup(df: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Adds `baseline_ms`, `speedup`, `speedup_lo` and `speedup_hi` to measurement rows.

    For each row, `baseline_ms` is the baseline method's ok median on the same shape: the same
    values of the SHAPE_KEY columns the frame has (a frame already cut to one GPU model and shape,
    as the dashboard's is, carries only `seq_len` of them). Where the baseline has several ok rows
    for one shape (a tensorized method at several orders m), the fastest counts; rows of failed
    baseline measurements never do. Then, for ok rows only,
    `speedup` = baseline_ms / median_ms, and `speedup_lo` / `speedup_hi` = baseline_ms over the
    row's own p80 / p20 (the spread of its timing). A row without an ok baseline on its shape,
    or not ok itself, gets NaN. The baseline's own rows get 1.
    """
    if "seq_len" not in df.columns:
        raise ValueError("speedups need a seq_len column")
    key = [c for c in SHAPE_KEY if c in df.columns]
    out = df.copy()
    out["baseline_ms"] = float("nan")
    if baseline is not None and not df.empty:
        rows = df[(df["method"] == baseline) & df["status"].isin(TIMED_STATUSES)]
        base = rows.groupby(key, dropna=False)["median_ms"].min().rename("_base").reset_index()
        joined = df[key].merge(base, on=key, how="left")  # a left merge keeps the rows' order
        out["baseline_ms"] = joined["_base"].astype(float).to_numpy()
    ok = out["status"].isin(TIMED_STATUSES)
    out["speedup"] = (out["baseline_ms"] / out["median_ms"].astype(float)).where(ok)
    out["speedup_lo"] = (out["baseline_ms"] / out["p80_ms"].astype(float)).where(ok)
    out["speedup_hi"] = (out["baseline_ms"] / out["p20_ms"].astype(float)).where(ok)
    return out


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
    """Methods with ok rows, best baseline first: exact methods in BASELINE_PREFERENCE order, other
    exact methods, then the rest (a tensorized method can be a baseline too, if asked for)."""
    exact = ok_methods(df, "exact")
    ranked = [m for m in BASELINE_PREFERENCE if m in exact] + [m for m in exact if m not in BASELINE_PREFERENCE]
    return ranked + [m for m in ok_methods(df) if m not in ranked]


def pick_baseline(df: pd.DataFrame, requested: str | None = BASELINE_PREFERENCE[0]) -> BaselineChoice:
    """The requested baseline if it has ok rows, else the best exact method that has; the note
    (Markdown) says which one is used and why."""
    if requested and requested in ok_methods(df):
        return BaselineChoice(requested, f"Speedups are against **{requested}**.")
    ranked = [m for m in baseline_candidates(df) if m in ok_methods(df, "exact")]
    if not ranked:
        return BaselineChoice(None, "No exact method has an ok measurement here, so there is no baseline "
                                    "for speedups.")
    wanted = f"{requested} has no ok measurement here" if requested else "no baseline chosen"
    return BaselineChoice(ranked[0], f"Speedups are against **{ranked[0]}** ({wanted}).")
