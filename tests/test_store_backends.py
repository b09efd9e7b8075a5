"""The store on each backend, SQLite file and PostgreSQL server: same API, same answers."""

import pytest
from backends import BACKENDS, execute, fresh_url, table_names
from pg import pg_server_url, pg_url  # noqa: F401  (fixtures)

from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.results.models import SCHEMA_VERSION
from tbench.results.store import Store, StoreError


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    return fresh_url(request, tmp_path)


def case(n=1024, method="full", order=None):
    family = "tensorized" if order else "exact"
    dims = (32, n // 32) if order else None
    return Case(method, family, n, 1, 4, 2, 64, "fp32", True, "cpu", order=order, dims=dims, timing="cpu")


def test_round_trip(url):
    store = Store(url)
    run_id = store.start_run(RunInfo(command="tbench run", device="cpu", sweep={"lengths": [1024, 2048]},
                                     environment={"cpu": "x"}))
    timing = Timing(2, 1.9, 2.1, 2, 0.1, 1.8, [1.8, 2.0, 2.2], rse=0.01)
    assert store.record(run_id, MeasurementRecord(case(), "ok", timing=timing, flops=4e9, min_bytes=1e6,
                                                  peak_bytes=2**40, device_state={"sm_clock": 1980}))
    assert store.record(run_id, MeasurementRecord(case(2048, "tensorized", 2), "oom", message="out of memory"))
    assert not store.record(run_id, MeasurementRecord(case(), "ok"))  # one row per configuration and run
    store.update_environment(run_id, peaks={"tflops": 1.5})
    store.finish_run(run_id, "finished")

    # a second store on the same database reads what the first committed
    other = Store(url, create=False)
    df = other.measurements([run_id])
    assert list(df["status"]) == ["ok", "oom"]
    assert df.loc[0, "samples_ms"] == [1.8, 2.0, 2.2]
    assert df.loc[0, "peak_bytes"] == 2**40  # needs a 64-bit column
    assert df.loc[0, "device_state"] == {"sm_clock": 1980}
    assert df.loc[0, "tflops"] == pytest.approx(4e9 / 2e-3 / 1e12)
    assert df.loc[1, "order_m"] == 2 and df.loc[1, "dims"] == "32x64"
    assert bool(df.loc[0, "causal"]) is True
    assert other.measured_keys(run_id) == {case().key, case(2048, "tensorized", 2).key}
    run = other.get_run()
    assert (run.id, run.status, run.sweep, run.environment) == (
        run_id, "finished", {"lengths": [1024, 2048]}, {"cpu": "x", "peaks": {"tflops": 1.5}})
    assert run.finished_at is not None
    [summary] = other.runs()
    assert (summary.measurements, summary.ok, summary.device) == (2, 1, "cpu")
    with pytest.raises(StoreError, match="run 99 does not exist"):
        other.get_run(99)
    store.close()
    other.close()


def test_newer_schema_version_is_refused(url):
    Store(url).close()
    execute(url, "UPDATE tbench_meta SET value = :v WHERE key = 'schema_version'", v=str(SCHEMA_VERSION + 1))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this tbench"):
        Store(url)


def test_unknown_alembic_revision_is_refused(url):
    Store(url).close()
    execute(url, "UPDATE alembic_version SET version_num = 'f00dface'")
    with pytest.raises(StoreError, match="schema revision f00dface, newer than this tbench supports"):
        Store(url)
    # and nothing was changed by the refusal
    assert execute(url, "SELECT version_num FROM alembic_version") == [("f00dface",)]


def test_open_without_create_on_empty_database(url, tmp_path):
    with pytest.raises(StoreError, match=r"not a tbench database|does not exist"):
        Store(url, create=False)
    # refusing created nothing: no file, no tables
    if url.startswith("sqlite"):
        assert not (tmp_path / "store.db").exists()
    else:
        assert table_names(url) == set()
    store = Store(url)
    assert store.runs() == []
    store.close()
