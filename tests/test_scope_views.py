"""Operator views and reports compare like with like: on a real SQLite store holding op rows, layer
rows and paper-protocol rows of one attention shape, the dashboard's per-shape views see the op rows
timed by tbench's protocol only, and every speedup is taken within one scope, model, layers and
protocol."""

from __future__ import annotations

from pathlib import Path

import e2e_store
import pytest
from conftest import run_cli

from tbench.analysis.report import formatted_rows, run_markdown
from tbench.dashboard import data
from tbench.dashboard.compare import compare_runs
from tbench.results.store import Store

SHAPE = data.Shape("bf16", True, e2e_store.BATCH, 32, 8, 128, "events")
# An op-scope flash2 row at 4k timed by the paper's protocol, faster than any row of tbench's own.
OP_PAPER_MS = 0.25


def _fill(path: Path) -> str:
    """e2e_store's op run (1) and layer run (2), and a third run: the operator under the paper's protocol."""
    url = e2e_store.fill(path)
    store = Store(str(path))
    run = store.start_run(e2e_store._run_info("tbench run --preset llama3-8b --protocol paper --batch 5"))
    store.record(run, e2e_store._record("flash2", None, 4096, OP_PAPER_MS, "op", "paper", OP_PAPER_MS))
    store.finish_run(run, "finished")
    store.close()
    return url


@pytest.fixture
def url(tmp_path: Path) -> str:
    return _fill(tmp_path / "scopes.db")


def test_the_shape_list_counts_operator_rows_only(url):
    slices = data.load_slices(data.open_readonly(url))
    # 3 methods x 2 lengths at op scope; the 8 layer rows and the paper-protocol op row are left out
    assert list(slices["shape"]) == [SHAPE]
    assert list(slices["n"]) == [6]


def test_the_leaderboard_data_has_only_operator_rows(url):
    engine = data.open_readonly(url)
    assert data.load_slice_runs(engine, e2e_store.GPU, SHAPE) == [1]
    frame = data.load_slice(engine, e2e_store.GPU, SHAPE)
    assert set(frame["scope"]) == {"op"} and set(frame["protocol"]) == {"tbench"}
    assert len(frame) == 6
    board = data.leaderboard(frame, 4096, "flash2").set_index("method")
    assert list(board.index) == ["tensorized", "flash3", "flash2"]
    assert list(board["median_ms"]) == [0.5, 1.5, 2.0]  # the op times, never a layer's 5-10 ms
    assert board.loc["tensorized", "speedup"] == pytest.approx(4.0)
    # the same when one run is chosen: the layer run has no operator rows to offer
    assert data.load_slice(engine, e2e_store.GPU, SHAPE, run_id=2).empty
    assert data.load_slice(engine, e2e_store.GPU, SHAPE, run_id=3).empty


def test_every_per_shape_view_gets_operator_speedups(url):
    frame = data.load_slice(data.open_readonly(url), e2e_store.GPU, SHAPE)
    best = data.family_best(frame, "flash2").set_index(["family", "seq_len"])
    assert best.loc[("tensorized", 8192), "speedup"] == pytest.approx(8.0)
    assert best.loc[("exact", 4096), "median_ms"] == 1.5
    crossover = data.crossover_table(frame, "flash2").set_index("series")
    assert crossover.loc["tensorized m=2", "speedup at longest"] == "8.00× at 8k"
    order = data.order_table(frame, "flash2")
    assert list(order["speedup"]) == pytest.approx([4.0, 8.0])
    points = data.curve_points(data.with_speedup(frame, "flash2"))
    assert sorted(points["median_ms"]) == [0.5, 1.0, 1.5, 2.0, 6.0, 8.0]


def test_report_speedups_are_taken_within_each_scope_and_protocol(url):
    df = Store(url, readonly=True).measurements()
    rows = formatted_rows(df, "flash2", None)
    speedup = {(r["shape"][7], r["shape"][10], r["method"], int(r["N"])): r["speedup"] for r in rows}
    assert speedup[("op", "tbench", "tensorized", 4096)] == "4.00x"  # 2.0 / 0.5 ms
    assert speedup[("layer", "tbench", "tensorized", 4096)] == "2.00x"  # 10 / 5 ms
    assert speedup[("layer", "tbench", "tensorized", 8192)] == "4.00x"  # 40 / 10 ms
    assert speedup[("layer", "paper", "tensorized", 4096)] == "1.00x"  # both 1 ms (medians)
    assert speedup[("op", "paper", "flash2", 4096)] == "1.00x"
    assert speedup[("layer", "tbench", "flash2", 4096)] == "1.00x"
    markdown = run_markdown(df, "flash2")
    titles = [line for line in markdown.splitlines() if line.startswith("**")]
    assert len(titles) == 4  # op, layer, layer under the paper's protocol, op under the paper's protocol
    assert sum("scope layer: llama3-8b, 1 layer" in t for t in titles) == 2
    assert sum("protocol paper" in t for t in titles) == 2


def test_show_of_a_layer_run_keeps_the_protocols_apart(url, cli_env):
    result = run_cli(["show", "2", "--db", url, "--baseline", "flash2"], cli_env)
    assert result.returncode == 0, result.stderr
    sections = result.stdout.split("scope layer: llama3-8b, 1 layer")[1:]
    assert len(sections) == 2
    [paper] = [s for s in sections if s.startswith(", protocol paper")]
    [tbench] = [s for s in sections if not s.startswith(", protocol paper")]
    # tbench's protocol: 10/5 and 40/10 ms; the paper's: 1/1 ms (a mixed baseline would give 0.20x)
    assert "2.00x" in tbench and "4.00x" in tbench and "0.20x" not in tbench
    assert "1.00x" in paper and "0.20x" not in paper and "2.00x" not in paper


def test_runs_say_what_they_time(url):
    engine = data.open_readonly(url)
    runs = data.load_runs(engine).set_index("id")
    assert runs.loc[1, "scopes"] == "op"
    assert runs.loc[2, "scopes"] == "layer llama3-8b, layer llama3-8b, paper protocol"
    assert runs.loc[3, "scopes"] == "op, paper protocol"
    labels = {run_id: data.run_label({**row, "id": run_id}) for run_id, row in runs.iterrows()}
    assert labels[1].endswith("· 6 rows")  # an operator run reads as before
    assert labels[2].endswith("· 8 rows · layer llama3-8b, layer llama3-8b, paper protocol")
    assert data.load_run(engine, 2)["scope_counts"] == {"layer llama3-8b": 6,
                                                        "layer llama3-8b, paper protocol": 2}
    assert data.load_run(engine, 1)["scope_counts"] == {"op": 6}


def test_compared_runs_carry_their_scope(url):
    engine = data.open_readonly(url)
    table = compare_runs(data.load_run_measurements(engine, 1), data.load_run_measurements(engine, 2))
    # no configuration of one scope is matched with one of another
    assert set(table["verdict"]) == {"only before", "only after"}
    texts = dict(zip(table["config_key"], data.scope_texts(table), strict=True))
    assert {texts[k] for k in table["config_key"] if "|layer|" in k} == {"layer llama3-8b",
                                                                       "layer llama3-8b, paper protocol"}
    assert {texts[k] for k in table["config_key"] if "|layer|" not in k} == {"op"}


def test_scope_texts():
    assert data.scope_text("op") == "op"
    assert data.scope_text("op", "", 0, "paper") == "op, paper protocol"
    assert data.scope_text("layer", "llama3-8b", 1) == "layer llama3-8b"
    assert data.scope_text("model", "llama3-8b", 4, "tbench") == "model llama3-8b ×4 layers"
    assert data.scope_text("model", "tiny", 1, "paper") == "model tiny ×1 layer, paper protocol"
    assert data.scope_text(None) == "op"  # a store from before scopes


def test_the_gate_matches_a_layer_row_only_with_the_same_layer_row(tmp_path):
    from tbench.analysis.baselines import load_side
    from tbench.analysis.gate import gate

    path = tmp_path / "gate.db"
    store = Store(str(path))
    for command, rows in (("before", [("op", 2.0)]), ("after", [("op", 2.0), ("layer", 10.0)])):
        run = store.start_run(e2e_store._run_info(command))
        for scope, ms in rows:
            store.record(run, e2e_store._record("flash2", None, 4096, ms, scope))
        store.finish_run(run, "finished")
    store.close()
    report = gate(load_side("1", str(path), tmp_path), load_side("2", str(path), tmp_path))
    verdicts = {v.key.split("|")[-3] if "|layer|" in v.key else "op": v.verdict for v in report.verdicts}
    # the layer's 10 ms is new in the candidate, not a fivefold slowdown of the operator's 2 ms
    assert verdicts == {"op": "SAME", "layer": "SKIP"}
