"""Bundles and pytest-benchmark JSON: round trips between real SQLite files, and hostile files refused."""

from __future__ import annotations

import gzip
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.results.bundle import MAX_BYTES, BundleError, export_bundle, import_runs, read_bundle, write_bundle
from tbench.results.store import Store

EVIL = "x'); DROP TABLE runs; --"


def _make_db(path: Path, command: str = "tbench run --lengths 4k") -> Store:
    store = Store(str(path))
    run_id = store.start_run(RunInfo(command=command, device="cuda", gpu_name="NVIDIA H100 80GB HBM3",
                                     driver="550.54", torch_version="2.4.0", git_commit="abc123",
                                     sweep={"baseline": "flash2"}, environment={"peaks": {"tflops": 989}}))
    for method, order, median, status in (("flash2", None, 1.25, "ok"), ("tensorized", 2, 0.5, "ok"),
                                          ("sdpa-math", None, None, "oom")):
        case = Case(method=method, family="tensorized" if order else "exact", seq_len=4096, batch=1, heads=32,
                    kv_heads=8, head_dim=128, dtype="bf16", causal=True, device="cuda", order=order,
                    dims=(64, 64) if order else None)
        timing = Timing(median, median * 0.98, median * 1.02, median, 0.01, median * 0.97,
                        [median * (1 + 0.001 * i) for i in range(-5, 6)], 0.002) if median else None
        store.record(run_id, MeasurementRecord(case, status, message=EVIL if status == "oom" else "", timing=timing,
                                               flops=1e12))
    store.finish_run(run_id, "finished")
    return store


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as con:
        return con.execute("select r.uuid, r.command, r.gpu_name, r.sweep, m.config_key, m.status, m.message, "
                           "m.median_ms, m.samples_ms, m.dims, m.order_m from measurements m join runs r "
                           "on r.id = m.run_id order by m.config_key").fetchall()


def test_round_trip_and_import_twice_is_a_no_op(tmp_path):
    source = _make_db(tmp_path / "a.db", command=EVIL)
    bundle_path = tmp_path / "b.json"
    write_bundle(export_bundle(source, [1]), bundle_path)

    target = Store(str(tmp_path / "b.db"))
    first = import_runs(target, read_bundle(bundle_path).runs)
    assert len(first.imported) == 1 and not first.skipped
    assert _rows(tmp_path / "b.db") == _rows(tmp_path / "a.db")
    # SQL-looking text is data: stored verbatim, tables intact
    assert _rows(tmp_path / "b.db")[0][1] == EVIL
    assert any(r[6] == EVIL for r in _rows(tmp_path / "b.db"))

    second = import_runs(target, read_bundle(bundle_path).runs)
    assert not second.imported and len(second.skipped) == 1
    with sqlite3.connect(tmp_path / "b.db") as con:
        assert con.execute("select count(*) from runs").fetchone() == (1,)
        assert con.execute("select count(*) from measurements").fetchone() == (3,)


def test_cli_export_import(tmp_path, cli_env):
    _make_db(tmp_path / "a.db")
    out = tmp_path / "bundle.json"
    exported = run_cli(["export", "1", "--out", str(out), "--db", str(tmp_path / "a.db")], cli_env)
    assert exported.returncode == 0, exported.stderr
    for expected in ("1 run(s) imported, 0 already present", "0 run(s) imported, 1 already present"):
        result = run_cli(["import", str(out), "--db", str(tmp_path / "c.db")], cli_env)
        assert result.returncode == 0, result.stderr
        assert expected in result.stderr
    assert _rows(tmp_path / "c.db") == _rows(tmp_path / "a.db")



def test_cli_gzip_bundle(tmp_path, cli_env):
    _make_db(tmp_path / "a.db")
    out = tmp_path / "bundle.json.gz"
    exported = run_cli(["export", "1", "--out", str(out), "--db", str(tmp_path / "a.db")], cli_env)
    assert exported.returncode == 0, exported.stderr
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert len(read_bundle(out).runs[0].measurements) == 3
    result = run_cli(["import", str(out), "--db", str(tmp_path / "c.db")], cli_env)
    assert result.returncode == 0, result.stderr
    assert _rows(tmp_path / "c.db") == _rows(tmp_path / "a.db")


def test_bad_gzip_files_are_refused(tmp_path):
    text = json.dumps(_bundle_dict(tmp_path)).encode()
    packed = gzip.compress(text)
    cases = {
        "bomb": (gzip.compress(b" " * 5000 + text), "once decompressed"),
        "truncated": (packed[:-20], "truncated gzip"),
        "trailing": (packed + b"more", "data after its gzip stream"),
        "corrupt": (packed[:10] + b"\xff" * 40 + packed[50:], "not valid gzip"),
    }
    for name, (raw, needle) in cases.items():
        path = tmp_path / f"{name}.json.gz"
        path.write_bytes(raw)
        with pytest.raises(BundleError, match=needle):
            read_bundle(path, max_bytes=len(text) + 1000)
    good = tmp_path / "good.json.gz"
    good.write_bytes(packed)
    assert len(read_bundle(good, max_bytes=len(text) + 1000).runs) == 1


def _bundle_dict(tmp_path: Path) -> dict:
    store = _make_db(tmp_path / "src.db")
    return export_bundle(store, [1]).model_dump(mode="json")


def _mutations(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (file text, expected message)."""
    good = _bundle_dict(tmp_path)
    cases: dict[str, tuple[str, str]] = {}

    def case(name: str, data: object, needle: str) -> None:
        cases[name] = (data if isinstance(data, str) else json.dumps(data), needle)

    case("wrong version", {**good, "version": 3}, "bundle version 3; this tbench reads versions 1 and 2")
    case("version not a number", {**good, "version": "2"}, "bundle version '2'")
    case("version true", {**good, "version": True}, "bundle version True")
    case("not a bundle", {**good, "format": "other"}, "is not a tbench bundle")
    case("not json", "{not json", "is not valid JSON")
    case("top level list", [good], "is not a tbench bundle")
    run = good["runs"][0]
    no_uuid = {k: v for k, v in run.items() if k != "uuid"}
    case("missing field", {**good, "runs": [no_uuid]}, "runs.0.uuid: Field required")
    bad_m = dict(run["measurements"][0], seq_len="4096")
    case("string for int", {**good, "runs": [{**run, "measurements": [bad_m]}]}, "runs.0.measurements.0.seq_len")
    case("bool for string", {**good, "runs": [{**run, "command": True}]}, "runs.0.command")
    case("extra field", {**good, "runs": [{**run, "admin": 1}]}, "runs.0.admin: Extra inputs are not permitted")
    case("duplicate run", {**good, "runs": [run, run]}, "appears twice")
    case("duplicate config", {**good, "runs": [{**run, "measurements": run["measurements"] * 2}]}, "appears twice")
    text = json.dumps(good)
    case("duplicate key", text[:-1] + ', "version": 1}', "key 'version' appears twice")
    case("nan", text.replace('"median_ms": 1.25', '"median_ms": NaN'), "'NaN' is not valid JSON")
    return cases


def test_malformed_bundles_are_refused(tmp_path):
    for name, (text, needle) in _mutations(tmp_path).items():
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(text)
        with pytest.raises(BundleError) as info:
            read_bundle(path)
        assert needle in str(info.value), (name, str(info.value))


def test_cli_refuses_bad_files_in_one_line_and_imports_nothing(tmp_path, cli_env):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_bundle_dict(tmp_path)))
    bad = tmp_path / "bad.json"
    text, needle = _mutations(tmp_path)["string for int"]
    bad.write_text(text)
    db = tmp_path / "t.db"
    result = run_cli(["import", str(good), str(bad), "--db", str(db)], cli_env)
    assert result.returncode == 2 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not db.exists() or sqlite3.connect(db).execute("select count(*) from runs").fetchone() == (0,)


def test_oversized_file_is_refused_before_reading(tmp_path, cli_env):
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: no disk space used
    with pytest.raises(BundleError, match="MiB"):
        read_bundle(huge)
    result = run_cli(["import", str(huge), "--db", str(tmp_path / "t.db")], cli_env)
    assert result.returncode == 2 and "256 MiB" in result.stderr


def test_import_is_one_transaction(tmp_path):
    good = _bundle_dict(tmp_path)
    target = Store(str(tmp_path / "t.db"))
    from tbench.results.bundle import BundleModel

    first = BundleModel.model_validate(good).runs[0]
    # a second run whose measurement breaks a database constraint (a string too long for SQLite? no:
    # SQLite ignores lengths) -> a NULL in a NOT NULL column, set after validation
    second = first.model_copy(update={"uuid": "00000000-0000-0000-0000-000000000002"})
    broken = second.measurements[0].model_copy(update={"method": None})
    second = second.model_copy(update={"measurements": [broken]})
    with pytest.raises(Exception, match="nothing was imported"):
        import_runs(target, [first, second])
    with sqlite3.connect(tmp_path / "t.db") as con:
        assert con.execute("select count(*) from runs").fetchone() == (0,)
        assert con.execute("select count(*) from measurements").fetchone() == (0,)


def test_pytest_benchmark_round_trip_and_compare(tmp_path, cli_env):
    _make_db(tmp_path / "a.db")
    out = tmp_path / "0001_tbench.json"
    exported = run_cli(["export", "1", "--format", "pytest-benchmark", "--out", str(out), "--db",
                        str(tmp_path / "a.db")], cli_env)
    assert exported.returncode == 0, exported.stderr
    data = json.loads(out.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= data.keys()
    assert len(data["benchmarks"]) == 2  # the oom configuration has no timing
    flash = next(b for b in data["benchmarks"] if b["group"] == "flash2")
    assert flash["stats"]["median"] == pytest.approx(1.25e-3)  # seconds, like pytest-benchmark
    assert flash["stats"]["rounds"] == 11 and len(flash["stats"]["data"]) == 11
    assert flash["stats"]["ops"] == pytest.approx(1 / flash["stats"]["mean"])

    # pytest-benchmark's own tool reads it
    compare = subprocess.run([str(Path(sys.executable).parent / "pytest-benchmark"), "compare", str(out)],
                             capture_output=True, text=True, timeout=60)
    assert compare.returncode == 0, compare.stderr
    assert "tensorized[N4096|m2|64x64" in compare.stdout and "Failed to load" not in compare.stderr

    imported = run_cli(["import", str(out), "--db", str(tmp_path / "p.db")], cli_env)
    assert imported.returncode == 0, imported.stderr
    with sqlite3.connect(tmp_path / "p.db") as con:
        rows = con.execute("select config_key, method, order_m, dims, status, median_ms, n_samples from "
                           "measurements order by config_key").fetchall()
        gpu = con.execute("select gpu_name from runs").fetchone()[0]
    assert [r[:5] for r in rows] == [
        ("flash2|N4096|m-|-|B1|H32|KV8|D128|bf16|causal|events", "flash2", None, "", "ok"),
        ("tensorized|N4096|m2|64x64|B1|H32|KV8|D128|bf16|causal|events", "tensorized", 2, "64x64", "ok")]
    assert rows[0][5] == pytest.approx(1.25) and rows[0][6] == 11 and gpu == "NVIDIA H100 80GB HBM3"
    again = run_cli(["import", str(out), "--db", str(tmp_path / "p.db")], cli_env)
    assert "1 already present" in again.stderr


def test_foreign_pytest_benchmark_file(tmp_path, cli_env):
    foreign = {
        "machine_info": {"node": "ci-1", "python_version": "3.11.7", "system": "Linux", "cpu": {}},
        "commit_info": {"id": "deadbeef", "dirty": True},
        "benchmarks": [
            {"group": None, "name": "test_sort[100]", "fullname": "tests/test_x.py::test_sort[100]",
             "params": {"n": 100}, "extra_info": {}, "options": {},
             "stats": {"min": 0.001, "max": 0.003, "mean": 0.002, "stddev": 0.0005, "rounds": 3,
                       "median": 0.002, "data": [0.001, 0.002, 0.003]}},
            {"group": None, "name": "test_parse", "fullname": "tests/test_x.py::test_parse", "params": None,
             "stats": {"min": 0.01, "max": 0.01, "mean": 0.01, "stddev": 0, "rounds": 1, "median": 0.01}},
        ],
        "datetime": "2024-05-01T10:00:00.000000", "version": "4.0.0",
    }
    path = tmp_path / "foreign.json"
    path.write_text(json.dumps(foreign))
    db = tmp_path / "f.db"
    for expected in ("1 run(s) imported", "1 already present"):
        result = run_cli(["import", str(path), "--db", str(db)], cli_env)
        assert result.returncode == 0 and expected in result.stderr, result.stderr
    with sqlite3.connect(db) as con:
        rows = con.execute("select method, status, median_ms, samples_ms from measurements order by method").fetchall()
        commit = con.execute("select git_commit from runs").fetchone()[0]
    assert rows[0][:3] == ("test_parse", "ok", pytest.approx(10.0)) and rows[0][3] in (None, "null")
    assert rows[1][:3] == ("test_sort[100]", "ok", pytest.approx(2.0)) and json.loads(rows[1][3]) == [1.0, 2.0, 3.0]
    assert commit == "deadbeef-dirty"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**foreign, "benchmarks": [{"name": "x", "stats": {"mean": "fast"}}]}))
    result = run_cli(["import", str(broken), "--db", str(db)], cli_env)
    assert result.returncode == 2 and "benchmarks.0.stats" in result.stderr
