"""Training steps at layer and model scope (modes bwd and fwd_bwd), their gradient check and memory
estimate, and the model-depth estimate checked against a full-depth run."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pandas as pd
import pytest
import torch
from conftest import measurement_rows as _rows
from conftest import run_cli

from tbench.analysis.endtoend import depth_check
from tbench.core.case import Case
from tbench.methods.catalog import load_registry

pytest.importorskip("transformers")
QUICK = ["--min-samples", "3", "--budget", "0.3", "--min-time", "0.02", "--quiet"]


pytestmark = pytest.mark.usefixtures("hf_kernels_unshadowed")



def test_layer_training_step_stores_ok_rows_with_gradient_errors(tmp_path, cli_env):
    db = tmp_path / "t.db"
    result = run_cli(["run", "--device", "cpu", "--scope", "layer", "--preset", "tiny", "--methods",
                      "tensorized-ref,sdpa-math", "--lengths", "256", "--modes", "fwd,fwd_bwd", *QUICK,
                      "--db", str(db)], cli_env)
    assert result.returncode == 0, result.stderr
    rows = _rows(db)
    assert {(r["method"], r["order_m"], r["mode"]) for r in rows} == {
        (m, o, mode) for m, o in (("sdpa-math", None), ("tensorized-ref", 2), ("tensorized-ref", 3))
        for mode in ("fwd", "fwd_bwd")}
    for r in rows:
        assert r["status"] == "ok", r["message"]
        assert r["median_ms"] > 0 and r["peak_bytes"] > 0
        check = json.loads(r["device_state"])["check"]
        if r["mode"] == "fwd":
            assert "grad_errors" not in check
            continue
        assert set(check["grad_errors"]) == {"dx", "dwq"} and max(check["grad_errors"].values()) < 1e-5
        assert r["check_error"] == pytest.approx(max(r["check_error"], *check["grad_errors"].values()))
    peak = {(r["method"], r["order_m"], r["mode"]): r["peak_bytes"] for r in rows}
    assert peak[("sdpa-math", None, "fwd_bwd")] > peak[("sdpa-math", None, "fwd")]  # the saved activations


def test_model_training_step_bwd_and_fwd_bwd(tmp_path, cli_env):
    db = tmp_path / "m.db"
    result = run_cli(["run", "--device", "cpu", "--scope", "model", "--layers", "2", "--preset", "tiny",
                      "--methods", "sdpa-math", "--lengths", "128", "--modes", "bwd,fwd_bwd", *QUICK,
                      "--db", str(db)], cli_env)
    assert result.returncode == 0, result.stderr
    rows = _rows(db)
    # rows are stored as each finishes its samples, in either order
    assert sorted((r["mode"], r["status"]) for r in rows) == [("bwd", "ok"), ("fwd_bwd", "ok")], rows[0]["message"]
    assert all("of the first layer" in json.loads(r["device_state"])["check"]["grad_compared"] for r in rows)


def test_a_broken_gradient_through_the_cli_is_wrong(tmp_path, plugin_env):
    # test-bug-dk: the right forward, dK 2 % too large (tests/plugin)
    db = tmp_path / "b.db"
    result = run_cli(["run", "--device", "cpu", "--scope", "layer", "--preset", "tiny", "--methods",
                      "test-bug-dk", "--lengths", "128", "--modes", "fwd,fwd_bwd", *QUICK, "--db", str(db)],
                     plugin_env)
    assert result.returncode == 0, result.stderr
    rows = {r["mode"]: r for r in _rows(db)}
    assert rows["fwd"]["status"] == "ok"
    assert rows["fwd_bwd"]["status"] == "wrong"
    assert "gradient dx relative L2 error" in rows["fwd_bwd"]["message"]


class _WrongDq(torch.autograd.Function):
    """Identity forward; the backward scales the gradient by `factor`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def _case(mode: str, scope: str = "layer", **over) -> Case:
    base = dict(method="sdpa-math", family="exact", seq_len=128, batch=2, heads=4, kv_heads=2, head_dim=16,
                dtype="fp32", causal=True, device="cpu", timing="cpu", scope=scope, model="tiny",
                layers=1 if scope == "layer" else 2, mode=mode)
    return Case(**{**base, **over})


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("scope", ["layer", "model"])
def test_the_gradient_check_catches_a_wrong_backward(monkeypatch, scope, sampled):
    from tbench.harness import correctness
    from tbench.harness.scoped import build_for, check_scoped

    if sampled:  # the long-sequence path: sampled rows (model scope: its first layer alone)
        monkeypatch.setattr(correctness, "WHOLE_OUTPUT_WORK", 0)
    sdpa = load_registry(plugins=False).get("sdpa-math")

    def wrong_dq(q, k, v, case):
        return sdpa.call(_WrongDq.apply(q, 1.01), k, v, case)

    broken = dataclasses.replace(sdpa, call=wrong_dq, bind=None)
    case = _case("fwd_bwd", scope)
    built, _ = build_for(case, 0)
    good = check_scoped(case, sdpa, built, seed=5)
    assert good.passed, good.message
    assert good.details["rows"] == ("all" if not sampled else len(correctness.check_rows(case.attention(), 5)))
    assert max(good.details["grad_errors"].values()) < 1e-5
    # the forward is right: the forward check alone passes it
    assert check_scoped(_case("fwd", scope), broken, built, seed=5).passed
    bad = check_scoped(case, broken, built, seed=5)
    assert not bad.passed and "gradient dx relative L2 error" in bad.message, bad.message
    assert bad.details["grad_errors"]["dx"] > 1e-3


def test_the_training_estimate_makes_the_runner_skip_what_cannot_fit(monkeypatch):
    from tbench.harness import measure
    from tbench.harness.measure import MeasureSettings, measure_group
    from tbench.harness.scoped import scoped_memory_estimate
    from tbench.harness.timing import TimingPolicy

    registry = load_registry(plugins=False)
    sdpa = registry.get("sdpa-math")
    forward, training = _case("fwd", batch=1, seq_len=256), _case("fwd_bwd", batch=1, seq_len=256)
    low, high = scoped_memory_estimate(forward, sdpa), scoped_memory_estimate(training, sdpa)
    assert high > low
    # a device with room for the forward and not for the training step
    monkeypatch.setattr(measure, "free_bytes", lambda device: (low + high) // 2)
    records = []
    settings = MeasureSettings(policy=TimingPolicy(min_samples=3, max_samples=3, min_time_s=0.0, warmup_calls=1,
                                                   warmup_s=0.0), check_seed=1)
    measure_group([forward, training], registry, settings, records.append)
    status = {r.case.mode.value: (r.status, r.message) for r in records}
    assert status["fwd"][0] == "ok", status
    assert status["fwd_bwd"][0] == "skipped", status


def _frame(estimate: float, measured: float, **over) -> pd.DataFrame:
    common = dict(method="sdpa-math", order_m=None, dims="", seq_len=128, batch=1, heads=4, kv_heads=2, head_dim=16,
                  dtype="fp32", causal=True, device="cpu", timing_mode="cpu", mode="fwd", scope="model",
                  model="tiny", protocol="tbench", status="ok")
    k1 = {**common, "layers": 1, "median_ms": estimate / 2, "mean_ms": estimate / 2,
          "device_state": {"depth": {"depth": 2, "layers_timed": 1, "full_depth_ms_estimate": estimate}}}
    full = {**common, "layers": 2, "median_ms": measured, "mean_ms": measured,
            "device_state": {"depth": {"depth": 2, "layers_timed": 2, "full_depth_ms_estimate": measured}}}
    return pd.DataFrame([{**k1, **over}, full])


def test_depth_check_pairs_only_the_same_configuration():
    (row,) = depth_check(_frame(10.5, 10.0)).itertuples(index=False)
    assert (row.layers_timed, row.depth, row.estimate_ms, row.measured_ms) == (1, 2, 10.5, 10.0)
    assert row.ratio == pytest.approx(1.05) and row.holds
    assert not depth_check(_frame(20.0, 10.0)).loc[0, "holds"]
    assert depth_check(_frame(10.0, 10.0, seq_len=256)).empty  # another N: nothing to compare
    assert depth_check(_frame(10.0, 10.0, mode="fwd_bwd")).empty
    assert depth_check(_frame(10.0, 10.0, status="oom")).empty


def test_depth_check_with_real_runs_in_a_real_store(tmp_path, cli_env):
    from tbench.results.store import Store

    db = tmp_path / "d.db"
    for layers in ("1", "2"):  # the tiny preset's depth is 2
        result = run_cli(["run", "--device", "cpu", "--scope", "model", "--layers", layers, "--preset", "tiny",
                          "--methods", "sdpa-math", "--lengths", "128", *QUICK, "--db", str(db)], cli_env)
        assert result.returncode == 0, result.stderr
    k1, full = _rows(db)
    check = depth_check(Store(str(db), readonly=True).measurements())
    (row,) = check.itertuples(index=False)
    estimate = json.loads(k1["device_state"])["depth"]["full_depth_ms_estimate"]
    assert estimate == pytest.approx(2 * k1["median_ms"])
    assert (row.layers_timed, row.depth) == (1, 2)
    assert row.estimate_ms == pytest.approx(estimate) and row.measured_ms == pytest.approx(full["median_ms"])
    assert row.ratio == pytest.approx(estimate / full["median_ms"])
    shown = run_cli(["show", "--db", str(db)], {**cli_env, "COLUMNS": "200"})
    assert shown.returncode == 0 and "the estimate from K layers against a full-depth run" in shown.stdout
    # a wrong estimate (ten times the stored one) fails the check, in the function and in `show`
    state = json.loads(k1["device_state"])
    state["depth"]["full_depth_ms_estimate"] = 10 * estimate
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE measurements SET device_state = ? WHERE id = ?", (json.dumps(state), k1["id"]))
    con.close()
    wrong = depth_check(Store(str(db), readonly=True).measurements())
    assert wrong.loc[0, "ratio"] == pytest.approx(10 * row.ratio) and not wrong.loc[0, "holds"]
    shown = run_cli(["show", "--db", str(db)], {**cli_env, "COLUMNS": "200"})
    assert shown.returncode == 0 and "│ no " in shown.stdout
