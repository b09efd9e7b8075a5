"""Several runner processes writing into one store at once lose no row and never fail, on a SQLite
file and on PostgreSQL; several processes opening a new database at once all get one schema."""

import multiprocessing
import sqlite3

import pytest
from backends import BACKENDS, execute, fresh_url
from pg import pg_server_url, pg_url  # noqa: F401  (fixtures)
from sqlalchemy.exc import OperationalError

from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.results import store as store_module
from tbench.results.store import Store

WRITERS, EACH = 4, 200


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    return fresh_url(request, tmp_path)


def case(writer: int, i: int) -> Case:
    return Case("full", "exact", 64 + i, 1 + writer, 4, 2, 64, "fp32", True, "cpu", timing="cpu")


def write_measurements(url: str, run_id: int, writer: int, start) -> None:
    store = Store(url, create=False)
    start.wait()
    timing = Timing(1.0, 0.9, 1.1, 1.0, 0.05, 0.9, [0.9, 1.0, 1.1])
    for i in range(EACH):
        if not store.record(run_id, MeasurementRecord(case(writer, i), "ok", timing=timing, device_index=writer)):
            raise RuntimeError(f"writer {writer}: measurement {i} refused as a duplicate")
    store.close()


def open_fresh_and_start_run(url: str, writer: int, start) -> None:
    start.wait()
    store = Store(url)
    run_id = store.start_run(RunInfo(command=f"writer {writer}", device="cpu"))
    for i in range(10):
        assert store.record(run_id, MeasurementRecord(case(writer, i), "ok"))
    store.close()


@pytest.fixture(scope="module")
def workers():
    """Fresh interpreters (spawn, as the runner's workers are), started once for all tests here:
    their start-up costs more than their writing."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(WRITERS) as pool:
        def run_all(target, args_for) -> None:
            start = manager.Barrier(WRITERS, timeout=60)  # all begin together, to collide
            results = pool.starmap_async(target, [(*args_for(w), start) for w in range(WRITERS)])
            results.get(timeout=120)  # re-raises a writer's failure here

        yield run_all


def test_concurrent_writers_lose_nothing(url, workers):
    store = Store(url)
    run_id = store.start_run(RunInfo(command="sharded", device="cpu"))
    workers(write_measurements, lambda w: (url, run_id, w))
    expected = {case(w, i).key for w in range(WRITERS) for i in range(EACH)}
    keys = [k for (k,) in execute(url, "SELECT config_key FROM measurements WHERE run_id = :r", r=run_id)]
    assert len(keys) == WRITERS * EACH and set(keys) == expected  # each exactly once
    assert sorted(store.measurements([run_id])["device_index"].unique()) == list(range(WRITERS))
    store.close()


def test_concurrent_first_opens_share_one_schema(url, workers):
    workers(open_fresh_and_start_run, lambda w: (url, w))
    assert execute(url, "SELECT count(*) FROM tbench_meta") == [(1,)]
    assert execute(url, "SELECT count(*) FROM alembic_version") == [(1,)]
    assert execute(url, "SELECT count(*), count(DISTINCT run_id) FROM measurements") == [(WRITERS * 10, WRITERS)]


def locked(times: int):
    """A write that meets a locked database `times` times, then goes through."""
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
        return "written"

    return attempt, calls


def test_retry_outlasts_lock_contention(monkeypatch):
    monkeypatch.setattr(store_module.time, "sleep", lambda _s: None)
    attempt, calls = locked(3)
    assert store_module._retrying(attempt) == "written"
    assert len(calls) == 4
    # a lock held past every attempt is reported, not swallowed
    attempt, calls = locked(100)
    with pytest.raises(OperationalError, match="database is locked"):
        store_module._retrying(attempt, tries=5)
    assert len(calls) == 5


def test_other_errors_are_not_retried():
    calls = []

    def attempt():
        calls.append(1)
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: measurements"))

    with pytest.raises(OperationalError, match="no such table"):
        store_module._retrying(attempt)
    assert len(calls) == 1
