"""The roofline: the device's floor for a measurement as a share of its time, and which floor binds;
in `tbench show`'s table and the dashboard's leaderboard, from a real SQLite store."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tbench.analysis.report import run_markdown
from tbench.analysis.roofline import Bound, roofline, roofline_text, with_roofline
from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.dashboard import data
from tbench.results.store import Store

PEAKS = {"copy_tbps": 4.0, "matmul_tflops": 800.0, "matmul_dtype": "bf16"}


def test_the_floor_is_the_larger_of_the_bytes_and_the_flops_time():
    # 1e12 FLOPs and 2e9 bytes in 10 ms: floors 1e12 / 800e12 s = 1.25 ms and 2e9 / 4e12 s = 0.5 ms
    flops, nbytes, ms = 1e12, 2e9, 10.0
    found = roofline(flops / (ms * 1e-3) / 1e12, nbytes / (ms * 1e-3) / 1e12, "bf16", PEAKS)
    assert found is not None and found.bound is Bound.FLOPS and found.share == pytest.approx(1.25 / 10)
    # 20 GB instead: the bytes floor, 5 ms, binds
    found = roofline(flops / (ms * 1e-3) / 1e12, 2e10 / (ms * 1e-3) / 1e12, "bf16", PEAKS)
    assert found is not None and found.bound is Bound.BYTES and found.share == pytest.approx(5 / 10)
    assert roofline_text(found) == "50% bytes"
    assert roofline_text(roofline(1.0, 0.001, "bf16", PEAKS)) == "0.12% flops"


def test_no_roofline_without_a_rate_measured_for_the_dtype_or_without_peaks():
    assert roofline(100.0, 1.0, "fp16", PEAKS) is not None  # fp16 runs at bf16's tensor-core rate
    assert roofline(100.0, 1.0, "fp32", PEAKS) is None  # the run measured bf16 matmuls only
    assert roofline(1.0, 0.1, "fp32", {**PEAKS, "matmul_dtype": "fp32"}) is not None  # a CPU run
    assert roofline(100.0, 1.0, "bf16", None) is None
    assert roofline(100.0, 1.0, "bf16", {"matmul_tflops": 800.0}) is None
    assert roofline(None, 1.0, "bf16", PEAKS) is None and roofline(100.0, math.nan, "bf16", PEAKS) is None
    assert roofline_text(None) == "-"


def test_with_roofline_uses_each_rows_run_and_only_timed_rows():
    df = pd.DataFrame({"run_id": [1, 2, 1], "status": ["ok", "ok", "oom"], "dtype": ["bf16"] * 3,
                       "tflops": [400.0, 400.0, None], "tbps": [1.0, 1.0, None]})
    out = with_roofline(df, {1: PEAKS, 2: {**PEAKS, "matmul_tflops": 1600.0}})
    assert out["roofline"].tolist()[:2] == [pytest.approx(0.5), pytest.approx(0.25)]
    assert out["bound"].tolist() == ["flops", "bytes", ""] and math.isnan(out["roofline"][2])


def _record(method: str, order: int | None, ms: float, flops: float, nbytes: float) -> MeasurementRecord:
    case = Case(method, "tensorized" if order else "exact", 4096, 1, 4, 2, 64, "bf16", True, "cuda", order=order,
                dims=(64, 64) if order else None)
    return MeasurementRecord(case, "ok", timing=Timing(ms, ms, ms, ms, 0.0, ms, [ms]), flops=flops, min_bytes=nbytes)


# flash2: 400 TFLOP/s and 0.2 TB/s, half the matmul rate; tensorized: 20 TFLOP/s and 2 TB/s, half the copy rate
FLASH2 = ("flash2", None, 0.5, 2e11, 1e8)
TENSORIZED = ("tensorized", 2, 0.05, 1e9, 1e8)


@pytest.fixture
def store(tmp_path) -> Store:
    store = Store(str(tmp_path / "r.db"))
    run = store.start_run(RunInfo(command="tbench run", device="cuda", gpu_name="NVIDIA H200"))
    store.update_environment(run, peaks=PEAKS)
    for rec in (_record(*FLASH2), _record(*TENSORIZED)):
        store.record(run, rec)
    store.finish_run(run, "finished")
    yield store
    store.close()


def test_show_and_the_leaderboard_give_the_stored_rows_roofline(store):
    df = store.measurements([1])
    expected = {row.method: roofline(row.tflops, row.tbps, "bf16", PEAKS) for row in df.itertuples()}
    assert [roofline_text(expected[m]) for m in ("flash2", "tensorized")] == ["50% flops", "50% bytes"]
    markdown = run_markdown(df, "flash2", PEAKS)
    assert "| TB/s | roofline | mem |" in markdown
    for found in expected.values():
        assert f" {roofline_text(found)} |" in markdown
    shape = data.Shape("bf16", True, 1, 4, 2, 64, str(df["timing_mode"][0]))
    shown = data.format_leaderboard(data.leaderboard(data.load_slice(store.engine, "NVIDIA H200", shape), 4096,
                                                     "flash2"), "flash2").set_index("method")
    assert shown.loc["tensorized", "roofline"] == roofline_text(expected["tensorized"])
    assert shown.loc["flash2", "roofline"] == roofline_text(expected["flash2"])


def test_a_run_without_peaks_has_no_roofline(tmp_path):
    store = Store(str(tmp_path / "r.db"))
    run = store.start_run(RunInfo(command="tbench run", device="cuda", gpu_name="NVIDIA H200"))
    store.record(run, _record(*FLASH2))
    store.finish_run(run, "finished")
    df = store.measurements([run])
    assert "roofline" not in run_markdown(df, "flash2", None)  # no column of dashes
    shape = data.Shape("bf16", True, 1, 4, 2, 64, str(df["timing_mode"][0]))
    shown = data.format_leaderboard(data.leaderboard(data.load_slice(store.engine, "NVIDIA H200", shape), 4096,
                                                     "flash2"), "flash2")
    assert shown["roofline"].tolist() == ["n/a"]
    store.close()
