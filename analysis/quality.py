"""Summaries of quality results: the best learning rate of each seed, then mean and spread over seeds
(as Zoology reports MQAR: the best of a small learning-rate sweep)."""

from __future__ import annotations

import pandas as pd

from ..core.case import Status

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
    with the number of seeds that trained and the configurations that did not: `failed` (an error,
    out of memory) and `unsupported` (declared before training). A series and length where nothing
    trained keeps its row, with no accuracy and zero seeds, so that a reader sees why it is empty."""
    columns = ["task", "series", "method", "order_m", "seq_len", "mean", "std", "min", "max", "seeds", "failed",
               "unsupported"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    keys = ["task", "series", "seq_len"]
    named = df.assign(series=[series_name(m, o) for m, o in zip(df["method"], df["order_m"], strict=True)])
    table = named.groupby(keys, sort=True)[["method", "order_m"]].first().reset_index()
    best = best_per_seed(df)
    if not best.empty:
        stats = best.groupby(keys)["accuracy"].agg(["mean", "std", "min", "max", "count"]).reset_index()
        table = table.merge(stats.rename(columns={"count": "seeds"}), on=keys, how="left")
    else:
        table = table.assign(mean=float("nan"), std=float("nan"), min=float("nan"), max=float("nan"), seeds=0)
    # configurations that trained no model: `unsupported` was declared before training (the method
    # cannot run backward here), the others broke while training
    not_ok = named[named["status"] != Status.OK]
    unsupported = not_ok["status"] == Status.UNSUPPORTED
    counts = {"failed": not_ok[~unsupported], "unsupported": not_ok[unsupported]}
    for column, rows in counts.items():
        table = table.merge(rows.groupby(keys).size().rename(column).reset_index(), on=keys, how="left")
        table[column] = table[column].fillna(0).astype(int)
    table["seeds"] = table["seeds"].fillna(0).astype(int)
    trained = table["seeds"] > 0
    table.loc[trained, "std"] = table.loc[trained, "std"].fillna(0.0)  # one seed: no spread
    return table[columns]
