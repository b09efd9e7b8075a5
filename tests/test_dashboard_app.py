"""The dashboard app under Streamlit's AppTest, on real SQLite stores filled through the Store API."""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from optional import require
from sqlalchemy import insert

from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.dashboard import data
from tbench.dashboard.launch import free_port
from tbench.results.models import Measurement
from tbench.results.store import Store, _to_row

st = require("streamlit", "pip install -e .")
AppTest = require("streamlit.testing.v1", "pip install -e .").AppTest

GPU = "NVIDIA H100 80GB HBM3"
GPU_SHAPE = data.Shape("bf16", True, 1, 8, 2, 64, "events")
CPU_SHAPE = data.Shape("fp32", True, 1, 2, 1, 32, "cpu")
SLOW_STATUSES = {  # at N=4096 in run 1, one configuration per failure status
    ("full", None): "oom", ("xformers", None): "unsupported", ("sdpa-efficient", None): "error",
    ("sdpa-math", None): "timeout", ("tensorized-ref", 2): "wrong", ("tensorized-ref", 3): "skipped",
}


def _script(url: str) -> None:
    from tbench.dashboard.app import main

    main(url)


def app(url: str, **params: str) -> AppTest:
    at = AppTest.from_function(_script, args=(url,), default_timeout=30)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def _dims(n: int, order: int) -> tuple[int, ...]:
    bits = int(math.log2(n))
    parts = [bits // order] * order
    parts[-1] += bits - sum(parts)
    return tuple(2**p for p in parts)


def _record(shape: data.Shape, device: str, method: str, n: int, status: str, median: float | None = None,
            order: int | None = None, family: str | None = None) -> MeasurementRecord:
    family = family or ("tensorized" if method.startswith("tensorized") else "exact")
    case = Case(method, family, n, shape.batch, shape.heads, shape.kv_heads, shape.head_dim, shape.dtype,
                shape.causal, device, order=order, dims=_dims(n, order) if order else None, timing=shape.timing)
    if status != "ok":
        return MeasurementRecord(case, status, message=f"{method} {status} at {n}", provenance=f"{method} kernel",
                                 fidelity_rel_l2=None)
    assert median is not None
    samples = [median * (1 + 0.002 * (i - 10)) for i in range(21)]
    timing = Timing(median, median * 0.98, median * 1.03, median, 0.01 * median, samples[0], samples)
    return MeasurementRecord(case, "ok", provenance=f"{method} kernel", timing=timing,
                             peak_bytes=n * n * (4 if family == "exact" else 1), total_peak_bytes=n * n * 5,
                             flops=4e9 * n / 1024, min_bytes=1e6 * n / 1024,
                             fidelity_rel_l2=1e-2 * (order or 0) if family == "tensorized" else 2e-7)


def _gpu_info(command: str) -> RunInfo:
    return RunInfo(command=command, device="cuda", gpu_name=GPU, gpu_count=1, driver="550.54.15", cuda="12.4",
                   torch_version="2.4.0", triton_version="3.0.0", tbench_version="0.1.0", git_commit="abc1234",
                   environment={"clocks": {"sm_mhz": 1980}, "peaks": {"matmul_tflops": 750.0}})


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run 1: a GPU sweep with known times; run 2: a CPU run without flash2; run 3: a GPU re-run of
    a few configurations (one slower, one the same, one faster)."""
    path = tmp_path_factory.mktemp("dash") / "known.db"
    store = Store(str(path))
    run1 = store.start_run(_gpu_info("tbench run --lengths 1k..8k"))
    lengths = (1024, 2048, 4096, 8192)
    times = {
        ("flash2", None): [1.0, 4.0, 16.0, 64.0],
        ("sdpa-cudnn", None): [1.2, 4.8, 19.2, 76.8],  # always 1.2x slower: never crosses
        ("full", None): [1.5, 6.0, None, None],  # out of memory from 4k
        # ratio 2, sqrt(2), 1/2, 1/4: the crossing is a third of the way from 2k to 4k in log2 N
        ("tensorized", 2): [2.0, 4.0 * math.sqrt(2), 8.0, 16.0],
        ("tensorized", 3): [0.5, 1.0, 2.0, 4.0],  # faster everywhere
    }
    for (method, order), values in times.items():
        for n, median in zip(lengths, values, strict=True):
            status = "ok" if median is not None else "oom"
            store.record(run1, _record(GPU_SHAPE, "cuda", method, n, status, median, order))
    for (method, order), status in SLOW_STATUSES.items():
        if (method, order) != ("full", None):
            store.record(run1, _record(GPU_SHAPE, "cuda", method, 4096, status, None, order))
    store.finish_run(run1, "finished")

    run2 = store.start_run(RunInfo(command="tbench run --device cpu", device="cpu",
                                   environment={"cpu": "Test CPU"}))
    for method, order, values in (("full", None, [0.3, 1.0]), ("sdpa-math", None, [0.4, 1.3]),
                                  ("tensorized-ref", 2, [0.16, 0.26])):
        for n, median in zip((256, 512), values, strict=True):
            store.record(run2, _record(CPU_SHAPE, "cpu", method, n, "ok", median, order))
    store.finish_run(run2, "finished")

    run3 = store.start_run(_gpu_info("tbench run --lengths 1k"))
    store.record(run3, _record(GPU_SHAPE, "cuda", "flash2", 1024, "ok", 1.2))
    store.record(run3, _record(GPU_SHAPE, "cuda", "tensorized", 1024, "ok", 2.02, 2))
    store.record(run3, _record(GPU_SHAPE, "cuda", "tensorized", 1024, "ok", 0.4, 3))
    store.record(run3, _record(GPU_SHAPE, "cuda", "full", 4096, "oom"))
    store.finish_run(run3, "finished")
    store.close()
    return f"sqlite:///{path}"


def table(at: AppTest, index: int = 0):  # type: ignore[no-untyped-def]
    return at.dataframe[index].value


def texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in [*at.title, *at.markdown, *at.caption, *at.info, *at.warning])


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def values(encoded: object) -> list:
    """A trace's x or y: plotly sends numeric arrays as base64 typed arrays."""
    if isinstance(encoded, dict) and "bdata" in encoded:
        return np.frombuffer(base64.b64decode(encoded["bdata"]), dtype=np.dtype(encoded["dtype"])).tolist()
    return list(encoded)  # type: ignore[call-overload]


# --- views ----------------------------------------------------------------------------------------


def test_leaderboard_defaults_to_the_most_measured_gpu_and_the_fastest_exact_method(store_url):
    at = app(store_url)
    assert not at.exception
    assert at.title[0].value == f"tbench leaderboard · {GPU}"
    assert "Speedups are against **the fastest exact method on each shape**" in texts(at)
    # the default length is the longest where the baseline ran
    assert at.select_slider(key="n").value == 8192
    board = table(at)
    assert list(board["method"]) == ["tensorized", "tensorized", "flash2", "sdpa-cudnn", "full"]
    assert list(board["rank"]) == ["#1", "#2", "#3", "#4", ""]
    assert list(board["speedup"][:4]) == ["16.00×", "4.00×", "1.00× (baseline)", "0.83×"]
    assert board.loc[4, "median ms"] == "OOM"
    assert list(board["family"]) == ["tensorized", "tensorized", "exact", "exact", "exact"]
    assert len(at.get("plotly_chart")) == 1
    params = at.query_params
    assert (params["gpu"], params["shape"], params["baseline"], params["n"]) == (
        GPU, GPU_SHAPE.slug, "best", "8192")


def test_every_failure_status_is_shown_as_such(store_url):
    at = app(store_url, n="4096", run="1")
    board = table(at)
    for (method, order), status in SLOW_STATUSES.items():
        m = "" if order is None else str(order)
        [row] = board[(board["method"] == method) & (board["m"] == m)].to_dict("records")
        marker = data.STATUS_MARKERS[status]
        assert row["status"] == marker
        assert row["median ms"] == marker and row["speedup"] == marker and row["peak MiB"] == marker
        assert row["rank"] == ""
        assert row["message"] == f"{method} {status} at 4096"
    assert (board["status"] == "ok").sum() == 4


def test_gpu_filter_and_baseline_fallback(store_url):
    at = app(store_url)
    at.selectbox(key="gpu").set_value("CPU").run()
    assert not at.exception
    assert at.title[0].value == "tbench leaderboard · CPU"
    assert at.selectbox(key="shape").value == CPU_SHAPE
    # by default every row faces the fastest exact method of its length, and the page says which ones
    assert ("Speedups are against **the fastest exact method on each shape** (of full, sdpa-math)."
            in texts(at))
    assert at.query_params["gpu"] == "CPU" and at.query_params["baseline"] == "best"
    board = table(at)
    assert set(board["method"]) == {"full", "sdpa-math", "tensorized-ref"}
    at.selectbox(key="baseline").set_value("full").run()
    assert "Speedups are against **full**." in texts(at)
    assert table(at).set_index("method").loc["full", "speedup"] == "1.00× (baseline)"


def test_methods_filter_is_kept_in_the_url(store_url):
    at = app(store_url)
    at.multiselect(key="methods").unselect("full").unselect("sdpa-cudnn").run()
    assert set(table(at)["method"]) == {"flash2", "tensorized"}
    assert at.query_params["methods"] == "flash2,sdpa-efficient,sdpa-math,tensorized,tensorized-ref,xformers"
    # the same link opens the same selection
    again = app(store_url, methods="flash2,tensorized")
    assert at.multiselect(key="methods").value != again.multiselect(key="methods").value
    assert again.multiselect(key="methods").value == ["flash2", "tensorized"]
    assert set(table(again)["method"]) == {"flash2", "tensorized"}


def test_newest_measurement_per_configuration_or_one_run(store_url):
    newest = table(app(store_url, n="1024")).set_index(["method", "m"])
    assert newest.loc[("flash2", ""), "median ms"] == "1.2"  # run 3 re-measured it
    assert newest.loc[("flash2", ""), "run"] == 3
    assert newest.loc[("sdpa-cudnn", ""), "run"] == 1
    only_first = table(app(store_url, n="1024", run="1")).set_index(["method", "m"])
    assert only_first.loc[("flash2", ""), "median ms"] == "1"


def test_crossover_table_from_a_link(store_url):
    at = app(store_url, view="Crossover", gpu=GPU, shape=GPU_SHAPE.slug, run="1", baseline="flash2")
    assert not at.exception
    assert at.radio(key="view").value == "Crossover"
    crossover = table(at).set_index(["method", "m"])
    expected = 2 ** (11 + 1 / 3)  # log ratio sqrt(2) at 2k, 1/2 at 4k: a third of the way
    assert crossover.loc[("tensorized", "2"), "efficiency length"] == f"≈ {data.format_length(round(expected))}"
    assert crossover.loc[("tensorized", "3"), "efficiency length"] == "always (from the shortest measured, 1k)"
    assert crossover.loc[("sdpa-cudnn", ""), "efficiency length"] == "never (slower up to 8k)"
    assert crossover.loc[("full", ""), "efficiency length"] == "never (slower up to 8k)"
    assert crossover.loc[("tensorized", "2"), "speedup at longest"] == "4.00× at 8k"
    assert ("flash2", "") not in crossover.index


def test_curves_mark_out_of_memory_points(store_url):
    speed = app(store_url, view="Speedup curves", run="1")
    [spec] = plotly_specs(speed)
    names = {trace.get("name") for trace in spec["data"]}
    assert {"flash2", "full", "sdpa-cudnn", "tensorized m=2", "tensorized m=3"} <= names
    [m3] = [t for t in spec["data"] if t.get("name") == "tensorized m=3"]
    assert values(m3["y"]) == pytest.approx([2.0, 4.0, 8.0, 16.0])
    assert spec["layout"]["xaxis"]["type"] == "log" and spec["layout"]["xaxis"]["ticktext"] == [
        "1k", "2k", "4k", "8k"]

    curves = app(store_url, view="Time and memory", run="1")
    time_spec, memory_spec = plotly_specs(curves)
    for spec in (time_spec, memory_spec):
        [oom] = [t for t in spec["data"] if t.get("name") == "full failed"]
        assert values(oom["x"]) == [4096, 8192] and oom["customdata"] == ["OOM", "OOM"]
        assert spec["layout"]["yaxis"]["type"] == "log"
    [full] = [t for t in time_spec["data"] if t.get("name") == "full"]
    assert values(full["x"]) == [1024, 2048] and values(full["y"]) == pytest.approx([1.5, 6.0])


def test_order_view_lists_tensorized_rows(store_url):
    at = app(store_url, view="Order m", run="1")
    assert len(at.get("plotly_chart")) == 2
    rows = table(at)
    assert set(zip(rows["method"], rows["m"], strict=True)) == {("tensorized", 2), ("tensorized", 3),
                                                                ("tensorized-ref", 2), ("tensorized-ref", 3)}
    assert set(rows["family"]) == {"tensorized"}
    wrong = rows[(rows["method"] == "tensorized-ref") & (rows["m"] == 2)].iloc[0]
    assert wrong["status"] == "WRONG" and wrong["median ms"] == "WRONG"
    at4k = rows[(rows["method"] == "tensorized") & (rows["N"] == "4k")].set_index("m")
    assert list(at4k["speedup vs the fastest exact method"]) == ["2.00×", "8.00×"]


def test_families_view_shows_each_familys_best_and_the_frontier(tmp_path):
    path = tmp_path / "families.db"
    store = Store(str(path))
    run = store.start_run(_gpu_info("tbench run --lengths 1k,2k"))
    for method, family, order, times in (
            ("flash2", "exact", None, {1024: 1.0, 2048: 4.0}), ("full", "exact", None, {1024: 0.9, 2048: None}),
            ("tensorized", "tensorized", 2, {1024: 2.0, 2048: 3.0}),
            ("tensorized", "tensorized", 3, {1024: 0.5, 2048: 6.0}),
            ("simple-gla", "linear", None, {1024: 0.3, 2048: 0.6}), ("gla", "linear", None, {1024: 0.4})):
        for n, median in times.items():
            store.record(run, _record(GPU_SHAPE, "cuda", method, n, "ok" if median else "oom", median, order,
                                      family))
    store.finish_run(run, "finished")
    store.close()

    at = app(f"sqlite:///{path}", view="Families")
    assert not at.exception
    assert at.radio(key="view").value == "Families"
    assert "Best method of each family" in [h.value for h in at.subheader]
    best = table(at)
    assert list(zip(best["family"], best["N"], best["best method"], best["m"], strict=True)) == [
        ("exact", "1k", "full", ""), ("exact", "2k", "flash2", ""), ("tensorized", "1k", "tensorized", "3"),
        ("tensorized", "2k", "tensorized", "2"), ("linear", "1k", "simple-gla", ""), ("linear", "2k", "simple-gla", "")]
    # each length's fastest exact method is the baseline: full at 1k (0.9 ms), flash2 at 2k (full OOM)
    assert list(best["speedup"]) == ["1.00×", "1.00×", "1.80×", "1.33×", "3.00×", "6.67×"]
    [spec] = plotly_specs(at)
    lines = {trace["name"]: trace for trace in spec["data"]}
    assert list(lines) == ["exact", "tensorized", "linear"]  # one line per family
    assert values(lines["tensorized"]["x"]) == [1024, 2048]
    assert values(lines["tensorized"]["y"]) == pytest.approx([0.5, 3.0])
    # each point's hover names the method behind it
    assert lines["tensorized"]["customdata"] == ["tensorized m=3", "tensorized m=2"]
    assert lines["exact"]["customdata"] == ["full", "flash2"]
    assert spec["layout"]["xaxis"]["type"] == "log" and spec["layout"]["yaxis"]["type"] == "log"


def test_compare_runs(store_url):
    at = app(store_url, view="Compare runs", before="1", after="3")
    assert not at.exception
    rows = table(at).set_index(["method", "m", "N"])
    assert rows.loc[("flash2", "", "1k"), "verdict"] == "SLOWER"
    assert rows.loc[("flash2", "", "1k"), "ratio"] == "1.200"
    assert rows.loc[("tensorized", "2", "1k"), "family"] == "tensorized"
    assert rows.loc[("flash2", "", "1k"), "family"] == "exact"
    assert rows.loc[("tensorized", "2", "1k"), "verdict"] == "SAME"
    assert rows.loc[("tensorized", "3", "1k"), "verdict"] == "FASTER"
    assert rows.loc[("full", "", "4k"), "verdict"] == "oom (both)"
    assert rows.loc[("sdpa-cudnn", "", "8k"), "verdict"] == "only before"
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["FASTER"], metrics["SLOWER"], metrics["SAME"]) == ("1", "1", "1")
    assert "scope" not in table(at).columns  # operator runs alone read as before scopes existed


def test_run_details(store_url):
    at = app(store_url, view="Run details", details="1")
    facts = dict(zip(table(at)[""], table(at)["value"], strict=True))
    assert facts["GPU"] == f"{GPU} × 1"
    assert (facts["driver"], facts["CUDA"], facts["git commit"]) == ("550.54.15", "12.4", "abc1234")
    assert facts["measurements"] == "1 error, 18 ok, 2 oom, 1 skipped, 1 timeout, 1 unsupported, 1 wrong"
    assert "scope" not in facts
    assert at.code[0].value == "tbench run --lengths 1k..8k"
    assert at.json[0].value and json.loads(at.json[0].value)["clocks"] == {"sm_mhz": 1980}


def test_links_with_stale_values_fall_back(store_url):
    at = app(store_url, view="Nope", gpu="Some other GPU", shape="garbage", n="77", baseline="nothing",
             run="999")
    assert not at.exception
    assert at.radio(key="view").value == "Leaderboard"
    assert at.query_params["gpu"] == GPU and at.query_params["n"] == "8192"
    assert at.query_params["baseline"] == "best" and at.query_params["run"] == "latest"


# --- end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    import e2e_store

    return e2e_store.fill(tmp_path_factory.mktemp("e2e") / "e2e.db")


def test_end_to_end_view_charts_the_analysis_numbers(e2e_url):
    import e2e_store

    from tbench.analysis.endtoend import end_to_end

    at = app(e2e_url, view="End to end")
    assert not at.exception
    assert at.title[0].value == "tbench end to end"
    assert (at.selectbox(key="model").value, at.selectbox(key="scope").value, at.selectbox(key="batch").value,
            at.selectbox(key="protocol").value) == (e2e_store.MODEL, "layer", 5, "tbench")
    time_spec, memory_spec, speedup_spec = plotly_specs(at)
    traces = {t["name"]: t for t in time_spec["data"]}
    assert set(traces) == {"flash2", "flash3", "tensorized m=2"}
    assert values(traces["tensorized m=2"]["y"]) == pytest.approx([5.0, 10.0])
    memory = {t["name"]: t for t in memory_spec["data"]}
    assert values(memory["flash2"]["y"]) == pytest.approx([3.0, 6.0])  # GiB
    # the speedups plotted are analysis.endtoend's
    frame = data.load_scoped(data.open_readonly(e2e_url), e2e_store.GPU)
    expected = end_to_end(frame).query("protocol == 'tbench' and method == 'tensorized'").sort_values("seq_len")
    speedups = {t["name"]: t for t in speedup_spec["data"]}
    # each method against each reference but itself
    assert set(speedups) == {"flash3 vs flash2", "flash2 vs flash3", "tensorized m=2 vs flash2",
                             "tensorized m=2 vs flash3"}
    assert values(speedups["tensorized m=2 vs flash2"]["y"]) == pytest.approx(list(expected["xflash2"]))
    assert values(speedups["tensorized m=2 vs flash3"]["y"]) == pytest.approx(list(expected["xflash3"]))
    assert values(speedups["tensorized m=2 vs flash2"]["y"]) == pytest.approx([2.0, 4.0])
    assert speedups["tensorized m=2 vs flash3"]["line"]["dash"] == "dash"
    # the paper's headline: a horizontal line at 11, labelled with what it measured
    [paper] = [shape for shape in speedup_spec["layout"]["shapes"] if shape["line"]["dash"] == "dashdot"]
    assert paper["y0"] == paper["y1"] == 11
    [label] = speedup_spec["layout"]["annotations"]
    assert label["text"].startswith("paper: 11x at 128k (Llama-8B, FA2, batch 5)")
    assert "whole model vs FlashAttention-2" in label["text"]
    assert "128k" in speedup_spec["layout"]["xaxis"]["ticktext"]
    board = table(at).set_index(["N", "method"])
    assert board.loc[("8k", "tensorized"), "attention share"] == "10.0 %"
    assert board.loc[("8k", "tensorized"), "× flash2"] == "4.00×"
    assert board.loc[("4k", "flash2"), "attention share"] == "20.0 %"


def test_end_to_end_selections_from_a_link(e2e_url):
    paper = app(e2e_url, view="End to end", protocol="paper")
    assert not paper.exception
    rows = table(paper).set_index("method")
    assert list(rows["N"]) == ["4k", "4k"] and rows.loc["tensorized", "× flash2"] == "4.00×"
    # without the op run the speedups stand and the share says where it is missing
    layer_run = app(e2e_url, view="End to end", runs="2")
    assert layer_run.multiselect(key="runs").value == ["2"]
    assert set(table(layer_run)["attention share"]) == {"no op row"}
    assert table(layer_run).set_index(["N", "method"]).loc[("8k", "tensorized"), "× flash3"] == "3.20×"


def test_end_to_end_without_layer_rows_says_so(tmp_path):
    import e2e_store

    at = app(e2e_store.fill(tmp_path / "ops.db", layers=False), view="End to end")
    assert not at.exception
    assert "no layer or model measurements" in at.info[0].value
    assert "--scope layer" in at.code[0].value
    assert not at.get("plotly_chart")


def test_the_leaderboard_of_a_store_with_layer_rows_ranks_operator_rows(e2e_url):
    import e2e_store

    at = app(e2e_url, n="4096")
    assert not at.exception
    assert [o for o in at.selectbox(key="shape").options] == [
        f"{data.Shape('bf16', True, 5, 32, 8, 128, 'events').label} · 6 rows"]
    assert at.selectbox(key="run").options == ["newest measurement of each configuration", "run 1"]
    board = table(at).set_index("method")
    expected = {method: f"{times[0]:.4g}" for (method, _), times in e2e_store.OP_MS.items()}
    assert board["median ms"].to_dict() == expected  # op times, not the layer's 5-10 ms
    # against the fastest exact operator at 4k, flash3 (1.5 ms), not flash2
    assert board.loc["tensorized", "speedup"] == "3.00×"
    families = app(e2e_url, view="Families")
    assert set(table(families)["median ms"]) == {"0.5", "1", "1.5", "6"}


def test_a_store_without_operator_rows_points_to_end_to_end(tmp_path):
    import e2e_store

    path = tmp_path / "layers.db"
    store = Store(str(path))
    run = store.start_run(e2e_store._run_info("tbench run --preset llama3-8b --scope layer"))
    store.record(run, e2e_store._record("flash2", None, 4096, 10.0, "layer"))
    store.finish_run(run, "finished")
    store.close()
    at = app(f"sqlite:///{path}", view="Leaderboard")
    assert not at.exception
    assert "no operator measurements" in at.info[0].value and "End to end" in at.info[0].value
    assert not at.dataframe


def test_runs_of_several_scopes_are_labelled(e2e_url):
    compared = app(e2e_url, view="Compare runs", before="1", after="2")
    assert not compared.exception
    rows = table(compared)
    assert set(rows["scope"]) == {"op", "layer llama3-8b", "layer llama3-8b, paper protocol"}
    assert set(rows[rows["scope"] != "op"]["verdict"]) == {"only after"}
    assert compared.selectbox(key="after").format_func(2).endswith("· layer llama3-8b, layer llama3-8b, "
                                                                   "paper protocol")
    details = app(e2e_url, view="Run details", details="2")
    facts = dict(zip(table(details)[""], table(details)["value"], strict=True))
    assert facts["scope"] == "6 layer llama3-8b, 2 layer llama3-8b, paper protocol"


# --- stores with nothing to show ------------------------------------------------------------------


def test_missing_database_explains_how_to_make_one(tmp_path):
    path = tmp_path / "nothing.db"
    at = app(f"sqlite:///{path}")
    assert not at.exception
    assert "no database file at" in at.info[0].value
    assert f"tbench run --db sqlite:///{path}" in at.code[0].value
    assert not path.exists()  # the dashboard never creates the store


def test_empty_database_explains_how_to_fill_it(tmp_path):
    path = tmp_path / "empty.db"
    Store(str(path)).close()
    for view in ("Leaderboard", "Compare runs"):
        at = app(f"sqlite:///{path}", view=view)
        assert not at.exception
        assert "no measurements yet" in at.info[0].value
        assert "tbench run --device cpu" in at.code[0].value


def test_unreadable_database_is_one_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"certainly not sqlite" * 64)
    at = app(f"sqlite:///{path}")
    assert not at.exception
    assert at.error[0].value.startswith("Cannot show")


# --- the server ----------------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_launcher_serves_and_takes_the_server_down_with_it(store_url):
    port = free_port()
    launcher = subprocess.Popen([sys.executable, "-m", "tbench.dashboard.launch", "--db", store_url, "--port",
                                 str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    health = f"http://127.0.0.1:{port}/_stcore/health"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert launcher.poll() is None, launcher.stdout.read() if launcher.stdout else ""
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    assert response.read() == b"ok"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(0.3)
        # SIGTERM to the launcher alone (not its process group) must stop the streamlit server too
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=20)
        deadline = time.monotonic() + 20
        while _group_alive(launcher.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(launcher.pid)
        with pytest.raises(OSError):
            urllib.request.urlopen(health, timeout=2)
    finally:
        if _group_alive(launcher.pid):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)


# --- speed with a big store -----------------------------------------------------------------------


def _fill_big_store(path: Path, runs: int = 100) -> int:
    """~100,000 measurements: 100 runs x 9 shapes x 8 lengths x 14 configurations, with samples."""
    store = Store(str(path))
    shapes = [data.Shape(dtype, True, 1, heads, 8, 128, "events") for dtype in ("bf16", "fp16", "fp32")
              for heads in (8, 16, 32)]
    configs = [(m, None) for m in ("flash2", "sdpa-cudnn", "sdpa-efficient", "sdpa-math", "xformers", "full")]
    configs += [(m, order) for m in ("tensorized", "tensorized-ref") for order in (1, 2, 3, 4)]
    lengths = [2**k for k in range(10, 18)]
    total = 0
    for r in range(runs):
        run_id = store.start_run(_gpu_info(f"tbench run # {r}"))
        rows = []
        for shape in shapes:
            for n in lengths:
                for method, order in configs:
                    rec = _record(shape, "cuda", method, n, "ok", 1e-5 * n * (1 + r % 7) * (order or 2), order)
                    if method == "full" and n >= 2**16:
                        rec = _record(shape, "cuda", method, n, "oom")
                    rows.append(_row_values(run_id, rec))
        with store.engine.begin() as conn:
            conn.execute(insert(Measurement), rows)
        total += len(rows)
    store.close()
    return total


def _row_values(run_id: int, rec: MeasurementRecord) -> dict:
    # The row Store.record would commit, inserted in bulk: one commit per row would take minutes.
    row = _to_row(run_id, rec)
    return {c.key: getattr(row, c.key) for c in Measurement.__table__.columns if c.key != "id"}


@pytest.mark.slow
def test_views_render_on_100k_measurements(tmp_path):
    """Every view renders from a 100,000-row store. The time each took is printed (pytest -s), not
    asserted: machines are noisy; docs/dashboard.md records the measured times."""
    path = tmp_path / "big.db"
    assert _fill_big_store(path) >= 100_000
    url = f"sqlite:///{path}"
    app(url)  # imports and first-use costs are paid once per server, not per view
    for view, params in (("Leaderboard", {}), ("Families", {}), ("Speedup curves", {}), ("Time and memory", {}),
                         ("Crossover", {}), ("Order m", {}), ("Compare runs", {"before": "1", "after": "2"}),
                         ("Run details", {})):
        st.cache_data.clear()  # every view starts from the database, not from the cache
        started = time.perf_counter()
        at = app(url, view=view, **params)
        elapsed = time.perf_counter() - started
        assert not at.exception, (view, at.exception)
        assert at.dataframe or at.get("plotly_chart"), view
        print(f"{view}: {elapsed:.2f} s")
