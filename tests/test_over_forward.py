"""The `x fwd` column of `tbench show`: a training row's time over the same method's forward on the
same inputs, from a real SQLite store, and only where that forward was measured and ok."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tbench.analysis.over_forward import over_forward
from tbench.analysis.report import formatted_rows, run_markdown
from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.results.store import Store

# (method, order, mode, timing) -> median ms at N = 256; None = out of memory
TIMES = {
    ("tensorized-ref", 2, "fwd", "cpu"): 2.0,
    ("tensorized-ref", 2, "fwd_bwd", "cpu"): 9.0,
    ("tensorized-ref", 2, "bwd", "cpu"): 7.0,
    ("tensorized-ref", 3, "fwd", "cpu"): 4.0,
    ("tensorized-ref", 3, "fwd_bwd", "cpu"): 10.0,
    ("sdpa-math", None, "fwd", "cpu"): None,  # its forward failed: no ratio for its step
    ("sdpa-math", None, "fwd_bwd", "cpu"): 30.0,
    ("full", None, "fwd_bwd", "cpu"): 12.0,  # no forward measured at all
    ("sdpa-efficient", None, "fwd", "cpu"): 3.0,  # an exact method: no order, no dims
    ("sdpa-efficient", None, "fwd_bwd", "cpu"): 12.0,
}
DIMS = {2: (16, 16), 3: (4, 8, 8)}


def _record(method: str, order: int | None, mode: str, timing: str, median: float | None) -> MeasurementRecord:
    case = Case(method, "tensorized" if order else "exact", 256, 1, 2, 1, 32, "fp32", True, "cpu", order=order,
                dims=DIMS.get(order), timing=timing, mode=mode)
    if median is None:
        return MeasurementRecord(case, "oom", message="out of memory")
    return MeasurementRecord(case, "ok", timing=Timing(median, median * 0.9, median * 1.2, median, 0.0,
                                                       median * 0.8, [median] * 5))


@pytest.fixture
def measurements(tmp_path) -> pd.DataFrame:
    store = Store(str(tmp_path / "modes.db"))
    run = store.start_run(RunInfo(command="tbench run --device cpu", device="cpu", environment={"cpu": "Test"}))
    for (method, order, mode, timing), median in TIMES.items():
        store.record(run, _record(method, order, mode, timing, median))
    store.finish_run(run, "finished")
    return store.measurements()


def _by_row(df: pd.DataFrame, values: pd.Series) -> dict[tuple, float]:
    return {(r.method, None if pd.isna(r.order_m) else int(r.order_m), r.mode): v
            for r, v in zip(df.itertuples(index=False), values, strict=True)}


def test_each_training_row_is_divided_by_its_own_forward(measurements):
    ratio = _by_row(measurements, over_forward(measurements))
    assert ratio[("tensorized-ref", 2, "fwd_bwd")] == pytest.approx(4.5)
    assert ratio[("tensorized-ref", 2, "bwd")] == pytest.approx(3.5)
    # the order's own forward, not the other order's (4.0, not 2.0)
    assert ratio[("tensorized-ref", 3, "fwd_bwd")] == pytest.approx(2.5)
    assert ratio[("sdpa-efficient", None, "fwd_bwd")] == pytest.approx(4.0)
    for key in [("tensorized-ref", 2, "fwd"), ("tensorized-ref", 3, "fwd"), ("sdpa-math", None, "fwd"),
                ("sdpa-math", None, "fwd_bwd"), ("full", None, "fwd_bwd")]:
        assert math.isnan(ratio[key]), key


def test_a_forward_timed_another_way_is_not_the_yardstick(measurements):
    # the same forward, but its timing mode differs from the training rows': no ratio
    retimed = measurements.assign(timing_mode=measurements["timing_mode"].where(measurements["mode"] != "fwd", "graph"))
    assert over_forward(retimed).isna().all()


def test_show_and_markdown_print_the_column_only_where_it_has_values(measurements):
    rows = {(r["method"], r["m"], r["mode"]): r["x fwd"] for r in formatted_rows(measurements, None, None)}
    assert rows[("tensorized-ref", "2", "fwd_bwd")] == "4.50x" and rows[("tensorized-ref", "2", "fwd")] == "-"
    assert rows[("full", "", "fwd_bwd")] == "-"
    header = next(line for line in run_markdown(measurements, None).splitlines() if line.startswith("| family"))
    assert "| spread | x fwd |" in header
    forward_only = measurements[measurements["mode"] == "fwd"]
    header = next(line for line in run_markdown(forward_only, None).splitlines() if line.startswith("| family"))
    assert "x fwd" not in header and "mode" not in header
