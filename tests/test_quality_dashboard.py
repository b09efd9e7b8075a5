"""The Quality view: its pure data functions on known results, and the page under Streamlit's AppTest
on a real SQLite store."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from optional import require
from sqlalchemy import create_engine

from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.dashboard import quality as qd
from tbench.results.quality import QualityRecord, finish_quality_run, record_quality, start_quality_run
from tbench.results.store import Store

AppTest = require("streamlit.testing.v1", "pip install -e .").AppTest
GPU = "NVIDIA H200"
# (method, order) -> accuracy at N=256 and N=1024, per seed; lr 3e-3 is better than 1e-3 by 0.1 everywhere
ACCURACY = {("flash2", None): ([1.0, 0.98, 0.96], [0.9, 0.8, 0.7]),
            ("tensorized", 2): ([0.5, 0.4, 0.6], [0.3, 0.2, 0.4])}


def _quality(method: str, order: int | None, n: int, seed: int, lr: float, acc: float | None,
             failure: str = "error") -> QualityRecord:
    return QualityRecord(
        config_key=f"{method}|N{n}|m{order}|seed{seed}|lr{lr:g}", task="mqar", method=method,
        family="tensorized" if order else "exact", order_m=order, dims="16x16" if order else "", seq_len=n,
        vocab=256, items=16, d_model=128, layers=2, heads=2, mlp=False, dtype="bf16", device="cuda", seed=seed,
        lr=lr, steps=400, batch=32, status="ok" if acc is not None else failure, message="" if acc is not None
        else "boom", accuracy=acc, scored=100, by_distance={"1": {"correct": 9, "total": 10},
                                                           "64": {"correct": 1, "total": 10}})


def _speed(method: str, order: int | None, n: int, ms: float) -> MeasurementRecord:
    case = Case(method, "tensorized" if order else "exact", n, 1, 32, 8, 128, "bf16", True, "cuda", order=order,
                dims=(256, 512) if order else None)
    return MeasurementRecord(case, "ok", timing=Timing(ms, ms, ms, ms, 0.0, ms, [ms]))


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("quality") / "q.db"
    store = Store(str(path))
    info = RunInfo(command="tbench quality", device="cuda", gpu_name=GPU)
    run = start_quality_run(store, info)
    for (method, order), per_length in ACCURACY.items():
        for n, accs in zip((256, 1024), per_length, strict=True):
            for seed, acc in enumerate(accs):
                record_quality(store, run, _quality(method, order, n, seed, 3e-3, acc))
                record_quality(store, run, _quality(method, order, n, seed, 1e-3, acc - 0.1))
    record_quality(store, run, _quality("gla", None, 256, 0, 1e-3, None))
    for seed in range(2):  # declared before training: counted apart from failures
        record_quality(store, run, _quality("simple-gla", None, 256, seed, 3e-3, None, failure="unsupported"))
    finish_quality_run(store, run, "finished")
    speed = store.start_run(RunInfo(command="tbench run", device="cuda", gpu_name=GPU))
    for n, (flash, tens) in {65536: (40.0, 4.0), 131072: (160.0, 9.0)}.items():
        store.record(speed, _speed("flash2", None, n, flash))
        store.record(speed, _speed("tensorized", 2, n, tens))
    # a layer around tensorized attention at the largest length: its time is not the operator's
    layer = _speed("tensorized", 2, 131072, 0.5)
    layer.case = dataclasses.replace(layer.case, scope="layer", model="tiny", layers=1)
    store.record(speed, layer)
    store.finish_run(speed, "finished")
    store.close()
    return f"sqlite:///{path}"


def test_accuracy_by_length_takes_the_best_lr_per_seed(url):
    engine = create_engine(url)
    table = qd.accuracy_by_length(qd.load_quality(engine)).set_index(["series", "seq_len"])
    row = table.loc[("flash2", 1024)]
    assert row["mean"] == pytest.approx(0.8) and row["min"] == pytest.approx(0.7) and row["seeds"] == 3
    assert row["std"] == pytest.approx(pd.Series([0.9, 0.8, 0.7]).std())
    assert table.loc[("tensorized m=2", 256), "mean"] == pytest.approx(0.5)
    assert table.loc[("flash2", 256), ["failed", "unsupported"]].tolist() == [0, 0]


def test_a_series_that_never_trained_keeps_its_row_and_says_why(url):
    table = qd.accuracy_by_length(qd.load_quality(create_engine(url))).set_index(["series", "seq_len"])
    gla, simple = table.loc[("gla", 256)], table.loc[("simple-gla", 256)]
    assert gla["seeds"] == 0 and pd.isna(gla["mean"]) and (gla["failed"], gla["unsupported"]) == (1, 0)
    assert simple["seeds"] == 0 and (simple["failed"], simple["unsupported"]) == (0, 2)


def test_speed_quality_points_default_to_the_longest_length_some_method_solves(url):
    engine = create_engine(url)
    quality, speed = qd.load_quality(engine), qd.load_speed(engine, GPU)
    # flash2 solves N=256 (mean 0.98) but not N=1024 (0.8): 256 is where accuracies tell methods apart
    speed_len, quality_len, points = qd.speed_quality(quality, speed)
    assert (speed_len, quality_len) == (131072, 256)
    got = {r.series: (r.median_ms, round(r.mean, 6)) for r in points.itertuples()}
    assert got == {"flash2": (160.0, 0.98), "tensorized m=2": (9.0, 0.5)}
    _, quality_len, points = qd.speed_quality(quality, speed, quality_len=1024)
    got = {r.series: (r.median_ms, round(r.mean, 6)) for r in points.itertuples()}
    assert quality_len == 1024 and got == {"flash2": (160.0, 0.8), "tensorized m=2": (9.0, 0.3)}
    assert qd.load_speed(engine, "CPU").empty


def test_chart_length_falls_back_to_the_longest_trained_when_nothing_is_solved():
    table = pd.DataFrame({"seq_len": [256, 1024, 4096], "mean": [0.5, 0.95, float("nan")], "seeds": [3, 3, 0]})
    assert qd.chart_length(table) == 1024  # 4096 has no trained seed
    assert qd.chart_length(table.assign(mean=[0.5, 0.6, float("nan")])) == 1024
    assert qd.chart_length(table.assign(seeds=0)) is None


def test_distance_table_pools_seeds(url):
    table = qd.distance_table(qd.load_quality(create_engine(url)))
    row = table[(table["series"] == "flash2") & (table["seq_len"] == 256) & (table["distance"] == 64)]
    assert row["accuracy"].item() == pytest.approx(0.1) and row["scored"].item() == 30


def _script(url: str) -> None:
    from tbench.dashboard.app import main

    main(url)


def test_quality_view_renders(url):
    at = AppTest.from_function(_script, args=(url,), default_timeout=60)
    at.query_params["view"] = "Quality"
    at.run()
    assert not at.exception
    assert "mqar accuracy against sequence length" in at.subheader[0].value
    assert any("Speed against quality" in s.value for s in at.subheader)
    assert len(at.get("plotly_chart")) == 2
    captions = " ".join(c.value for c in at.caption)
    assert "N = 128k" in captions and "MQAR accuracy at N = 256 " in captions
    at.selectbox(key="qlen").set_value(1024).run()
    assert not at.exception
    assert "MQAR accuracy at N = 1k " in " ".join(c.value for c in at.caption)


def test_quality_view_without_results(tmp_path):
    path = tmp_path / "empty.db"
    Store(str(path)).close()
    at = AppTest.from_function(_script, args=(f"sqlite:///{path}",), default_timeout=60)
    at.query_params["view"] = "Quality"
    at.run()
    assert not at.exception
    assert "No quality results yet" in at.info[0].value
