"""One speedup definition: the terminal table, the Markdown report and the dashboard agree on one
store, including the cases where the old definitions parted (a baseline measured at several
orders m, a baseline that failed on some shapes)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from tbench.analysis.report import formatted_rows, run_markdown
from tbench.analysis.speedup import pick_baseline, with_speedup
from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.core.sweep import BASELINE_PREFERENCE, BEST_EXACT, preferred_baseline
from tbench.dashboard import data
from tbench.results.store import Store

LENGTHS = (256, 512)
# (method, order) -> median ms per length, for heads 2 and heads 4; None = out of memory
TIMES = {
    2: {("sdpa-math", None): [2.0, 8.0], ("full", None): [1.0, None], ("tensorized-ref", 2): [3.0, 6.0],
        ("tensorized-ref", 3): [1.5, 4.0]},
    4: {("sdpa-math", None): [4.0, None], ("full", None): [2.0, 5.0], ("tensorized-ref", 2): [8.0, 9.0],
        ("tensorized-ref", 3): [2.0, 3.0]},
}


def _record(heads: int, method: str, order: int | None, n: int, median: float | None) -> MeasurementRecord:
    family = "tensorized" if order else "exact"
    dims = {(256, 2): (16, 16), (256, 3): (4, 8, 8), (512, 2): (16, 32), (512, 3): (8, 8, 8)}.get((n, order))
    case = Case(method, family, n, 1, heads, 1, 32, "fp32", True, "cpu", order=order, dims=dims, timing="cpu")
    if median is None:
        return MeasurementRecord(case, "oom", message="out of memory")
    timing = Timing(median, median * 0.9, median * 1.2, median, 0.0, median * 0.8, [median] * 5)
    return MeasurementRecord(case, "ok", timing=timing)


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(str(tmp_path / "speedup.db"))
    run = store.start_run(RunInfo(command="tbench run --device cpu", device="cpu", environment={"cpu": "Test"}))
    for heads, times in TIMES.items():
        for (method, order), values in times.items():
            for n, median in zip(LENGTHS, values, strict=True):
                store.record(run, _record(heads, method, order, n, median))
    store.finish_run(run, "finished")
    return store


def _value(text: str) -> float | None:
    match = re.match(r"^(\d+\.\d+)[x×]", text.strip())
    return float(match.group(1)) if match else None


def terminal(df: pd.DataFrame, baseline: str) -> dict[tuple, float | None]:
    return {(r["shape"][1], int(r["N"]), r["method"], r["m"]): _value(r["speedup"])
            for r in formatted_rows(df, baseline, None)}


def markdown(df: pd.DataFrame, baseline: str) -> dict[tuple, float | None]:
    found: dict[tuple, float | None] = {}
    heads, headers = None, []
    for line in run_markdown(df, baseline).splitlines():
        title = re.match(r"^\*\*B=\d+ H=(\d+) ", line)
        cells = [c.strip() for c in line.strip("|").split("|")]
        if title:
            heads = int(title.group(1))
        elif line.startswith("| family |"):
            headers = cells
        elif line.startswith("| "):
            row = dict(zip(headers, cells, strict=True))
            found[(heads, int(row["N"]), row["method"], row["m"])] = _value(row[f"x{baseline}"])
    return found


def dashboard(store: Store, baseline: str) -> dict[tuple, float | None]:
    engine = data.open_readonly(store.url)
    found: dict[tuple, float | None] = {}
    for row in data.load_slices(engine).itertuples():
        df = data.load_slice(engine, row.gpu, row.shape)
        for n in LENGTHS:
            table = data.format_leaderboard(data.leaderboard(df, n, baseline), baseline)
            for cell in table.itertuples():
                found[(row.shape.heads, n, cell.method, cell.m)] = _value(cell.speedup)
    return found


@pytest.mark.parametrize("baseline", ["sdpa-math", "tensorized-ref", "full"])
def test_terminal_markdown_and_dashboard_agree(store, baseline):
    df = store.measurements()
    shown = terminal(df, baseline)
    assert len(shown) == 16
    assert markdown(df, baseline) == shown
    assert dashboard(store, baseline) == shown


def test_speedup_values_follow_the_definition(store):
    df = store.measurements()
    math_base = terminal(df, "sdpa-math")
    assert math_base[(2, 256, "full", "")] == 2.0  # 2.0 / 1.0 on the same shape
    assert math_base[(4, 256, "full", "")] == 2.0  # 4.0 / 2.0: heads 4 against its own baseline
    assert math_base[(2, 512, "tensorized-ref", "2")] == pytest.approx(1.33)
    assert math_base[(4, 512, "full", "")] is None  # the baseline ran out of memory on that shape
    assert math_base[(2, 512, "full", "")] is None  # the method did
    # a baseline at several orders m: its fastest ok row on the shape counts
    tensorized = terminal(df, "tensorized-ref")
    assert tensorized[(2, 256, "tensorized-ref", "3")] == 1.0
    assert tensorized[(2, 256, "tensorized-ref", "2")] == 0.5
    assert tensorized[(2, 256, "sdpa-math", "")] == 0.75


def test_with_speedup_keeps_rows_and_their_order(store):
    df = store.measurements().sample(frac=1.0, random_state=3)
    out = with_speedup(df, "sdpa-math")
    assert list(out["id"]) == list(df["id"]) and list(out.index) == list(df.index)
    assert out.loc[out["status"] != "ok", "speedup"].isna().all()
    assert with_speedup(df, None)["speedup"].isna().all()


def test_one_baseline_order_for_cli_report_and_dashboard(store):
    assert BASELINE_PREFERENCE[:2] == ("flash2", "sdpa-cudnn")
    assert preferred_baseline(["sdpa-math", "sdpa-efficient", "tensorized"]) == "sdpa-efficient"
    assert preferred_baseline(["tensorized"]) is None
    # by default the fastest exact method on each shape; a named one without ok rows falls back on it
    assert pick_baseline(store.measurements()).method == BEST_EXACT
    assert pick_baseline(store.measurements(), "flash2").method == BEST_EXACT
    assert pick_baseline(store.measurements(), "sdpa-math").method == "sdpa-math"
    assert data.pick_baseline is pick_baseline
