"""The quality track in the store: quality runs (provenance as for speed runs) and their results,
each result committed on its own as soon as its model is scored, so a crash loses none before it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..core.records import RunInfo, utcnow
from .models import QualityResult, QualityRun
from .store import Store, StoreError, _retrying, run_columns


@dataclass
class QualityRecord:
    """One trained and scored model (or why there is none: status and message)."""

    config_key: str
    task: str
    method: str
    family: str
    order_m: int | None
    dims: str
    seq_len: int
    vocab: int
    items: int
    d_model: int
    layers: int
    heads: int
    mlp: bool
    dtype: str
    device: str
    seed: int
    lr: float
    steps: int
    batch: int
    status: str
    message: str = ""
    provenance: str = ""
    accuracy: float | None = None
    scored: int = 0
    by_distance: dict | None = None
    final_loss: float | None = None
    train_seconds: float | None = None
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime = field(default_factory=utcnow)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def start_quality_run(store: Store, info: RunInfo) -> int:
    values = run_columns(info)

    def insert() -> int:
        row = QualityRun(**values)
        with store.session() as session, session.begin():
            session.add(row)
        return row.id

    return _retrying(insert)


def record_quality(store: Store, run_id: int, rec: QualityRecord) -> bool:
    """Commit one result. Returns False if the run already has this configuration."""
    data = {name: getattr(rec, name) for name in QualityRecord.__dataclass_fields__}
    for name in ("accuracy", "final_loss", "train_seconds"):
        data[name] = _finite(data[name])

    def insert() -> bool:
        try:
            with store.session() as session, session.begin():
                session.add(QualityResult(quality_run_id=run_id, **data))
        except IntegrityError:
            return False
        return True

    return _retrying(insert)


def finish_quality_run(store: Store, run_id: int, status: str) -> None:
    with store.session() as session, session.begin():
        run = session.get(QualityRun, run_id)
        if run is None:
            raise StoreError(f"quality run {run_id} does not exist")
        run.status = status
        run.finished_at = utcnow()


def quality_run_id(store: Store, run_id: int | None = None) -> int:
    """The id of a quality run that exists: the one asked for, or the latest."""
    with store.session() as session:
        if run_id is None:
            found = session.scalars(select(QualityRun.id).order_by(QualityRun.id.desc()).limit(1)).first()
            if found is None:
                raise StoreError(f"no quality runs in '{store.url}' yet; make one with `tbench quality`")
            return found
        if session.get(QualityRun, run_id) is None:
            raise StoreError(f"quality run {run_id} does not exist in '{store.url}'")
        return run_id


def quality_run_sweep(store: Store, run_id: int) -> dict:
    """The sweep a quality run was started with (its settings)."""
    with store.session() as session:
        run = session.get(QualityRun, run_id)
        if run is None:
            raise StoreError(f"quality run {run_id} does not exist in '{store.url}'")
        return dict(run.sweep or {})


def quality_statuses(store: Store, run_id: int) -> dict[str, str]:
    """The stored configurations of a quality run: config key -> status."""
    with store.session() as session:
        rows = session.execute(select(QualityResult.config_key, QualityResult.status)
                               .where(QualityResult.quality_run_id == run_id))
        return {key: status for key, status in rows}


def reopen_quality_run(store: Store, run_id: int) -> None:
    """Marks a quality run running again, for more of its configurations to be added."""
    with store.session() as session, session.begin():
        run = session.get(QualityRun, run_id)
        if run is None:
            raise StoreError(f"quality run {run_id} does not exist")
        run.status = "running"
        run.finished_at = None


RESULT_COLUMNS = tuple(c.key for c in QualityResult.__table__.columns)


def quality_results(store: Store, run_ids: list[int] | None = None) -> pd.DataFrame:
    """Results (with their run's GPU) as a DataFrame, one row per trained model."""
    stmt = select(QualityResult, QualityRun.gpu_name).join(QualityRun)
    if run_ids is not None:
        stmt = stmt.where(QualityResult.quality_run_id.in_(run_ids))
    with store.session() as session:
        rows = [{**{c: getattr(r, c) for c in RESULT_COLUMNS}, "gpu_name": gpu}
                for r, gpu in session.execute(stmt.order_by(QualityResult.id))]
    return pd.DataFrame(rows, columns=[*RESULT_COLUMNS, "gpu_name"])
