"""The mode axis (fwd, bwd, fwd_bwd): keys, sweeps, cost per mode, the gradient check, and a real
CLI run into SQLite through `show`, the gate and a schema upgrade."""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest
from alembic import command
from conftest import run_cli
from errors import rel_err, worst_head_err
from sqlalchemy import create_engine

from tbench.core import cost
from tbench.core.case import Case, Mode
from tbench.core.errors import UsageError
from tbench.core.sweep import Sweep, parse_modes
from tbench.results import migrate
from tbench.results.bundle import MeasurementModel
from tbench.results.models import SCHEMA_VERSION
from tbench.results.store import Store

SMALL = ["--device", "cpu", "--lengths", "128", "--heads", "2", "--kv-heads", "1", "--head-dim", "32",
         "--min-samples", "5", "--budget", "0.3", "--min-time", "0.02", "--quiet"]


def _case(mode: str, **over) -> Case:
    base = dict(method="sdpa-math", family="exact", seq_len=1000, batch=1, heads=4, kv_heads=2, head_dim=64,
                dtype="bf16", causal=True, device="cpu", mode=mode)
    return Case(**{**base, **over})


def test_forward_keys_are_those_from_before_modes():
    # the committed baseline's keys must keep matching forward cases
    assert _case("fwd").key == "sdpa-math|N1000|m-|-|B1|H4|KV2|D64|bf16|causal|events"
    with open("results/baselines/h100.json") as f:
        keys = {c["config_key"] for c in json.load(f)["configurations"]}
    assert all(not k.endswith(("|bwd", "|fwd_bwd")) for k in keys)
    assert _case("bwd").key == _case("fwd").key + "|bwd"
    assert _case("fwd_bwd").key == _case("fwd").key + "|fwd_bwd"
    assert len({_case(m).key for m in ("fwd", "bwd", "fwd_bwd")}) == 3


def test_modes_parse_and_stored_sweeps_without_modes_time_the_forward():
    assert parse_modes("fwd, bwd,fwd_bwd,bwd") == ["fwd", "bwd", "fwd_bwd"]
    for bad in ("", "back", "fwd,bwd2"):
        with pytest.raises(UsageError, match="allowed: fwd, bwd, fwd_bwd"):
            parse_modes(bad)
    old = Sweep(lengths=[128], methods=["sdpa-math"]).as_dict()
    del old["modes"]
    assert Sweep.from_dict(old).modes == ["fwd"]
    assert Case(**{**_case("fwd").as_dict(), "dims": None}).mode is Mode.FWD


def test_flops_and_bytes_per_mode():
    for over in ({}, {"causal": False}, {"method": "tensorized-ref", "family": "tensorized", "order": 2,
                                         "dims": (32, 32)}):
        fwd, bwd, both = (_case(m, **over) for m in ("fwd", "bwd", "fwd_bwd"))
        assert cost.flops(bwd) == pytest.approx(2.5 * cost.flops(fwd))
        assert cost.flops(both) == pytest.approx(3.5 * cost.flops(fwd))
        assert cost.min_bytes(both) == pytest.approx(cost.min_bytes(fwd) + cost.min_bytes(bwd))
    rows = 1 * 1000 * 64 * 2
    # exact: reads q, k, v, o, dO (3H + 2H_kv) and writes dq, dk, dv (H + 2H_kv)
    assert cost.min_bytes(_case("bwd")) == (4 * 4 + 4 * 2) * rows
    # tensorized m=2: hop 1 as exact; hop 2's value has H heads
    tz = _case("bwd", method="tensorized-ref", family="tensorized", order=2, dims=(32, 32))
    assert cost.min_bytes(tz) == ((4 * 4 + 4 * 2) + (6 * 4 + 2 * 2)) * rows


def test_old_bundles_import_as_forward():
    data = dict(config_key="k", method="sdpa-math", family="exact", seq_len=1, batch=1, heads=1, kv_heads=1,
                head_dim=8, dtype="fp32", causal=True, device="cpu", timing_mode="cpu", status="ok")
    assert MeasurementModel.model_validate(data).mode == "fwd"
    with pytest.raises(ValueError):
        MeasurementModel.model_validate({**data, "mode": "sideways"})


def _rows(db) -> dict[tuple[str, str], tuple]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT method, mode, status, message, check_error, device_state, flops "
                            "FROM measurements").fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def test_broken_backward_is_wrong_in_bwd_mode_only(tmp_path, plugin_env):
    db = tmp_path / "b.db"
    result = run_cli(["run", *SMALL, "--modes", "fwd,bwd,fwd_bwd", "--methods",
                      "test-bug-dk,test-bug-dv-head,test-forward-only,sdpa-math", "--db", str(db)], plugin_env)
    assert result.returncode == 0, result.stderr
    rows = _rows(db)
    for method in ("test-bug-dk", "test-bug-dv-head"):
        assert rows[(method, "fwd")][0] == "ok"
        for mode in ("bwd", "fwd_bwd"):
            status, message, *_ = rows[(method, mode)]
            assert status == "wrong", (method, mode, message)
    assert "gradient dk relative L2 error" in rows[("test-bug-dk", "bwd")][1]
    assert "gradient dv" in rows[("test-bug-dv-head", "bwd")][1] and "kv head 0" in rows[("test-bug-dv-head", "bwd")][1]
    assert rows[("test-forward-only", "fwd")][0] == "ok"
    assert rows[("test-forward-only", "bwd")][:2] == ("unsupported",
                                                      "mode bwd needs a backward pass; test-forward-only is "
                                                      "forward-only here")
    # the correct method passes with its gradient errors recorded, far below the broken ones'
    for mode in ("bwd", "fwd_bwd"):
        status, _, error, state, _ = rows[("sdpa-math", mode)]
        grads = json.loads(state)["check"]["grad_errors"]
        assert status == "ok" and set(grads) == {"dq", "dk", "dv"} and max(grads.values()) < 1e-5
        assert error == pytest.approx(max([*grads.values(), error]))
    assert rows[("sdpa-math", "bwd")][4] == pytest.approx(2.5 * rows[("sdpa-math", "fwd")][4])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, plugin_path):
    """Two runs of fwd and bwd; in the second, the forward of test-slow sleeps 20 ms a call."""
    import os

    db = tmp_path_factory.mktemp("modes") / "m.db"
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join(p for p in (str(plugin_path), env.get("PYTHONPATH", "")) if p),
               TBENCH_TEST_PLUGIN="1", COLUMNS="200", OMP_NUM_THREADS="1")
    env.pop("TBENCH_DB", None)
    for slowdown in ("0", "0.02"):
        result = run_cli(["run", *SMALL, "--modes", "fwd,bwd", "--methods", "test-slow,sdpa-math", "--min-samples",
                          "10", "--db", str(db)], {**env, "TBENCH_TEST_SLOWDOWN_S": slowdown})
        assert result.returncode == 0, result.stderr
    return db, env


def test_show_has_a_mode_column_when_a_run_has_several(two_runs):
    db, env = two_runs
    result = run_cli(["show", "--db", str(db)], env)
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if "method" in line and "status" in line)
    assert "mode" in header
    lines = [line for line in result.stdout.splitlines() if "│ sdpa-math " in line]
    assert [("bwd" in line) for line in lines] == [False, True]  # fwd first, then bwd


def test_gate_matches_configurations_by_mode(two_runs):
    db, env = two_runs
    result = run_cli(["gate", "--baseline", "1", "--candidate", "2", "--db", str(db), "--min-delta-us", "2000"], env)
    assert result.returncode == 1, (result.stdout, result.stderr)
    key = "test-slow|N128|m-|-|B1|H2|KV1|D32|fp32|causal|cpu"
    # the sleep is in the forward: bwd runs its forward outside the timed region, so it is not slower
    assert f"SLOWER {key}" in result.stderr
    assert f"SLOWER {key}|bwd" not in result.stderr
    assert f"{key}|bwd" in result.stdout


def test_upgrade_from_the_schema_before_modes(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "0001")
    with sqlite3.connect(tmp_path / "old.db") as conn:
        conn.execute("INSERT INTO runs (uuid, status, started_at, command, host, device, gpu_count, torch_version, "
                     "python_version, platform, tbench_version, sweep, environment) VALUES ('u', 'finished', "
                     "'2026-01-01 00:00:00', '', '', 'cpu', 0, '', '', '', '', '{}', '{}')")
        conn.execute("INSERT INTO measurements (run_id, config_key, method, family, seq_len, dims, batch, heads, "
                     "kv_heads, head_dim, dtype, causal, device, timing_mode, status, message, provenance, "
                     "n_samples) VALUES (1, 'k', 'sdpa-math', 'exact', 128, '', 1, 2, 1, 32, 'fp32', 1, 'cpu', "
                     "'cpu', 'ok', '', '', 0)")
    engine.dispose()
    store = Store(url)
    df = store.measurements()
    store.close()
    assert list(df["mode"]) == ["fwd"]
    # and on through the later revisions: an old row timed the operator, tbench's way
    assert (list(df["scope"]), list(df["layers"]), list(df["protocol"])) == (["op"], [0], ["tbench"])
    with sqlite3.connect(tmp_path / "old.db") as conn:
        # upgraded through 0002 (the mode column) to this tbench's head
        assert {r[0] for r in conn.execute("SELECT version_num FROM alembic_version")} == migrate.head_revisions()
        assert "0002" in {s.revision for s in migrate.ScriptDirectory.from_config(migrate.alembic_config())
                          .iterate_revisions(tuple(migrate.head_revisions()), "base")}
        assert conn.execute("SELECT value FROM tbench_meta").fetchall() == [(str(SCHEMA_VERSION),)]


def test_bad_modes_are_refused_in_one_line(tmp_path, cli_env):
    result = run_cli(["run", *SMALL, "--modes", "fwd,backward", "--db", str(tmp_path / "x.db")], cli_env)
    assert result.returncode == 2
    assert "mode 'backward' unknown; allowed: fwd, bwd, fwd_bwd" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.db").exists()


def test_the_recomputing_method_runs_only_where_it_differs():
    from tbench.methods.catalog import load_registry

    method = load_registry().get("tensorized-recompute")
    kwargs = dict(method="tensorized-recompute", family="tensorized", seq_len=64, batch=1, heads=2, kv_heads=1,
                  head_dim=32, dtype="fp32", causal=True, device="cpu", order=2, dims=(8, 8))
    reason = method.unsupported_reason(Case(**kwargs, mode="fwd"))
    assert reason is not None and "same forward as tensorized" in reason
    assert method.unsupported_reason(Case(**kwargs, mode="bwd")) is None
    assert method.unsupported_reason(Case(**kwargs, mode="fwd_bwd")) is None


@pytest.mark.parametrize("name", ["tensorized", "tensorized-recompute", "tensorized-ref"])
def test_tensorized_gradients_pass_the_check_and_a_wrong_dk_fails(name):
    # `tensorized` differentiates through the Triton backward (Triton's interpreter on a CPU)
    from tbench.harness.correctness import check
    from tbench.methods.catalog import load_registry

    method = load_registry().get(name)
    case = Case(method=name, family="tensorized", seq_len=60, batch=1, heads=2, kv_heads=1, head_dim=32,
                dtype="fp32", causal=True, device="cpu", order=2, dims=(8, 8), mode="bwd")
    good = check(lambda a, b, c: method.call(a, b, c, case), case, seed=3)
    assert good.passed, good.message
    assert set(good.details["grad_errors"]) == {"dq", "dk", "dv"} and good.error < 1e-5

    import torch

    def bad_dk(a, b, c):
        b = b + 0.02 * (b - b.detach())  # same values, dK scaled by 1.02
        return method.call(a, b, c, case)

    bad = check(bad_dk, case, seed=3)
    assert not bad.passed and "gradient dk" in bad.message
    assert torch.is_grad_enabled()


def _counted_step(mode: str, timing: str):
    """A step of sdpa-math on a small case, with the forward calls counted."""
    import torch

    from tbench.harness.passes import make_step
    from tbench.kernels.tensors import make_inputs

    case = _case(mode, seq_len=64, heads=2, kv_heads=1, head_dim=16, dtype="fp32", timing=timing)
    inputs = make_inputs(case, seed=5)
    forwards = []

    def forward(q, k, v):
        forwards.append(1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return make_step(forward, inputs, case), inputs, forwards, forward


def _eager_gradients(forward, inputs, d_out):
    import torch

    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    return torch.autograd.grad(forward(*leaves), leaves, d_out)


@pytest.mark.parametrize("mode", ["bwd", "fwd_bwd"])
@pytest.mark.parametrize("timing", ["events", "graph"])
def test_every_training_step_returns_fresh_gradients(mode, timing):
    import torch

    from tbench.harness.passes import output_gradient

    step, inputs, forwards, forward = _counted_step(mode, timing)
    assert (step.setup is None) == (timing == "graph" or mode == "fwd_bwd")  # a replayed call has no setup
    got = [step() for _ in range(3)]
    want = _eager_gradients(forward, inputs, output_gradient(torch.empty_like(inputs[0])))
    for grads in got:  # the third call's are the first's: nothing was added to a held gradient
        assert len(grads) == 3
        for g, w in zip(grads, want, strict=True):
            torch.testing.assert_close(g, w)
    assert all(x.grad is None for x in inputs)
    # graph timing's backward runs again on one retained forward; every other step makes its own
    assert len(forwards) == (1 if (timing, mode) == ("graph", "bwd") else 3) + 1
    step.release()
    step()
    assert len(forwards) == (2 if (timing, mode) == ("graph", "bwd") else 4) + 1


def test_a_replay_keeps_its_captured_call_alive():
    # what the call holds (a retained forward's saved tensors) is memory the replay reads
    import gc
    import weakref

    from tbench.harness.timing import Replay

    step, *_ = _counted_step("bwd", "graph")
    step()
    alive = weakref.ref(step.call)
    replay = Replay(graph=None, captured=step.call)  # type: ignore[arg-type]
    del step
    gc.collect()
    assert alive() is not None
    del replay
    gc.collect()
    assert alive() is None


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tensorized", "tensorized-triton", "sdpa-cudnn"])
@pytest.mark.parametrize("mode", ["bwd", "fwd_bwd"])
def test_a_captured_training_step_replays_the_eager_gradients(name, mode):
    import torch

    from tbench.harness.passes import make_step, output_gradient
    from tbench.harness.timing import CudaGraphTimer
    from tbench.kernels.tensors import make_inputs
    from tbench.methods.catalog import load_registry

    method = load_registry().get(name)
    extra = {"order": 2, "dims": (32, 32)} if method.is_tensorized else {}
    case = Case(name, method.family, 1024, 1, 8, 2, 128, "bf16", True, "cuda", mode=mode, timing="graph", **extra)
    inputs = method.prepared(*make_inputs(case, seed=7), case)
    call = method.bound(case)

    def forward(a, b, c):
        return call(a, b, c, case)

    step = make_step(forward, inputs, case)
    step()  # the warm-up's call: tuning and the hops' backend choice happen outside the capture
    step.release()
    kept: list = []

    def fn() -> None:
        kept[:] = step.call()  # the capture's outputs: the replays write into them

    replay = CudaGraphTimer("cuda")._capture(fn)
    d_out = output_gradient(torch.empty_like(inputs[0]))

    if mode == "fwd_bwd":
        # new values in the captured inputs: a replay must compute their gradients, not the old ones
        old = _eager_gradients(forward, inputs, d_out)
        generator = torch.Generator(device="cuda").manual_seed(8)
        for x in inputs:
            x.copy_(torch.randn(x.shape, generator=generator, device="cuda", dtype=x.dtype))
    replay()
    torch.cuda.synchronize()
    want = _eager_gradients(forward, inputs, d_out)
    for name_, g, w in zip(("dq", "dk", "dv"), kept, want, strict=True):
        assert worst_head_err(g, w) < 1e-2, (name_, worst_head_err(g, w))  # every head, as the other gradient tests
    if mode == "fwd_bwd":
        assert all(rel_err(g, w) > 0.1 for g, w in zip(kept, old, strict=True))


def test_dashboard_mode_selector_defaults_to_the_forward(tmp_path):
    from test_dashboard_app import app, table

    from tbench.core.records import MeasurementRecord, RunInfo, Timing

    store = Store(str(tmp_path / "d.db"))
    run = store.start_run(RunInfo(command="tbench run --modes fwd,bwd", device="cpu"))
    for mode, median in (("fwd", 1.0), ("bwd", 3.0)):
        for method, factor in (("sdpa-math", 1.0), ("full", 2.0)):
            case = Case(method, "exact", 256, 1, 2, 1, 32, "fp32", True, "cpu", timing="cpu", mode=mode)
            ms = median * factor
            timing = Timing(ms, ms, ms, ms, 0.0, ms, [ms] * 5)
            store.record(run, MeasurementRecord(case, "ok", timing=timing, fidelity_rel_l2=1e-7))
    store.finish_run(run, "finished")
    store.close()
    url = f"sqlite:///{tmp_path / 'd.db'}"
    at = app(url)
    assert not at.exception
    assert at.selectbox(key="mode").value == "fwd" and at.selectbox(key="mode").options == ["fwd", "bwd"]
    assert table(at).set_index("method").loc["sdpa-math", "median ms"] == "1"
    at.selectbox(key="mode").set_value("bwd").run()
    assert not at.exception and at.query_params["mode"] == "bwd"
    assert "bwd" in at.selectbox(key="shape").value.label
    bwd = table(at).set_index("method")
    assert bwd.loc["sdpa-math", "median ms"] == "3"
    # the backward over the same configuration's forward in the same run (3 / 1 and 6 / 2)
    assert bwd.loc["sdpa-math", "× fwd"] == "3.00×" and bwd.loc["full", "× fwd"] == "3.00×"
    # a link keeps the mode
    assert table(app(url, mode="bwd")).set_index("method").loc["full", "median ms"] == "6"
    # no forward to divide by: no column
    at.selectbox(key="mode").set_value("fwd").run()
    assert "× fwd" not in table(at).columns


def test_dashboard_divides_by_the_forward_of_the_same_run_only(tmp_path):
    from tbench.core.records import MeasurementRecord, RunInfo, Timing
    from tbench.dashboard import data

    store = Store(str(tmp_path / "d.db"))
    # run 1 times both passes of sdpa-math; run 2 only the forward of full, run 3 only its backward
    for modes, method, median in ((("fwd", "bwd"), "sdpa-math", 2.0), (("fwd",), "full", 1.0),
                                  (("bwd",), "full", 5.0)):
        run = store.start_run(RunInfo(command="tbench run", device="cpu"))
        for mode in modes:
            ms = median * (2.5 if mode == "bwd" else 1.0)
            case = Case(method, "exact", 256, 1, 2, 1, 32, "fp32", True, "cpu", timing="cpu", mode=mode)
            store.record(run, MeasurementRecord(case, "ok", timing=Timing(ms, ms, ms, ms, 0.0, ms, [ms] * 5)))
        store.finish_run(run, "finished")
    store.close()
    engine = data.open_readonly(f"sqlite:///{tmp_path / 'd.db'}")
    shape = data.Shape("fp32", True, 1, 2, 1, 32, "cpu", mode="bwd")
    rows = data.with_over_forward(data.load_slice(engine, "CPU", shape),
                                  data.load_slice(engine, "CPU", data.Shape("fp32", True, 1, 2, 1, 32, "cpu")), "bwd")
    ratio = dict(zip(rows["method"], rows["over_fwd"], strict=True))
    assert ratio["sdpa-math"] == pytest.approx(2.5)
    assert pd.isna(ratio["full"])  # its forward came from another run


def test_bundles_carry_the_mode(tmp_path):
    from tbench.core.records import MeasurementRecord, RunInfo
    from tbench.results.bundle import export_bundle, import_runs, read_bundle, write_bundle

    store = Store(str(tmp_path / "a.db"))
    run = store.start_run(RunInfo(command="x", device="cpu"))
    for mode in ("fwd", "fwd_bwd"):
        store.record(run, MeasurementRecord(_case(mode), "unsupported", message="no"))
    store.finish_run(run, "finished")
    write_bundle(export_bundle(store, [run]), tmp_path / "b.json")
    store.close()
    other = Store(str(tmp_path / "c.db"))
    import_runs(other, read_bundle(tmp_path / "b.json").runs)
    got = other.measurements()
    other.close()
    assert dict(zip(got["config_key"], got["mode"], strict=True)) == {_case("fwd").key: "fwd",
                                                                      _case("fwd_bwd").key: "fwd_bwd"}


@pytest.mark.gpu
@pytest.mark.parametrize("timing", ["events", "graph"])
@pytest.mark.parametrize("name", ["tensorized", "tensorized-sdpa", "sdpa-cudnn"])
def test_gpu_backward_modes(name, timing):
    from tbench.harness.measure import MeasureSettings, measure_group
    from tbench.harness.timing import TimingPolicy
    from tbench.methods.catalog import load_registry

    registry = load_registry()
    method = registry.get(name)
    extra = {"order": 2, "dims": (16, 16)} if method.is_tensorized else {}
    # short enough for the float64 gradients to be evaluated whole
    cases = [Case(name, method.family, 256, 1, 8, 2, 128, "bf16", True, "cuda", mode=mode, timing=timing, **extra)
             for mode in ("fwd", "bwd", "fwd_bwd")]
    records = []
    measure_group(cases, registry, MeasureSettings(policy=TimingPolicy.quick()), records.append)
    by_mode = {r.case.mode: r for r in records}
    for mode, rec in by_mode.items():
        assert rec.status == "ok", (mode, rec.message)
    assert set(by_mode[Mode.BWD].device_state["check"]["grad_errors"]) == {"dq", "dk", "dv"}
    # what a training step holds is more than the forward alone
    assert by_mode[Mode.BWD].peak_bytes > by_mode[Mode.FWD].peak_bytes
