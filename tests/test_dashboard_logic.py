"""The dashboard's logic without Streamlit: crossover lengths, speedups, status markers, the
comparison rule, and read-only access to a real SQLite store."""

from __future__ import annotations

import math
import socket
import sqlite3

import pandas as pd
import pytest

from tbench.core.case import STATUS_NAMES as STATUSES
from tbench.core.sweep import BEST_EXACT
from tbench.dashboard import data
from tbench.dashboard.compare import classify_ratio, compare_runs
from tbench.dashboard.launch import free_port, streamlit_command
from tbench.results.store import Store

# --- crossover ------------------------------------------------------------------------------------


def test_crossover_interpolates_log_ratio_in_log2_length():
    # ratio 2 at 1k, 1/2 at 4k: log(ratio) crosses 0 halfway in log2(N), at 2k
    crossing = data.efficiency_length([1024, 4096], [2.0, 0.5])
    assert crossing.kind == "crossing"
    assert crossing.length == pytest.approx(2048)
    assert crossing.text == "≈ 2k"
    # an uneven pair: ratio 2 then 1/4 puts the crossing a third of the way, at 2**(10 + 2/3)
    assert data.efficiency_length([1024, 4096], [2.0, 0.25]).length == pytest.approx(2 ** (10 + 2 / 3))


def test_crossover_uses_the_final_winning_streak():
    # wins at 1k, loses at 2k, wins from there on: the efficiency length lies between 2k and 4k
    crossing = data.efficiency_length([8192, 1024, 4096, 2048], [0.25, 0.8, 0.5, 2.0])
    assert crossing.kind == "crossing"
    assert crossing.length == pytest.approx(2048 * math.sqrt(2))


def test_crossover_always_never_and_no_data():
    always = data.efficiency_length([512, 1024, 2048], [0.9, 0.7, 0.4])
    assert (always.kind, always.length) == ("always", 512)
    assert always.text == "always (from the shortest measured, 512)"
    never = data.efficiency_length([1024, 2048, 4096], [0.5, 0.9, 1.1])
    assert (never.kind, never.length) == ("never", 4096)
    assert never.text == "never (slower up to 4k)"
    # a tie is not a win
    assert data.efficiency_length([1024, 2048], [2.0, 1.0]).kind == "never"
    assert data.efficiency_length([], []).kind == "no data"
    assert data.efficiency_length([1024], [math.nan]).text == "no data"


def test_crossover_with_capacity_failures():
    # the baseline runs out of memory at 8k while the method runs: it wins there, no interpolation
    assert data.efficiency_length([2048, 4096, 8192], [3.0, 1.5, 0.0]).length == 8192
    # the method runs out of memory at 2k, then wins: the crossing is the first winning length
    assert data.efficiency_length([1024, 2048, 4096], [0.5, math.inf, 0.5]).length == 4096
    # the method runs out of memory at the longest length: it does not beat the baseline there
    assert data.efficiency_length([1024, 2048], [0.5, math.inf]).kind == "never"


def rows(*specs: tuple) -> pd.DataFrame:
    """(method, family, order_m, seq_len, status, median_ms) tuples as a slice DataFrame."""
    records = []
    for i, (method, family, order, n, status, median) in enumerate(specs):
        ok = status in data.TIMED_STATUSES  # timed rows carry times, failed ones none
        records.append({
            "id": i + 1, "run_id": 1, "config_key": f"{method}|N{n}|m{order}", "method": method, "family": family,
            "seq_len": n, "order_m": order, "dims": "" if order is None else f"{order}x?", "status": status,
            "message": "" if ok else f"{status} happened", "provenance": f"{method} kernel",
            "median_ms": median if ok else None, "p20_ms": median * 0.9 if ok else None,
            "p80_ms": median * 1.25 if ok else None, "n_samples": 10 if ok else 0,
            "peak_bytes": 2**20 * n if ok else None, "total_peak_bytes": 2**21 * n if ok else None,
            "tflops": 100.0 / median if ok else None, "tbps": None, "check_error": None,
            "fidelity_rel_l2": 1e-3 if family == "tensorized" else 1e-7, "fidelity_max_abs": None,
            "throttled": False, "roofline": 0.5 if ok else float("nan"), "bound": "flops" if ok else "",
        })
    return pd.DataFrame(records).astype({"order_m": "Int64"})


def test_crossover_table_on_known_measurements():
    df = rows(
        ("flash2", "exact", None, 1024, "ok", 1.0), ("flash2", "exact", None, 4096, "ok", 16.0),
        ("flash2", "exact", None, 16384, "oom", None),
        ("tensorized", "tensorized", 2, 1024, "ok", 2.0), ("tensorized", "tensorized", 2, 4096, "ok", 8.0),
        ("tensorized", "tensorized", 2, 16384, "ok", 30.0),
        ("full", "exact", None, 1024, "ok", 1.5), ("full", "exact", None, 4096, "oom", None),
        ("full", "exact", None, 16384, "oom", None),
        ("tensorized", "tensorized", 3, 1024, "ok", 0.5), ("tensorized", "tensorized", 3, 4096, "ok", 2.0),
    )
    table = data.crossover_table(df, "flash2").set_index("series")
    assert "flash2" not in table.index
    assert table.loc["tensorized m=2", "kind"] == "crossing"
    # ratio 2 at 1k and 0.5 at 4k: crossing at 2k; the 16k win (baseline OOM) keeps the streak going
    assert table.loc["tensorized m=2", "length"] == pytest.approx(2048)
    assert table.loc["tensorized m=2", "speedup at longest"] == "2.00× at 4k"
    assert table.loc["tensorized m=3", "efficiency length"] == "always (from the shortest measured, 1k)"
    # full runs out of memory at 4k where flash2 runs; at 16k both fail, which compares nothing
    assert table.loc["full", "efficiency length"] == "never (slower up to 4k)"
    assert table.loc["full", "compared lengths"] == "1k, 4k"


# --- baseline and speedups ------------------------------------------------------------------------


def test_pick_baseline_prefers_the_fastest_exact_method_on_each_shape():
    with_flash = rows(("flash2", "exact", None, 1024, "ok", 1.0), ("full", "exact", None, 1024, "ok", 2.0))
    choice = data.pick_baseline(with_flash)
    assert choice.method == BEST_EXACT and "fastest exact method on each shape" in choice.note
    assert data.pick_baseline(with_flash, "full").method == "full"
    no_flash = rows(("full", "exact", None, 1024, "ok", 2.0), ("sdpa-math", "exact", None, 1024, "ok", 3.0),
                    ("flash2", "exact", None, 2048, "unsupported", None),
                    ("tensorized", "tensorized", 2, 1024, "ok", 0.5))
    # a named baseline without ok rows falls back on the fastest exact method, and says so
    choice = data.pick_baseline(no_flash, "flash2")
    assert choice.method == BEST_EXACT
    assert "full, sdpa-math" in choice.note and "flash2 has no ok measurement" in choice.note
    assert data.baseline_candidates(no_flash) == [BEST_EXACT, "sdpa-math", "full", "tensorized"]
    only_tensorized = rows(("tensorized", "tensorized", 2, 1024, "ok", 0.5))
    assert data.pick_baseline(only_tensorized).method is None
    assert data.baseline_candidates(only_tensorized) == ["tensorized"]


def test_the_fastest_exact_baseline_is_chosen_per_length():
    df = rows(("flash2", "exact", None, 1024, "ok", 1.0), ("flash3", "exact", None, 1024, "ok", 2.0),
              ("flash2", "exact", None, 4096, "ok", 8.0), ("flash3", "exact", None, 4096, "ok", 4.0),
              ("flash3", "exact", None, 16384, "oom", None), ("flash2", "exact", None, 16384, "ok", 64.0),
              ("tensorized", "tensorized", 2, 1024, "ok", 0.5), ("tensorized", "tensorized", 2, 4096, "ok", 1.0),
              ("tensorized", "tensorized", 2, 16384, "ok", 2.0), ("sage", "approximate", None, 1024, "ok", 0.1))
    out = data.with_speedup(df, BEST_EXACT).set_index(["method", "seq_len"])
    assert out.loc[("tensorized", 1024), "baseline_method"] == "flash2"
    assert out.loc[("tensorized", 4096), "baseline_method"] == "flash3"
    assert out.loc[("tensorized", 16384), "baseline_method"] == "flash2"  # flash3 failed there
    assert list(out.loc["tensorized", "speedup"]) == pytest.approx([2.0, 4.0, 32.0])
    # an exact row faces the fastest exact row of its length: the slower one is below 1
    assert out.loc[("flash2", 4096), "speedup"] == pytest.approx(0.5)
    # a row of another family is never the baseline, however fast
    assert out.loc[("flash2", 1024), "speedup"] == pytest.approx(1.0)
    shown = data.format_leaderboard(data.leaderboard(df, 4096, BEST_EXACT), BEST_EXACT).set_index("method")
    assert shown.loc["flash3", "speedup"] == "1.00× (baseline)" and shown.loc["flash2", "speedup"] == "0.50×"
    # crossover against the fastest exact method: exact methods are not candidates; a length where
    # every exact method failed for capacity counts as a win
    crossing = data.crossover_table(df, BEST_EXACT).set_index("series")
    assert set(crossing.index) == {"tensorized m=2", "sage"}
    assert crossing.loc["tensorized m=2", "kind"] == "always"
    assert crossing.loc["tensorized m=2", "speedup at longest"] == "32.00× at 16k"
    with pytest.raises(ValueError, match="family column"):
        data.with_speedup(df.drop(columns="family"), BEST_EXACT)


def test_speedup_and_its_spread():
    df = rows(("flash2", "exact", None, 1024, "ok", 4.0), ("tensorized", "tensorized", 2, 1024, "ok", 2.0),
              ("full", "exact", None, 1024, "oom", None), ("tensorized", "tensorized", 2, 2048, "ok", 3.0))
    out = data.with_speedup(df, "flash2").set_index(["method", "seq_len"])
    assert out.loc[("tensorized", 1024), "speedup"] == pytest.approx(2.0)
    # the band comes from the method's own p80 and p20 (x1.25 and x0.9 of the median here)
    assert out.loc[("tensorized", 1024), "speedup_lo"] == pytest.approx(4.0 / 2.5)
    assert out.loc[("tensorized", 1024), "speedup_hi"] == pytest.approx(4.0 / 1.8)
    assert out.loc[("flash2", 1024), "speedup"] == pytest.approx(1.0)
    assert pd.isna(out.loc[("full", 1024), "speedup"])
    assert pd.isna(out.loc[("tensorized", 2048), "speedup"])  # no baseline at 2k


def test_curve_points_follow_the_fastest_folding():
    df = rows(("tensorized", "tensorized", 2, 1024, "ok", 3.0), ("tensorized", "tensorized", 2, 1024, "ok", 2.0),
              ("tensorized", "tensorized", 2, 2048, "oom", None), ("tensorized", "tensorized", 2, 2048, "ok", 5.0),
              ("flash2", "exact", None, 4096, "oom", None))
    points = data.curve_points(df).set_index(["series", "seq_len"])
    assert points.loc[("tensorized m=2", 1024), "median_ms"] == 2.0
    assert points.loc[("tensorized m=2", 2048), "status"] == "ok"
    assert points.loc[("flash2", 4096), "status"] == "oom"
    assert len(points) == 3


# --- leaderboard and status markers ---------------------------------------------------------------


def test_leaderboard_ranks_ok_rows_and_marks_every_failure():
    failures = [s for s in STATUSES if s not in data.TIMED_STATUSES]
    specs = [("flash2", "exact", None, 2048, "ok", 4.0), ("tensorized", "tensorized", 2, 2048, "ok", 1.0),
             ("full", "exact", None, 2048, "ok", 6.0), ("flash2", "exact", None, 1024, "ok", 1.0)]
    specs += [(f"method-{s}", "exact", None, 2048, s, None) for s in failures]
    table = data.leaderboard(rows(*specs), 2048, "flash2")
    assert list(table["method"][:3]) == ["tensorized", "flash2", "full"]
    assert list(table["rank"][:3]) == [1, 2, 3]
    assert table["rank"][3:].isna().all()
    shown = data.format_leaderboard(table, "flash2").set_index("method")
    assert shown.loc["tensorized", "speedup"] == "4.00×"
    assert shown.loc["flash2", "speedup"] == "1.00× (baseline)"
    assert shown.loc["tensorized", "median ms"] == "1"
    assert shown.loc["tensorized", "TB/s"] == "n/a"  # ok, but not measured
    assert shown.loc["full", "peak MiB"] == "2,048"
    assert shown.loc["tensorized", "roofline"] == "50% flops"
    for status in failures:
        row = shown.loc[f"method-{status}"]
        marker = data.STATUS_MARKERS[status]
        assert row["status"] == marker and row["rank"] == ""
        for column in ("median ms", "p20–p80 ms", "speedup", "TFLOP/s", "TB/s", "roofline", "peak MiB",
                       "total MiB"):
            assert row[column] == marker, (status, column)
        assert row["message"] == f"{status} happened"
    # no metric cell is ever blank or zero
    metrics = shown[list(data.LEADERBOARD_METRICS)]
    assert not metrics.isin(["", "0", "nan", "None"]).any().any()


def test_speedup_without_baseline_at_that_length_says_so():
    df = rows(("flash2", "exact", None, 1024, "ok", 1.0), ("tensorized", "tensorized", 2, 2048, "ok", 2.0))
    shown = data.format_leaderboard(data.leaderboard(df, 2048, "flash2"), "flash2")
    assert shown.loc[0, "speedup"] == "no baseline"


def test_length_and_shape_texts():
    assert [data.format_length(n) for n in (300, 1024, 1536, 4096, 131072, 2**20, 6000)] == [
        "300", "1k", "1.5k", "4k", "128k", "1M", "6,000"]
    shape = data.Shape("bf16", True, 1, 32, 8, 128, "events")
    assert data.Shape.from_slug(shape.slug) == shape
    assert data.Shape.from_slug("bf16.full.B1.H32.KV8.D128.graph") == data.Shape("bf16", False, 1, 32, 8, 128,
                                                                                "graph")
    for bad in ("", "bf16.causal.B1", "bf16.maybe.B1.H32.KV8.D128.events", "bf16.causal.Bx.H32.KV8.D128.events"):
        assert data.Shape.from_slug(bad) is None
    assert data.series_label("tensorized", 3) == "tensorized m=3"
    assert data.series_label("flash2", pd.NA) == "flash2"
    assert data.gpu_label(None) == "CPU" and data.gpu_label("NVIDIA H100") == "NVIDIA H100"


# --- families -------------------------------------------------------------------------------------


FAMILY_ROWS = (
    ("flash2", "exact", None, 1024, "ok", 4.0), ("flash2", "exact", None, 2048, "ok", 16.0),
    ("full", "exact", None, 1024, "ok", 3.0), ("full", "exact", None, 2048, "oom", None),
    ("tensorized", "tensorized", 2, 1024, "ok", 2.0), ("tensorized", "tensorized", 3, 1024, "ok", 1.0),
    ("tensorized", "tensorized", 3, 2048, "wrong", None),
    ("simple-gla", "linear", None, 1024, "ok", 0.5), ("simple-gla", "linear", None, 2048, "error", None),
    ("retention", "linear", None, 2048, "ok", 7.0), ("gla", "linear", None, 2048, "ok", 7.0),  # a tie
    ("sliding-window", "sparse", None, 2048, "unchecked", 3.0),
    ("mystery", "from-elsewhere", None, 1024, "ok", 9.0),
)


def test_family_best_is_the_fastest_timed_row_of_each_family_at_each_length():
    best = data.family_best(rows(*FAMILY_ROWS), "flash2")
    # families in FAMILY_ORDER (one this version does not know comes last), then by length
    assert list(zip(best["family"], best["seq_len"], best["series"], strict=True)) == [
        ("exact", 1024, "full"), ("exact", 2048, "flash2"),  # full ran out of memory at 2k
        ("tensorized", 1024, "tensorized m=3"),  # no timed tensorized row at 2k: no row there
        ("linear", 1024, "simple-gla"), ("linear", 2048, "gla"),  # a tie goes to the method named first
        ("sparse", 2048, "sliding-window"),  # unchecked rows are timed rows
        ("from-elsewhere", 1024, "mystery"),
    ]
    # speedups are analysis.speedup's: flash2's median over the row's, on the same length
    assert list(best["speedup"]) == pytest.approx([4 / 3, 1.0, 4.0, 8.0, 16 / 7, 16 / 3, 4 / 9])
    assert data.family_best(rows(("full", "exact", None, 1024, "oom", None))).empty


def test_family_best_as_text():
    best = data.family_best(rows(*FAMILY_ROWS), "flash2")
    shown = data.format_family_best(best, "flash2").set_index(["family", "N"])
    assert shown.loc[("exact", "1k"), "best method"] == "full"
    assert shown.loc[("exact", "1k"), "speedup"] == "1.33×"
    assert shown.loc[("tensorized", "1k"), ["best method", "m", "median ms"]].tolist() == ["tensorized", "3", "1"]
    assert shown.loc[("sparse", "2k"), "status"] == data.UNCHECKED_TEXT
    without = data.format_family_best(data.family_best(rows(*FAMILY_ROWS), None), None)
    assert set(without["speedup"]) == {"no baseline"}


def test_leaderboard_names_each_method_family():
    shown = data.format_leaderboard(data.leaderboard(rows(*FAMILY_ROWS), 2048, "flash2"), "flash2")
    assert list(shown.columns[:3]) == ["rank", "method", "family"]
    assert dict(zip(shown["method"], shown["family"], strict=True)) == {
        "sliding-window": "sparse", "gla": "linear", "retention": "linear", "flash2": "exact", "full": "exact",
        "tensorized": "tensorized", "simple-gla": "linear"}


# --- the comparison rule --------------------------------------------------------------------------


def test_classify_ratio_threshold_without_samples():
    assert classify_ratio(1.0) == "SAME"
    assert classify_ratio(1.049) == "SAME" and classify_ratio(0.951) == "SAME"
    # beyond the threshold without samples there is no evidence either way
    assert classify_ratio(1.06) == "UNSURE"
    assert classify_ratio(0.94) == "UNSURE"
    assert classify_ratio(1.06, threshold=0.1) == "SAME"
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            classify_ratio(bad)


def test_classify_ratio_needs_a_significant_difference_when_samples_exist():
    before = [10.0 + 0.01 * i for i in range(20)]
    after_clear = [x * 1.2 for x in before]
    assert classify_ratio(1.2, before, after_clear) == "SLOWER"
    assert classify_ratio(1 / 1.2, after_clear, before) == "FASTER"
    # medians 20% apart, but the samples overlap heavily: not significant
    noisy_before = [10.0, 30.0, 9.0, 31.0, 10.5, 29.0, 11.0, 28.0, 9.5, 32.0]
    noisy_after = [12.0, 30.5, 12.5, 31.5, 11.5, 29.5, 12.2, 28.5, 12.8, 32.5]
    assert classify_ratio(1.2, noisy_before, noisy_after) == "UNSURE"
    # three samples a side can never reach p < 0.01
    assert classify_ratio(2.0, [1.0, 1.1, 1.2], [2.0, 2.1, 2.2]) == "UNSURE"
    # samples on one side only: no evidence
    assert classify_ratio(2.0, [1.0, 1.1, 1.2], None) == "UNSURE"
    # a 20% move of a 10 us kernel is under the 20 us floor
    tiny = [0.010 + 0.00001 * i for i in range(20)]
    assert classify_ratio(1.2, tiny, [x * 1.2 for x in tiny]) == "SAME"


def test_compare_runs_matches_configurations():
    def run(rows_: list[tuple]) -> pd.DataFrame:
        return pd.DataFrame([{
            "config_key": key, "method": key.split("|")[0], "family": "exact", "seq_len": 1024, "order_m": None,
            "dims": "", "batch": 1, "heads": 4, "kv_heads": 2, "head_dim": 64, "dtype": "fp32", "causal": True,
            "status": status, "median_ms": median, "p20_ms": median, "p80_ms": median, "samples_ms": samples,
        } for key, status, median, samples in rows_])

    fast = [1.0 + 0.001 * i for i in range(20)]
    before = run([("a|1", "ok", 1.0, fast), ("b|1", "ok", 1.0, fast), ("c|1", "ok", 1.0, None),
                  ("d|1", "oom", None, None), ("e|1", "ok", 1.0, None)])
    after = run([("a|1", "ok", 1.5, [x * 1.5 for x in fast]), ("b|1", "ok", 1.01, [x * 1.01 for x in fast]),
                 ("c|1", "oom", None, None), ("d|1", "oom", None, None), ("f|1", "ok", 1.0, None)])
    table = compare_runs(before, after).set_index("config_key")
    assert table.loc["a|1", "ratio"] == pytest.approx(1.5)
    assert table.loc["a|1", "verdict"] == "SLOWER"
    assert table.loc["b|1", "verdict"] == "SAME"
    assert table.loc["c|1", "verdict"] == "ok → oom"
    assert table.loc["d|1", "verdict"] == "oom (both)"
    assert table.loc["e|1", "verdict"] == "only before"
    assert table.loc["f|1", "verdict"] == "only after"
    assert table.loc["f|1", "method"] == "f"
    assert set(table["family"]) == {"exact"}


# --- the store, read-only -------------------------------------------------------------------------


def test_readonly_engine_cannot_write_or_create(tmp_path):
    missing = tmp_path / "missing.db"
    url = f"sqlite:///{missing}"
    assert data.probe(url, data.open_readonly(url)).kind == "missing"
    assert not missing.exists()

    path = tmp_path / "with space#and hash.db"
    Store(str(path)).close()
    url = f"sqlite:///{path}"
    engine = data.open_readonly(url)
    state = data.probe(url, engine)
    assert state.kind == "empty" and "no measurements" in state.message
    with engine.connect() as conn, pytest.raises(Exception, match="readonly"):
        conn.exec_driver_sql("delete from runs")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    assert data.probe(f"sqlite:///{junk}", data.open_readonly(f"sqlite:///{junk}")).kind == "invalid"
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("create table t (x)").connection.commit()
    state = data.probe(f"sqlite:///{other}", data.open_readonly(f"sqlite:///{other}"))
    assert state.kind == "invalid" and "not a tbench database" in state.message


def test_launch_command_and_free_port():
    command = streamlit_command("sqlite:////tmp/x.db", 8765)
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("app.py")
    text = " ".join(command)
    assert "--server.port 8765" in text and "--server.headless true" in text
    assert "--browser.gatherUsageStats false" in text
    assert command[-3:] == ["--", "--db", "sqlite:////tmp/x.db"]
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # really free


# --- end to end -----------------------------------------------------------------------------------


def test_end_to_end_rows_are_the_analysis_numbers_from_a_real_store(tmp_path):
    import e2e_store

    from tbench.analysis.endtoend import end_to_end

    engine = data.open_readonly(e2e_store.fill(tmp_path / "e2e.db"))
    assert data.load_scoped_gpus(engine) == [e2e_store.GPU]
    frame = data.load_scoped(engine, e2e_store.GPU)
    assert set(frame["scope"]) == {"op", "layer"} and data.scoped_runs(frame) == [2, 1]
    table = data.end_to_end_rows(data.newest_measurements(frame, [1, 2]))
    assert data.end_to_end_references(table) == ["flash2", "flash3"]
    # the dashboard's numbers are analysis.endtoend's, not its own
    expected = end_to_end(frame)
    assert list(table["xflash2"]) == pytest.approx(list(expected["xflash2"]), nan_ok=True)
    assert list(table["attention_share"]) == pytest.approx(list(expected["attention_share"]), nan_ok=True)
    rows = data.end_to_end_slice(table, e2e_store.MODEL, "layer", e2e_store.BATCH, "tbench").set_index(
        ["series", "seq_len"])
    assert len(rows) == 6
    assert rows.loc[("tensorized m=2", 4096), "xflash2"] == pytest.approx(2.0)
    assert rows.loc[("tensorized m=2", 8192), "xflash2"] == pytest.approx(4.0)
    assert rows.loc[("tensorized m=2", 8192), "xflash3"] == pytest.approx(3.2)
    assert rows.loc[("flash2", 8192), "attention_share"] == pytest.approx(8.0 / 40.0)
    # the paper's protocol is a separate slice, timed by its mean
    paper = data.end_to_end_slice(table, e2e_store.MODEL, "layer", e2e_store.BATCH, "paper").set_index("series")
    assert paper.loc["tensorized m=2", "ms"] == 3.0 and paper.loc["tensorized m=2", "xflash2"] == 4.0
    # without the op run there is no attention share, but the speedups stand
    layer_only = data.end_to_end_rows(data.newest_measurements(frame, [2]))
    assert layer_only["attention_share"].isna().all() and layer_only["xflash2"].notna().all()


def test_end_to_end_table_text(tmp_path):
    import e2e_store

    frame = data.load_scoped(data.open_readonly(e2e_store.fill(tmp_path / "e2e.db")), e2e_store.GPU)
    table = data.end_to_end_rows(data.newest_measurements(frame, data.scoped_runs(frame)))
    shown = data.format_end_to_end(data.end_to_end_slice(table, e2e_store.MODEL, "layer", 5, "tbench"))
    assert list(shown.columns) == ["N", "method", "m", "dims", "ms", "ms per layer", "× flash2", "× flash3",
                                   "attention share", "peak GiB"]
    row = shown[(shown["N"] == "8k") & (shown["method"] == "tensorized")].iloc[0]
    assert (row["ms"], row["× flash2"], row["× flash3"], row["attention share"], row["peak GiB"]) == (
        "10", "4.00×", "3.20×", "10.0 %", "2")
    assert list(shown["N"]) == ["4k", "4k", "4k", "8k", "8k", "8k"]
    no_ops = data.end_to_end_rows(data.newest_measurements(frame, [2]))
    shown = data.format_end_to_end(data.end_to_end_slice(no_ops, e2e_store.MODEL, "layer", 5, "tbench"))
    assert set(shown["attention share"]) == {"no op row"}


def test_end_to_end_of_a_store_without_layer_rows(tmp_path):
    import e2e_store

    engine = data.open_readonly(e2e_store.fill(tmp_path / "ops.db", layers=False))
    assert data.load_scoped_gpus(engine) == []
    frame = data.load_scoped(engine, e2e_store.GPU)
    assert frame.empty and data.scoped_runs(frame) == []
    assert data.end_to_end_rows(data.newest_measurements(frame, [])).empty
