"""The results store: any SQLAlchemy URL, a SQLite file (./tbench.db) by default.

Each measurement is committed on its own as soon as it is recorded, so a killed runner loses
nothing already measured.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote

import pandas as pd
from sqlalchemy import Engine, Integer, create_engine, event, func, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session, sessionmaker

from ..core.records import MeasurementRecord, RunInfo, utcnow
from . import migrate
from .models import SCHEMA_VERSION, Measurement, Meta, QualityResult, QualityRun, Run
from .url import DatabaseUrl, DatabaseUrlError, mask_text

T = TypeVar("T")


def run_columns(info: RunInfo) -> dict:
    """The columns of a new run row (speed or quality) from its provenance, marked running."""
    return dict(
        uuid=info.uuid or str(uuidlib.uuid4()), status="running", started_at=info.started_at,
        command=info.command, host=info.host, device=info.device, gpu_name=info.gpu_name,
        gpu_count=info.gpu_count, driver=info.driver, cuda=info.cuda, torch_version=info.torch_version,
        triton_version=info.triton_version, python_version=info.python_version, platform=info.platform,
        tbench_version=info.tbench_version, git_commit=info.git_commit, sweep=info.sweep,
        environment=info.environment,
    )


class StoreError(Exception):
    """A store problem worth one clear line to the user (bad URL, unreadable file, newer schema)."""


def resolve_url(url: str | None = None) -> str:
    """The full URL text (password included) that --db, $TBENCH_DB or the default names, for a
    child process that opens the same database; never for display."""
    try:
        return DatabaseUrl.resolve(url).full
    except DatabaseUrlError as exc:
        raise StoreError(str(exc)) from None


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass(frozen=True)
class RunSummary:
    id: int
    uuid: str
    status: str
    started_at: object
    finished_at: object
    device: str
    gpu_name: str | None
    command: str
    measurements: int
    ok: int


class Store:
    """`readonly` opens the store so that nothing can be written (SQLite: a read-only URI, no WAL
    switch, no migration), for commands that only read; it implies `create=False`."""

    def __init__(self, url: str | DatabaseUrl | None = None, *, create: bool = True, readonly: bool = False) -> None:
        try:
            # str() of the URL hides its password: every message below can show it
            self.url = url if isinstance(url, DatabaseUrl) else DatabaseUrl.resolve(url)
        except DatabaseUrlError as exc:
            raise StoreError(str(exc)) from None
        self.readonly = readonly
        create = create and not readonly
        self.engine = self._connect(self.url, create, readonly)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._prepare_schema(create)

    # --- opening ---------------------------------------------------------------------------------

    @staticmethod
    def _connect(url: DatabaseUrl, create: bool, readonly: bool = False) -> Engine:
        parsed = url.url
        options: dict = {}
        if url.sqlite_file is not None:
            path = sqlite_file_path(str(parsed.database))
            if not create and not path.exists():
                raise StoreError(f"database file '{path}' does not exist; create one with `tbench run`")
            if path.exists() and path.is_dir():
                raise StoreError(f"database path '{path}' is a directory, not a SQLite file")
            if not path.parent.exists():
                raise StoreError(f"cannot create database '{path}': folder '{path.parent}' does not exist")
            if readonly:
                parsed = readonly_sqlite_url(parsed)
            elif path.exists():
                refuse_foreign_sqlite(path)
        elif readonly and parsed.get_backend_name() == "postgresql":
            options["execution_options"] = {"postgresql_readonly": True}
        try:
            engine = create_engine(parsed, **options)
        except (NoSuchModuleError, ImportError, ArgumentError) as exc:
            raise StoreError(f"database URL '{url}' needs a driver that is not installed: {exc}") from None
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_readonly_pragmas if readonly else _sqlite_pragmas)
        return engine

    def _prepare_schema(self, create: bool) -> None:
        try:
            # Processes opening a new SQLite file together contend for its lock (switching it to
            # WAL, creating the tables); a lock that outlasts the busy timeout is retried.
            _retrying(lambda: self._prepare_schema_once(create))
        except StoreError:
            raise
        except migrate.MigrationRefused as exc:
            raise StoreError(str(exc)) from None
        except (OperationalError, SQLAlchemyError) as exc:
            reason = mask_text(str(getattr(exc, "orig", exc)).splitlines()[0])
            raise StoreError(f"cannot open database '{self.url}': {reason}") from None

    def _prepare_schema_once(self, create: bool) -> None:
        # Look first without taking a lock: nearly every open finds the schema at head.
        with self.engine.connect() as conn:
            stale = migrate.needs_work(conn)
            if stale and self.readonly:
                migrate.check_readable(conn, where=self.url)
                stale = False
        if stale:
            with self.engine.begin() as conn:
                migrate.lock(conn)
                migrate.prepare(conn, create=create, where=str(self.url))
        with self.session() as session:
            found = session.get(Meta, "schema_version")
        if found is None:
            raise StoreError(f"'{self.url}' is not a tbench database (no schema version)")
        if int(found.value) > SCHEMA_VERSION:
            raise StoreError(
                f"database '{self.url}' has schema version {found.value}, newer than this "
                f"tbench supports ({SCHEMA_VERSION}); upgrade tbench to read it"
            )

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self._sessions()

    # --- writing ---------------------------------------------------------------------------------

    def start_run(self, info: RunInfo) -> int:
        values = run_columns(info)

        def insert() -> int:
            # A fresh object per attempt: a failed flush leaves the old one tied to its session.
            row = Run(**values)
            with self.session() as session, session.begin():
                session.add(row)
            return row.id

        return _retrying(insert)

    def join_run(self, info: RunInfo) -> tuple[int, bool]:
        """The run with info.uuid, made from `info` if it does not exist yet. Several processes
        (shards of one sweep) may call this at once: one creates the run, the others find it.
        Returns (run id, whether this call created it)."""
        assert info.uuid is not None
        for _ in range(3):
            existing = self.find_run(info.uuid)
            if existing is not None:
                return existing, False
            try:
                return self.start_run(info), True
            except IntegrityError:
                continue  # another process created it between the look and the insert
        raise StoreError(f"could not create or find run {info.uuid}")

    def find_run(self, run_uuid: str) -> int | None:
        with self.session() as session:
            return session.scalars(select(Run.id).where(Run.uuid == run_uuid)).first()

    def update_environment(self, run_id: int, **values: object) -> None:
        with self.session() as session, session.begin():
            run = session.get(Run, run_id)
            if run is None:
                raise StoreError(f"run {run_id} does not exist")
            run.environment = {**(run.environment or {}), **values}

    def record(self, run_id: int, rec: MeasurementRecord) -> bool:
        """Commit one measurement. Returns False if the run already has this configuration."""

        def insert() -> bool:
            try:
                with self.session() as session, session.begin():
                    session.add(_to_row(run_id, rec))
            except IntegrityError:
                return False
            return True

        return _retrying(insert)

    def finish_run(self, run_id: int, status: str) -> None:
        with self.session() as session, session.begin():
            run = session.get(Run, run_id)
            if run is not None:
                run.status = status
                run.finished_at = utcnow()

    # --- reading ---------------------------------------------------------------------------------

    def runs(self) -> list[RunSummary]:
        counts = (
            select(Measurement.run_id, func.count().label("n"),
                   func.sum((Measurement.status == "ok").cast(Integer)).label("ok"))
            .group_by(Measurement.run_id).subquery()
        )
        stmt = (select(Run, counts.c.n, counts.c.ok).outerjoin(counts, counts.c.run_id == Run.id)
                .order_by(Run.id))
        with self.session() as session:
            return [
                RunSummary(r.id, r.uuid, r.status, r.started_at, r.finished_at, r.device, r.gpu_name,
                           r.command, int(n or 0), int(ok or 0))
                for r, n, ok in session.execute(stmt)
            ]

    def get_run(self, run_id: int | None = None) -> Run:
        """A run by id, or the latest one."""
        with self.session() as session:
            if run_id is None:
                run = session.scalars(select(Run).order_by(Run.id.desc()).limit(1)).first()
                if run is None:
                    raise StoreError(f"no runs in '{self.url}' yet; make one with `tbench run`")
            else:
                run = session.get(Run, run_id)
                if run is None:
                    raise StoreError(f"run {run_id} does not exist in '{self.url}'")
            return run

    def measured_keys(self, run_id: int) -> set[str]:
        with self.session() as session:
            return set(session.scalars(select(Measurement.config_key).where(Measurement.run_id == run_id)))

    def measurements(self, run_ids: Iterable[int] | None = None) -> pd.DataFrame:
        """Measurements (joined with their run's GPU) as a DataFrame, one row per configuration."""
        stmt = select(Measurement, Run.gpu_name, Run.uuid).join(Run)
        if run_ids is not None:
            stmt = stmt.where(Measurement.run_id.in_(list(run_ids)))
        with self.session() as session:
            rows = []
            for m, gpu_name, run_uuid in session.execute(stmt.order_by(Measurement.id)):
                data = {c.key: getattr(m, c.key) for c in Measurement.__table__.columns}
                data["gpu_name"] = gpu_name
                data["run_uuid"] = run_uuid
                rows.append(data)
        columns = [c.key for c in Measurement.__table__.columns] + ["gpu_name", "run_uuid"]
        return pd.DataFrame(rows, columns=columns)


def sqlite_file_path(database: str) -> Path:
    """The file named by a SQLite URL's database part (a path, or a `file:` URI)."""
    if database.startswith("file:"):
        return Path(unquote(database[len("file:"):].split("?")[0]))
    return Path(database).expanduser()


def readonly_sqlite_url(parsed: URL) -> URL:
    """The same SQLite file opened read-only: a `mode=ro` URI, which can neither write nor create
    the file. On read-only media (the file or its folder not writable) SQLite could not make the
    shared-memory file a WAL database needs even for reading, so the file is opened `immutable`."""
    path = sqlite_file_path(parsed.database or "")
    query = {**parsed.query, "mode": "ro", "uri": "true"}
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        query["immutable"] = "1"
    database = f"file:{quote(str(path.resolve()))}"
    return URL.create(parsed.drivername, database=database, query=query)


# tbench's own tables; a SQLite file holding any other is someone else's database
TBENCH_TABLES = frozenset({"runs", "measurements", Meta.__tablename__, "alembic_version", QualityRun.__tablename__,
                           QualityResult.__tablename__})


def refuse_foreign_sqlite(path: Path) -> None:
    """Refuse, before anything is written (not even the switch to WAL), a SQLite file that holds
    tables other than tbench's, or that is not a SQLite database at all."""
    if path.stat().st_size == 0:
        return  # an empty file is an empty database
    try:
        con = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        try:
            names = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot open database '{path}': {exc}") from None
    foreign = sorted(n for n in names - TBENCH_TABLES if not n.startswith("sqlite_"))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise StoreError(f"'{path}' is not a tbench database (it holds other tables: {shown}); "
                         "give a new file or a tbench store with --db")


def _sqlite_readonly_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # No journal-mode switch: a reader must leave the file exactly as it found it.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets readers (the dashboard) work while a runner writes; the busy timeout makes
    # concurrent writers wait for the lock instead of failing with "database is locked".
    # The timeout goes first: switching a new file to WAL itself needs the lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _transient(exc: DBAPIError) -> bool:
    """Lock contention that a later attempt gets past: SQLite's busy/locked (past the busy timeout,
    or at once when a read transaction cannot become a write one) and PostgreSQL's serialization
    failures and deadlocks."""
    if getattr(exc.orig, "sqlstate", None) in ("40001", "40P01"):
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def _retrying(attempt: Callable[[], T], tries: int = 12) -> T:
    delay = 0.05
    for i in range(tries):
        try:
            return attempt()
        except DBAPIError as exc:
            if i == tries - 1 or exc.connection_invalidated or not _transient(exc):
                raise
        # Jitter keeps writers that collided from colliding again in step.
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def _to_row(run_id: int, rec: MeasurementRecord) -> Measurement:
    case, timing = rec.case, rec.timing
    return Measurement(
        run_id=run_id, config_key=case.key, method=case.method, family=str(case.family), seq_len=case.seq_len,
        order_m=case.order, dims=case.dims_text, batch=case.batch, heads=case.heads, kv_heads=case.kv_heads,
        head_dim=case.head_dim, dtype=str(case.dtype), causal=case.causal, device=case.device,
        device_index=rec.device_index, timing_mode=str(case.timing), mode=str(case.mode),
        scope=str(case.scope), model=case.model, layers=case.layers, protocol=str(case.protocol),
        status=str(rec.status), message=rec.message,
        provenance=rec.provenance,
        median_ms=timing.median_ms if timing else None, p20_ms=timing.p20_ms if timing else None,
        p80_ms=timing.p80_ms if timing else None, mean_ms=timing.mean_ms if timing else None,
        std_ms=timing.std_ms if timing else None, min_ms=timing.min_ms if timing else None,
        rse=_finite(timing.rse) if timing else None, n_samples=timing.count if timing else 0,
        samples_ms=timing.samples_ms if timing else None,
        peak_bytes=rec.peak_bytes, total_peak_bytes=rec.total_peak_bytes, flops=rec.flops,
        min_bytes=rec.min_bytes, tflops=rec.tflops, tbps=rec.tbps, check_error=_finite(rec.check_error),
        fidelity_rel_l2=_finite(rec.fidelity_rel_l2), fidelity_max_abs=_finite(rec.fidelity_max_abs),
        throttled=rec.throttled, device_state=rec.device_state or None,
        started_at=rec.started_at, finished_at=rec.finished_at,
    )
