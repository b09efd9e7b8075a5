"""The store on a real SQLite file."""

import sqlite3

import pytest

from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.results.models import SCHEMA_VERSION
from tbench.results.store import Store, StoreError, resolve_url


def case(n=1024, method="full"):
    return Case(method, "exact", n, 1, 4, 2, 64, "fp32", True, "cpu", timing="cpu")


def test_round_trip_and_commit_per_measurement(tmp_path):
    path = tmp_path / "r.db"
    store = Store(str(path))
    run_id = store.start_run(RunInfo(command="tbench run", device="cpu", sweep={"lengths": [1024]}))
    assert store.record(run_id, MeasurementRecord(case(), "ok", timing=Timing(2, 1.9, 2.1, 2, 0.1, 1.8,
                                                                                  [1.8, 2.0, 2.2]),
                                                  flops=4e9, min_bytes=1e6, peak_bytes=123))
    assert store.record(run_id, MeasurementRecord(case(2048), "oom", message="CUDA out of memory"))
    # a second process sees both rows at once: each was committed on its own
    query = "select config_key, status, median_ms, samples_ms from measurements"
    rows = sqlite3.connect(path).execute(query).fetchall()
    assert [(r[1], r[2]) for r in rows] == [("ok", 2.0), ("oom", None)]
    assert rows[0][3] == "[1.8, 2.0, 2.2]"
    # the same configuration twice in one run is refused, not duplicated
    assert not store.record(run_id, MeasurementRecord(case(), "ok"))
    df = store.measurements([run_id])
    assert list(df["status"]) == ["ok", "oom"]
    assert df.loc[0, "tflops"] == pytest.approx(4e9 / 2e-3 / 1e12)
    assert store.measured_keys(run_id) == {case().key, case(2048).key}
    store.finish_run(run_id, "finished")
    [summary] = store.runs()
    assert (summary.status, summary.measurements, summary.ok) == ("finished", 2, 1)


def test_newer_schema_is_a_clear_error(tmp_path):
    path = tmp_path / "new.db"
    Store(str(path)).close()
    con = sqlite3.connect(path)
    con.execute("update tbench_meta set value=? where key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this tbench"):
        Store(str(path))


@pytest.mark.parametrize(("url", "needle"), [
    ("nosuchdialect://x/y", "needs a driver"),
    ("sqlite:////no/such/folder/t.db", "folder '/no/such/folder' does not exist"),
    ("bad url://x", "not a valid SQLAlchemy URL"),
])
def test_bad_urls(url, needle):
    with pytest.raises(StoreError, match=needle):
        Store(url)


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open database"):
        Store(str(path))


def test_url_resolution(monkeypatch):
    monkeypatch.delenv("TBENCH_DB", raising=False)
    assert resolve_url(None) == "sqlite:///tbench.db"
    monkeypatch.setenv("TBENCH_DB", "other.db")
    assert resolve_url(None) == "sqlite:///other.db"
    assert resolve_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
