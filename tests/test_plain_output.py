"""Tables written to a pipe or a file are not cut to 80 columns: method names, numbers and gate
configurations appear whole, as `tbench ... | cat` or a CI log shows them."""

from __future__ import annotations

import pytest
from conftest import run_cli

from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.methods.catalog import load_registry
from tbench.results.store import Store

ROWS = {("sdpa-math", None): 2.0, ("full", None): 1.0, ("tensorized-ref", 2): 0.5, ("tensorized-ref", 3): 0.25}
DIMS = {2: (16, 32), 3: (8, 8, 8)}


@pytest.fixture
def piped_env(cli_env: dict[str, str]) -> dict[str, str]:
    env = dict(cli_env)
    env.pop("COLUMNS", None)  # as in a CI log: no terminal, no width given
    env.pop("LINES", None)
    return env


@pytest.fixture
def store_path(tmp_path):  # type: ignore[no-untyped-def]
    """Two CPU runs of the same configurations at 512, the second a little slower."""
    path = tmp_path / "plain.db"
    store = Store(str(path))
    for scale in (1.0, 1.01):
        run = store.start_run(RunInfo(command="tbench run --device cpu", device="cpu", environment={"cpu": "T"}))
        for (method, order), median in ROWS.items():
            case = Case(method, "tensorized" if order else "exact", 512, 1, 4, 2, 64, "fp32", True, "cpu",
                        order=order, dims=DIMS.get(order or 0), timing="cpu")
            ms = median * scale
            samples = [ms * (1 + 0.001 * i) for i in range(-10, 11)]
            store.record(run, MeasurementRecord(case, "ok", timing=Timing(ms, ms * 0.99, ms * 1.01, ms, 0.0,
                                                                              samples[0], samples)))
        store.finish_run(run, "finished")
    store.close()
    return path


def test_list_names_every_method_whole(piped_env):
    result = run_cli(["list", "--device", "cpu"], piped_env)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    cells = {line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")}
    assert set(load_registry(plugins=False).names()) <= cells


def test_show_rows_are_whole(piped_env, store_path):
    result = run_cli(["show", "1", "--db", str(store_path)], piped_env)
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines()
            if line.startswith("│")]
    # columns: family, N, method, m, dims, status, ms, spread, TFLOP/s, TB/s, mem, speedup, err
    by_method = {(r[2], r[3]): r for r in rows}
    assert set(by_method) == {("sdpa-math", ""), ("full", ""), ("tensorized-ref", "2"), ("tensorized-ref", "3")}
    assert by_method[("tensorized-ref", "3")][4] == "8x8x8" and by_method[("tensorized-ref", "3")][6] == "0.25"
    # the run names no baseline: the fastest exact method, full (twice as fast as sdpa-math)
    assert by_method[("tensorized-ref", "3")][11] == "4.00x" and by_method[("full", "")][11] == "1.00x"
    assert by_method[("sdpa-math", "")][11] == "0.50x"
    assert by_method[("full", "")][7] == "-1.0/+1.0%"
    assert by_method[("tensorized-ref", "3")][0] == "tensorized" and by_method[("full", "")][0] == "exact"


def test_gate_table_names_each_configuration(piped_env, store_path):
    result = run_cli(["gate", "--baseline", "1", "--candidate", "2", "--db", str(store_path)], piped_env)
    assert result.returncode in (0, 1), result.stderr
    assert "…" not in result.stdout
    keys = {line.split("│")[2].strip() for line in result.stdout.splitlines() if line.startswith("│")}
    assert keys == {
        "sdpa-math|N512|m-|-|B1|H4|KV2|D64|fp32|causal|cpu", "full|N512|m-|-|B1|H4|KV2|D64|fp32|causal|cpu",
        "tensorized-ref|N512|m2|16x32|B1|H4|KV2|D64|fp32|causal|cpu",
        "tensorized-ref|N512|m3|8x8x8|B1|H4|KV2|D64|fp32|causal|cpu",
    }
