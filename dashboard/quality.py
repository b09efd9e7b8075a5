"""The Quality view's data, without Streamlit: quality results read from the store, accuracy by
length per method (mean and spread over seeds), and the speed-quality points (time at the largest
measured length from the speed runs on the same device, against MQAR accuracy at a chosen length,
by default the longest that some method solves)."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import Engine, inspect, select

from ..analysis.quality import accuracy_table, series_name
from ..core.case import TIMED_STATUSES
from ..results.models import Measurement, QualityResult, QualityRun, Run

CPU_LABEL = "CPU"
RESULT_COLUMNS = ("quality_run_id", "task", "method", "family", "order_m", "seq_len", "seed", "lr", "status",
                  "message", "accuracy", "by_distance")
SPEED_COLUMNS = ("run_id", "config_key", "method", "order_m", "seq_len", "median_ms", "status", "dtype", "batch",
                 "heads", "kv_heads", "head_dim", "timing_mode", "mode", "causal")


def _label(gpu_name: object) -> str:
    return str(gpu_name) if isinstance(gpu_name, str) and gpu_name else CPU_LABEL


def load_quality(engine: Engine) -> pd.DataFrame:
    """Every quality result with its run's device label (empty when the store predates the tables)."""
    columns = [*RESULT_COLUMNS, "gpu"]
    if not inspect(engine).has_table(QualityResult.__tablename__):
        return pd.DataFrame(columns=columns)
    stmt = (select(*[getattr(QualityResult, c) for c in RESULT_COLUMNS], QualityRun.gpu_name)
            .join(QualityRun, QualityRun.id == QualityResult.quality_run_id).order_by(QualityResult.id))
    with engine.connect() as conn:
        rows = [(*r[:-1], _label(r[-1])) for r in conn.execute(stmt).all()]
    return pd.DataFrame(rows, columns=columns)


def load_speed(engine: Engine, gpu: str) -> pd.DataFrame:
    """Forward, causal speed measurements of the attention operator alone (op scope, tbench's
    sampling) on one device, the newest of each configuration: a layer's time is not the method's."""
    m = Measurement
    device = Run.gpu_name.is_(None) if gpu == CPU_LABEL else Run.gpu_name == gpu
    stmt = (select(*[getattr(m, c) for c in SPEED_COLUMNS]).join(Run, Run.id == m.run_id)
            .where(device, m.mode == "fwd", m.causal.is_(True), m.scope == "op", m.protocol == "tbench")
            .order_by(m.run_id))
    with engine.connect() as conn:
        df = pd.DataFrame([tuple(r) for r in conn.execute(stmt).all()], columns=list(SPEED_COLUMNS))
    return df.drop_duplicates("config_key", keep="last").reset_index(drop=True)


def accuracy_by_length(df: pd.DataFrame, task: str = "mqar") -> pd.DataFrame:
    """Per method (and order) and length: mean, std, min and max over seeds of the best accuracy."""
    table = accuracy_table(df[df["task"] == task]) if not df.empty else accuracy_table(df)
    return table.reset_index(drop=True)


def speed_at_largest(speed: pd.DataFrame) -> tuple[int | None, pd.DataFrame]:
    """The largest length with a timing in the most measured shape, and each series' median time there."""
    ok = speed[speed["status"].isin(TIMED_STATUSES) & speed["median_ms"].notna()]
    if ok.empty:
        return None, pd.DataFrame(columns=["series", "median_ms"])
    shape_cols = ["dtype", "batch", "heads", "kv_heads", "head_dim", "timing_mode"]
    shape = ok.groupby(shape_cols).size().sort_values(ascending=False, kind="stable").index[0]
    ok = ok[(ok[shape_cols] == pd.Series(shape, index=shape_cols)).all(axis=1)]
    largest = int(ok["seq_len"].max())
    at = ok[ok["seq_len"] == largest]
    at = at.assign(series=[series_name(m, o) for m, o in zip(at["method"], at["order_m"], strict=True)])
    return largest, at.groupby("series", as_index=False)["median_ms"].min()


# A method "solves" the task at a length where its mean accuracy over seeds reaches this.
SOLVED = 0.9


def chart_length(table: pd.DataFrame) -> int | None:
    """The quality length the speed-quality chart shows by default: the longest at which some method
    solves the task (where accuracies can tell methods apart), else the longest trained."""
    trained = table[table["seeds"] > 0]
    if trained.empty:
        return None
    solved = trained[trained["mean"] >= SOLVED]
    return int((solved if not solved.empty else trained)["seq_len"].max())


def speed_quality(quality: pd.DataFrame, speed: pd.DataFrame, task: str = "mqar", quality_len: int | None = None
                  ) -> tuple[int | None, int | None, pd.DataFrame]:
    """(speed length, quality length, points): one point per series measured in both, with its median
    time at the largest speed length and its mean accuracy (and spread) at `quality_len` (default:
    `chart_length`)."""
    table = accuracy_by_length(quality, task)
    largest, times = speed_at_largest(speed)
    quality_len = chart_length(table) if quality_len is None else quality_len
    if quality_len is None or largest is None:
        return largest, quality_len, pd.DataFrame(columns=["series", "median_ms", "mean", "std", "seeds"])
    at = table[(table["seq_len"] == quality_len) & (table["seeds"] > 0)][["series", "mean", "std", "seeds"]]
    return largest, quality_len, times.merge(at, on="series").sort_values("series").reset_index(drop=True)


def distance_table(df: pd.DataFrame, task: str = "mqar") -> pd.DataFrame:
    """Accuracy by distance bucket per series and length, pooled over seeds (best learning rate each)."""
    from ..analysis.quality import best_per_seed

    best = best_per_seed(df[df["task"] == task]) if not df.empty else best_per_seed(df)
    rows: dict[tuple[str, int, int], list[int]] = {}
    for series, n, buckets in zip(best["series"], best["seq_len"], best["by_distance"], strict=True):
        for lo, cell in (buckets or {}).items():
            total = rows.setdefault((series, int(n), int(lo)), [0, 0])
            total[0] += int(cell["correct"])
            total[1] += int(cell["total"])
    records = [{"series": s, "seq_len": n, "distance": lo, "accuracy": c / t if t else float("nan"), "scored": t}
               for (s, n, lo), (c, t) in sorted(rows.items())]
    return pd.DataFrame(records, columns=["series", "seq_len", "distance", "accuracy", "scored"])
