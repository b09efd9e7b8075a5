"""Quality runs in bundles: a run made by the real `tbench quality` exported, imported into a fresh store
(a SQLite file and a PostgreSQL database), read back by the dashboard the same; bad files refused."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from backends import BACKENDS, execute, fresh_url
from conftest import run_cli
from pg import pg_server_url, pg_url  # noqa: F401  (fixtures)
from sqlalchemy import create_engine, select

from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.dashboard.quality import load_quality
from tbench.results.bundle import BundleError, export_bundle, import_runs, read_bundle, write_bundle
from tbench.results.models import QualityRun
from tbench.results.quality import (
    QualityRecord,
    finish_quality_run,
    quality_results,
    record_quality,
    start_quality_run,
)
from tbench.results.store import Store

QUALITY_ARGS = ["quality", "--device", "cpu", "--preset", "tiny", "--steps", "20"]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store with one quality run made by the real CLI, and one speed run."""
    path = tmp_path_factory.mktemp("qbundle") / "source.db"
    env = {k: v for k, v in os.environ.items() if k != "TBENCH_DB"}  # as cli_env, for a module-wide store
    made = run_cli([*QUALITY_ARGS, "--db", str(path)], env)
    assert made.returncode == 0, made.stderr
    store = Store(str(path))
    run = store.start_run(RunInfo(command="tbench run", device="cpu", sweep={"lengths": [1024]}))
    case = Case("sdpa-math", "exact", 1024, 1, 2, 2, 16, "fp32", True, "cpu", timing="cpu")
    store.record(run, MeasurementRecord(case, "ok", timing=Timing(2.0, 1.9, 2.1, 2.0, 0.1, 1.8, [1.8, 2.0, 2.2])))
    store.finish_run(run, "finished")
    store.close()
    return path


@pytest.fixture(params=BACKENDS)
def target(request, tmp_path) -> str:
    return fresh_url(request, tmp_path)


def _quality_rows(url: str) -> pd.DataFrame:
    store = Store(url, readonly=True)
    try:
        return quality_results(store)
    finally:
        store.close()


def _dashboard(url: str) -> pd.DataFrame:
    engine = create_engine(url)
    try:
        return load_quality(engine)
    finally:
        engine.dispose()


def _provenance(url: str) -> list[dict]:
    """Every quality run's columns, id included."""
    store = Store(url, readonly=True)
    try:
        with store.session() as session:
            return [{c.key: getattr(r, c.key) for c in QualityRun.__table__.columns}
                    for r in session.scalars(select(QualityRun).order_by(QualityRun.id))]
    finally:
        store.close()


def test_cli_round_trip_keeps_rows_ids_and_is_idempotent(source, target, tmp_path, cli_env):
    bundle = tmp_path / "q.json.gz"
    exported = run_cli(["export", "1", "--quality", "1", "--out", str(bundle), "--db", str(source)], cli_env)
    assert exported.returncode == 0, exported.stderr
    assert "Exported 1 run(s), 1 measurements and 1 quality run(s), 4 results" in exported.stderr
    read = read_bundle(bundle)
    assert read.version == 2 and len(read.quality_runs) == 1 and len(read.quality_runs[0].results) == 4
    assert read.quality_runs[0].command.startswith("tbench quality --device cpu")

    first = run_cli(["import", str(bundle), "--db", target], cli_env)
    assert first.returncode == 0, first.stderr
    uuid = read.quality_runs[0].uuid
    assert f"Imported quality run 1 ({uuid})" in first.stderr
    assert "1 run(s) imported, 0 already present" in first.stderr
    assert "1 quality run(s) imported, 0 already present" in first.stderr

    source_url = f"sqlite:///{source}"
    # The same rows, ids included (an empty store gives the ids the runs had), read by the store and the dashboard.
    expected = _quality_rows(source_url)
    assert len(expected) == 4 and (expected["status"] == "ok").all()
    pd.testing.assert_frame_equal(_quality_rows(target), expected)
    from_dashboard = _dashboard(source_url)
    assert len(from_dashboard) == 4 and set(from_dashboard["gpu"]) == {"CPU"}
    pd.testing.assert_frame_equal(_dashboard(target), from_dashboard)
    assert _provenance(target) == _provenance(source_url)

    second = run_cli(["import", str(bundle), "--db", target], cli_env)
    assert second.returncode == 0, second.stderr
    assert "0 quality run(s) imported, 1 already present" in second.stderr
    assert f"Skipped quality run {uuid}" in second.stderr
    assert execute(target, "select count(*) from quality_runs") == [(1,)]
    assert execute(target, "select count(*) from quality_results") == [(4,)]
    assert execute(target, "select count(*) from runs") == [(1,)]
    pd.testing.assert_frame_equal(_dashboard(target), from_dashboard)


def _record(key: str, accuracy: float | None) -> QualityRecord:
    return QualityRecord(config_key=key, task="mqar", method="sdpa-math", family="exact", order_m=None, dims="",
                         seq_len=32, vocab=32, items=4, d_model=64, layers=2, heads=2, mlp=False, dtype="fp32",
                         device="cpu", seed=0, lr=5e-3, steps=20, batch=8, status="ok" if accuracy else "error",
                         message="" if accuracy else "x'); DROP TABLE quality_runs; --", accuracy=accuracy,
                         scored=10, by_distance={"1": {"correct": 1, "total": 2}})


def _synthetic(path: Path, runs: int = 3) -> Store:
    store = Store(str(path))
    for i in range(runs):
        run = start_quality_run(store, RunInfo(command=f"tbench quality #{i}", device="cpu"))
        record_quality(store, run, _record("a", 0.5 + i / 10))
        record_quality(store, run, _record("b", None))
        finish_quality_run(store, run, "finished")
    return store


def test_ids_follow_the_bundle_order_in_an_empty_store(tmp_path):
    source = _synthetic(tmp_path / "s.db")
    write_bundle(export_bundle(source, [], [1, 2, 3]), tmp_path / "all.json")
    target = Store(str(tmp_path / "t.db"))
    result = import_runs(target, [], read_bundle(tmp_path / "all.json").quality_runs)
    uuids = execute(f"sqlite:///{tmp_path / 's.db'}", "select uuid from quality_runs order by id")
    assert result.quality_imported == [(u, i) for i, (u,) in enumerate(uuids, start=1)]
    assert _quality_rows(f"sqlite:///{tmp_path / 't.db'}").equals(_quality_rows(f"sqlite:///{tmp_path / 's.db'}"))
    # SQL-looking text is data
    [(message,)] = execute(f"sqlite:///{tmp_path / 't.db'}", "select message from quality_results where config_key "
                           "= 'b' and quality_run_id = 1")
    assert message == "x'); DROP TABLE quality_runs; --"


def test_quality_import_is_one_transaction(tmp_path):
    source = _synthetic(tmp_path / "s.db", runs=2)
    bundle = export_bundle(source, [], [1, 2])
    good, second = bundle.quality_runs
    broken = second.results[0].model_copy(update={"task": None})  # NOT NULL, set after validation
    second = second.model_copy(update={"results": [broken]})
    target = Store(str(tmp_path / "t.db"))
    with pytest.raises(Exception, match="nothing was imported"):
        import_runs(target, [], [good, second])
    assert execute(f"sqlite:///{tmp_path / 't.db'}", "select count(*) from quality_runs") == [(0,)]
    assert execute(f"sqlite:///{tmp_path / 't.db'}", "select count(*) from quality_results") == [(0,)]


def _good(tmp_path: Path) -> dict:
    return export_bundle(_synthetic(tmp_path / "src.db", runs=1), [], [1]).model_dump(mode="json")


def _mutations(tmp_path: Path) -> dict[str, tuple[dict | str, str]]:
    good = _good(tmp_path)
    run = good["quality_runs"][0]
    result = run["results"][0]
    return {
        "string for int": ({**good, "quality_runs": [{**run, "results": [{**result, "seq_len": "32"}]}]},
                           "quality_runs.0.results.0.seq_len"),
        "missing field": ({**good, "quality_runs": [{k: v for k, v in run.items() if k != "uuid"}]},
                          "quality_runs.0.uuid: Field required"),
        "extra field": ({**good, "quality_runs": [{**run, "admin": 1}]},
                        "quality_runs.0.admin: Extra inputs are not permitted"),
        "duplicate quality run": ({**good, "quality_runs": [run, run]}, "quality run uuid"),
        "duplicate quality config": ({**good, "quality_runs": [{**run, "results": [result, result]}]},
                                     "quality configuration 'a' appears twice"),
        "quality in version 1": ({**good, "version": 1}, "quality_runs need bundle version 2"),
        "task too long": ({**good, "quality_runs": [{**run, "results": [{**result, "task": "m" * 17}]}]},
                          "quality_runs.0.results.0.task"),
    }


def test_malformed_quality_bundles_are_refused(tmp_path):
    for name, (data, needle) in _mutations(tmp_path).items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(BundleError) as info:
            read_bundle(path)
        assert needle in str(info.value), (name, str(info.value))
    # the untouched bundle is read, so the refusals above are the mutations' doing
    (tmp_path / "base").mkdir()
    (tmp_path / "good.json").write_text(json.dumps(_good(tmp_path / "base")))
    assert len(read_bundle(tmp_path / "good.json").quality_runs) == 1


def test_cli_refuses_a_corrupted_bundle_in_one_line_and_imports_nothing(tmp_path, cli_env):
    good = tmp_path / "good.json.gz"
    write_bundle(export_bundle(_synthetic(tmp_path / "s.db", runs=1), [], [1]), good)
    corrupted = tmp_path / "corrupted.json.gz"
    raw = good.read_bytes()
    corrupted.write_bytes(raw[:-20])  # truncated in transit
    doctored = tmp_path / "doctored.json"
    data = json.loads(gzip.decompress(raw))
    data["quality_runs"][0]["results"][0]["accuracy"] = "0.9"
    doctored.write_text(json.dumps(data))
    db = tmp_path / "t.db"
    for bad, needle in ((corrupted, "truncated gzip"), (doctored, "quality_runs.0.results.0.accuracy")):
        result = run_cli(["import", str(good), str(bad), "--db", str(db)], cli_env)
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not db.exists() or sqlite3.connect(db).execute("select count(*) from quality_runs").fetchone() == (0,)
    imported = run_cli(["import", str(good), "--db", str(db)], cli_env)
    assert imported.returncode == 0 and "1 quality run(s) imported" in imported.stderr, imported.stderr


def test_cli_export_refuses_bad_quality_ids_in_one_line(tmp_path, cli_env):
    db = tmp_path / "s.db"
    _synthetic(db, runs=1).close()
    empty = tmp_path / "e.db"
    Store(str(empty)).close()
    out = str(tmp_path / "o.json")
    for args, needle in ((["--quality", "x"], "quality run 'x' is not a quality run id"),
                         (["--quality", "1,7"], "quality run 7 does not exist"),
                         (["--quality", "1", "--format", "pytest-benchmark"], "--quality needs --format bundle"),
                         ([], "nothing to export"),
                         (["--quality", "latest", "--db", str(empty)], "no quality runs in")):
        result = run_cli(["export", *args, "--out", out, *([] if "--db" in args else ["--db", str(db)])], cli_env)
        assert result.returncode == 2 and needle in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not Path(out).exists()
    latest = run_cli(["export", "--quality", "latest", "--out", out, "--db", str(db)], cli_env)
    assert latest.returncode == 0 and "Exported 1 quality run(s), 2 results" in latest.stderr, latest.stderr
    assert read_bundle(out).runs == [] and len(read_bundle(out).quality_runs) == 1
