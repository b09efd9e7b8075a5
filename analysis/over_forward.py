"""A training pass's time over its own forward's: how many forwards a backward or a whole training
step costs (the training issue's yardstick: `tensorized` fwd+bwd within 4.5x its forward)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..core.case import TIMED_STATUSES, Mode
from .speedup import SHAPE_KEY

# The same method on the same inputs, timed the same way; only the pass differs.
PASS_KEY = (*(c for c in SHAPE_KEY if c != "mode"), "method", "order_m", "dims")


def over_forward(df: pd.DataFrame, within: Sequence[str] = ()) -> pd.Series:
    """For each ok `bwd` or `fwd_bwd` row, its median over the ok `fwd` median of the same method,
    order, dims and shape, timed the same way (and with the same values of the `within` columns,
    e.g. the run); NaN for forward rows and where no such forward was measured (or either failed).
    With several forward rows for one key (rows of several runs), the fastest counts."""
    if "mode" not in df.columns or df.empty:
        return pd.Series(float("nan"), index=df.index)
    key = [c for c in (*PASS_KEY, *within) if c in df.columns]
    timed = df["status"].isin(TIMED_STATUSES)
    median = df["median_ms"].astype(float)
    # grouped in place (not merged): key columns may be all None in one frame and float in another;
    # an exact method's missing order and dims are values of its key, not reasons to drop it
    forward = median.where(timed & (df["mode"] == Mode.FWD.value))
    yardstick = forward.groupby([df[c].astype(str) for c in key], dropna=False).transform("min")
    return (median / yardstick).where(timed & (df["mode"] != Mode.FWD.value))
