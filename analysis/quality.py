"""Summaries of quality results: the best learning rate of each seed, then mean and spread over seeds
(as Zoology reports MQAR: the best of a small learning-rate sweep)."""

from __future__ import annotations

import pandas as pd

SERIES_KEYS = ["task", "method", "order_m", "seq_len"]


def series_name(method: str, order_m: object) -> str:
    return method if order_m is None or pd.isna(order_m) else f"{method} m={int(order_m)}"  # type: ignore[arg-type]


def best_per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, method, order, length, seed): the learning rate with the highest accuracy."""
    ok = df[(df["status"] == "ok") & df["accuracy"].notna()]
    if ok.empty:
        return ok.assign(series=pd.Series(dtype=str))
    ok = ok.assign(_order=ok["order_m"].astype("Int64").fillna(-1))
    ok = ok.sort_values([*SERIES_KEYS[:2], "_order", "seq_len", "seed", "accuracy"],
                        ascending=[True, True, True, True, True, False], kind="stable")
    best = ok.drop_duplicates(["task", "method", "_order", "seq_len", "seed"]).drop(columns="_order")
    return best.assign(series=[series_name(m, o) for m, o in zip(best["method"], best["order_m"], strict=True)])


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation, min and max over seeds of each series' best accuracy, by length;
    with the number of seeds and the configurations that failed."""
    columns = ["task", "series", "method", "order_m", "seq_len", "mean", "std", "min", "max", "seeds", "failed"]
    best = best_per_seed(df)
    if best.empty:
        return pd.DataFrame(columns=columns)
    grouped = best.groupby(["task", "series", "seq_len"], sort=True)
    table = grouped["accuracy"].agg(["mean", "std", "min", "max", "count"]).reset_index()
    table = table.rename(columns={"count": "seeds"})
    first = grouped[["method", "order_m"]].first().reset_index()
    table = table.merge(first, on=["task", "series", "seq_len"])
    failed = df[df["status"] != "ok"].assign(
        series=lambda d: [series_name(m, o) for m, o in zip(d["method"], d["order_m"], strict=True)])
    fails = failed.groupby(["task", "series", "seq_len"]).size().rename("failed").reset_index()
    table = table.merge(fails, on=["task", "series", "seq_len"], how="left")
    table["failed"] = table["failed"].fillna(0).astype(int)
    table["std"] = table["std"].fillna(0.0)
    return table[columns]
