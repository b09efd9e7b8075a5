"""The host-bound mark: a timed row whose call took the host longer to issue than the GPU to run,
in `tbench show`'s table (terminal and Markdown) and the dashboard's leaderboard, from a real store
on each backend (a SQLite file, a PostgreSQL server: the host time is read from the rows' JSON)."""

from __future__ import annotations

import math

import pytest
from backends import BACKENDS, fresh_url
from conftest import run_cli
from pg import pg_server_url, pg_url  # noqa: F401  (fixtures)

from tbench.analysis.host import host_bound_ms, host_bound_text
from tbench.analysis.report import run_markdown
from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.dashboard import data
from tbench.results.store import Store

SHAPE = data.Shape("bf16", True, 1, 4, 2, 64, "events")
# method, median ms, device state: issued in 1.37 ms for 0.32 ms of GPU work; in 0.02 ms for 1.0 ms;
# a row stored before host times were (no host_ms)
ROWS = (("tensorized", 0.32, {"host_ms": 1.3674, "hold_ms": 2.07}),
        ("sdpa-cudnn", 1.0, {"host_ms": 0.02, "hold_ms": 0.05}),
        ("flash2", 0.5, {}))


def test_host_bound_is_where_the_host_takes_longer_than_the_gpu():
    assert host_bound_ms(1.3674, 0.32) == pytest.approx(1.3674)
    assert host_bound_ms(0.02, 1.0) is None and host_bound_ms(1.0, 1.0) is None
    for missing in ((None, 1.0), (1.0, None), (math.nan, 1.0), (1.0, math.nan), (2.0, 0.0), ("1.4", 0.3)):
        assert host_bound_ms(*missing) is None, missing
    assert host_bound_text(1.3674) == "host-bound: 1.37 ms to issue"


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    return fresh_url(request, tmp_path)


@pytest.fixture
def store(url) -> Store:
    store = Store(url)
    run = store.start_run(RunInfo(command="tbench run", device="cuda", gpu_name="NVIDIA H100 80GB HBM3"))
    for method, ms, state in ROWS:
        tensorized = method == "tensorized"
        case = Case(method, "tensorized" if tensorized else "exact", 4096, 1, 4, 2, 64, "bf16", True, "cuda",
                    order=2 if tensorized else None, dims=(64, 64) if tensorized else None)
        store.record(run, MeasurementRecord(case, "ok", timing=Timing(ms, ms, ms, ms, 0.0, ms, [ms] * 3),
                                            device_state=state))
    store.finish_run(run, "finished")
    yield store
    store.close()


def test_show_marks_the_host_bound_row_only(store, url, cli_env):
    markdown = run_markdown(store.measurements([1]), "flash2")
    marked = [line for line in markdown.splitlines() if "host-bound" in line]
    assert len(marked) == 1 and "| tensorized |" in marked[0] and "ok (host-bound: 1.37 ms to issue)" in marked[0]
    shown = run_cli(["show", "--db", url], cli_env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("host-bound") == 1 and "1.37 ms to issue" in shown.stdout


def test_the_leaderboard_marks_the_host_bound_row_only(store):
    rows = data.load_slice(store.engine, "NVIDIA H100 80GB HBM3", SHAPE)
    assert rows.set_index("method")["host_ms"].loc["tensorized"] == pytest.approx(1.3674)
    assert math.isnan(rows.set_index("method")["host_ms"].loc["flash2"])
    status = data.format_leaderboard(data.leaderboard(rows, 4096, "flash2"), "flash2").set_index("method")["status"]
    assert status.to_dict() == {"tensorized": "ok (host-bound: 1.37 ms to issue)", "flash2": "ok", "sdpa-cudnn": "ok"}
