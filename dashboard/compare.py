"""Comparing two runs configuration by configuration, with the CLI gate's SAME / FASTER / SLOWER / UNSURE rule."""

from __future__ import annotations

import math
from typing import Literal

import pandas as pd

from ..analysis.gate import classify_ratio
from ..analysis.report import SCOPE_DEFAULTS

# One rule for the CLI gate and this view: SAME / FASTER / SLOWER / UNSURE (harness/gate.py).
Verdict = Literal["SAME", "FASTER", "SLOWER", "UNSURE"]


def _samples(value: object) -> list[float] | None:
    return [float(x) for x in value] if isinstance(value, (list, tuple)) and value else None


def compare_runs(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Configurations of two runs matched on config_key: ratio of medians (after / before) and the
    verdict. A configuration missing on one side, or not ok on both, gets its status change as the
    verdict instead (e.g. 'ok → oom', 'only before'). The key holds the scope and the protocol, so a
    layer row is only ever compared with the same layer row; they are kept for the labels."""
    keep = ["config_key", "method", "family", "seq_len", "order_m", "dims", "dtype", "causal", "batch", "heads",
            "kv_heads", "head_dim", *SCOPE_DEFAULTS]
    before, after = (side.assign(**{c: v for c, v in SCOPE_DEFAULTS.items() if c not in side})
                     for side in (before, after))
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
                                     _samples(row.get("samples_ms_after")), median_before_ms=float(median_before))
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
