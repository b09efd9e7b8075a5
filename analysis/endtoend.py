"""End to end: what a kernel buys in a layer or a model, per sequence length (no torch).

For each layer- or model-scope row that was timed: the speedup over FlashAttention-2 and over
FlashAttention-3 on the same shape, scope and protocol (where the run has them; else over the first
exact method of the usual baseline order), the share of the layer's time spent in attention (the
op-scope row of the same method and attention shape in the same frame, divided by the time per
layer: Amdahl's bound on what a faster attention can buy), and the peak memory. Model rows add the
time per layer and the estimate for the model's published depth, with its basis, as stored.

`depth_check` checks that estimate where it can be: against a full-depth run of the same
configuration at a length where the whole model fits.
"""

from __future__ import annotations

import pandas as pd

from ..core.case import TIMED_STATUSES
from ..core.sweep import preferred_baseline

# The attention shape shared by an op row and the layer around it.
ATTENTION_KEY = ["method", "order_m", "dims", "seq_len", "batch", "heads", "kv_heads", "head_dim", "dtype",
                 "causal", "device", "timing_mode", "mode"]
# What a layer row is compared with for its speedups.
SCOPED_KEY = ["seq_len", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal", "device", "timing_mode",
              "mode", "scope", "model", "layers", "protocol"]
REFERENCES = ("flash2", "flash3")


def _ms(df: pd.DataFrame) -> pd.Series:
    """The time a row stands for: the paper's protocol reports the mean, tbench the median."""
    return df["mean_ms"].where(df["protocol"] == "paper", df["median_ms"]).astype(float)


def end_to_end(df: pd.DataFrame) -> pd.DataFrame:
    """One row per timed layer or model configuration: method, order, N, batch, scope, model,
    layers, protocol, ms, per_layer_ms, x<reference> speedups, attention_share, peak_bytes and,
    for model scope, full_depth_ms_estimate and its basis."""
    if df.empty or "scope" not in df:
        return pd.DataFrame()
    timed = df[df["status"].isin(TIMED_STATUSES)].assign(ms=lambda d: _ms(d))
    scoped = timed[timed["scope"] != "op"].copy()
    if scoped.empty:
        return pd.DataFrame()
    scoped["per_layer_ms"] = scoped["ms"] / scoped["layers"].clip(lower=1)
    references = [m for m in REFERENCES if m in set(scoped["method"])]
    if not references:
        fallback = preferred_baseline(scoped["method"])
        references = [fallback] if fallback else []
    for reference in references:
        base = (scoped[scoped["method"] == reference].groupby(SCOPED_KEY, dropna=False)["ms"].min()
                .rename("_base").reset_index())
        joined = scoped[SCOPED_KEY].merge(base, on=SCOPED_KEY, how="left")
        scoped[f"x{reference}"] = joined["_base"].to_numpy() / scoped["ms"].to_numpy()
    ops = timed[timed["scope"] == "op"]
    ops = ops[ops["protocol"] == "tbench"] if not ops.empty else ops
    op_ms = ops.groupby(ATTENTION_KEY, dropna=False)["ms"].min().rename("_op").reset_index()
    joined = scoped[ATTENTION_KEY].merge(op_ms, on=ATTENTION_KEY, how="left")
    scoped["attention_share"] = joined["_op"].to_numpy() / scoped["per_layer_ms"].to_numpy()

    def depth(state: object, key: str) -> object:
        return state.get("depth", {}).get(key) if isinstance(state, dict) else None

    state = scoped["device_state"] if "device_state" in scoped else pd.Series([None] * len(scoped))
    scoped["full_depth_ms_estimate"] = [depth(s, "full_depth_ms_estimate") for s in state]
    scoped["estimate_basis"] = [depth(s, "basis") for s in state]
    columns = ["method", "order_m", "dims", "seq_len", "batch", "scope", "model", "layers", "protocol", "ms",
               "per_layer_ms", *[f"x{r}" for r in references], "attention_share", "peak_bytes",
               "full_depth_ms_estimate", "estimate_basis"]
    return scoped[columns].sort_values(["scope", "model", "batch", "protocol", "seq_len", "method", "order_m"],
                                       na_position="first").reset_index(drop=True)


# A model-scope configuration: what must match between a K-layer row and a full-depth row.
DEPTH_KEY = ["method", "order_m", "dims", "seq_len", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal",
             "device", "timing_mode", "mode", "model", "protocol"]
# The estimate holds when it is within this fraction of the measured full-depth time.
DEPTH_TOLERANCE = 0.15


def depth_check(df: pd.DataFrame, tolerance: float = DEPTH_TOLERANCE) -> pd.DataFrame:
    """The model-depth estimate checked against a measurement: for each model-scope configuration
    timed both with K layers fewer than the model's depth and at full depth (same method, order,
    N, batch, mode, protocol and model), the estimate stored with the K-layer row, the measured
    full-depth time, their ratio, and whether the estimate is within `tolerance` of it (`holds`).
    One row per K-layer row that has a full-depth counterpart; the fastest full-depth row counts
    where there are several."""
    columns = ["method", "order_m", "seq_len", "batch", "mode", "model", "protocol", "layers_timed", "depth",
               "estimate_ms", "measured_ms", "ratio", "holds"]
    if df.empty or "scope" not in df:
        return pd.DataFrame(columns=columns)
    timed = df[df["status"].isin(TIMED_STATUSES) & (df["scope"] == "model")]
    if timed.empty:
        return pd.DataFrame(columns=columns)
    # None and NaN orders, None and "" dims alike, so the keys of both sides match
    timed = timed.assign(ms=_ms(timed), order_m=pd.to_numeric(timed["order_m"], errors="coerce"),
                         dims=timed["dims"].fillna(""))
    state = timed["device_state"] if "device_state" in timed else pd.Series([None] * len(timed), index=timed.index)
    stored = [s.get("depth", {}) if isinstance(s, dict) else {} for s in state]
    timed = timed.assign(depth=[d.get("depth") for d in stored],
                         estimate_ms=[d.get("full_depth_ms_estimate") for d in stored])
    timed = timed[timed["depth"].notna()]
    full = timed[timed["layers"] == timed["depth"]]
    partial = timed[(timed["layers"] < timed["depth"]) & timed["estimate_ms"].notna()]
    if full.empty or partial.empty:
        return pd.DataFrame(columns=columns)
    measured = full.groupby(DEPTH_KEY, dropna=False)["ms"].min().rename("measured_ms").reset_index()
    pairs = partial.merge(measured, on=DEPTH_KEY, how="inner")
    pairs = pairs.assign(layers_timed=pairs["layers"], depth=pairs["depth"].astype(int),
                         estimate_ms=pairs["estimate_ms"].astype(float))
    pairs["ratio"] = pairs["estimate_ms"] / pairs["measured_ms"]
    pairs["holds"] = (pairs["ratio"] - 1).abs() <= tolerance
    return pairs[columns].sort_values(["model", "mode", "protocol", "batch", "seq_len", "method", "order_m",
                                       "layers_timed"], na_position="first").reset_index(drop=True)
