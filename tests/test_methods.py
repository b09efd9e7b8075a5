"""The newer exact methods: FlexAttention for real on the CPU (compiled), and the FA3/FA4 adapters."""

from __future__ import annotations

import os
import sqlite3
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from tbench.core.case import Case
from tbench.harness.correctness import check
from tbench.harness.memory import _profiler_chatter_dropped
from tbench.kernels.tensors import make_inputs
from tbench.methods.catalog import load_registry

SMALL = ["--device", "cpu", "--heads", "4", "--kv-heads", "2", "--head-dim", "32", "--budget", "0.3",
         "--min-samples", "3", "--quiet"]


def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=case.causal,
                                          scale=case.softmax_scale, enable_gqa=True)


def test_flex_is_measured_compiled_on_the_cpu_and_matches_exact_attention(tmp_path, cli_env):
    db = tmp_path / "flex.db"
    result = run_cli(["run", "--lengths", "200,256", "--methods", "flex,sdpa-math", "--db", str(db), *SMALL], cli_env)
    assert result.returncode == 0, result.stderr
    rows = sqlite3.connect(db).execute(
        "select method, seq_len, status, median_ms, check_error, fidelity_rel_l2, provenance from measurements"
    ).fetchall()
    flex = {r[1]: r for r in rows if r[0] == "flex"}
    # 200 is not a multiple of the block mask's 128-wide blocks: the ragged last block must be right
    assert sorted(flex) == [200, 256]
    for row in flex.values():
        assert row[2] == "ok" and row[3] > 0
        assert row[4] < 1e-5 and row[5] < 1e-5  # fp32 inputs on the CPU
        assert "flex_attention, compiled" in row[6]


@pytest.mark.parametrize("causal", [True, False])
def test_flex_bound_call_is_exact_with_gqa(causal):
    method = load_registry(plugins=False).get("flex")
    case = Case("flex", "exact", 192, 2, 4, 2, 32, "fp32", causal, "cpu")
    call = method.bound(case)
    q, k, v = make_inputs(case, 3)
    got = call(q, k, v, case)
    want = _exact(q, k, v, case)
    assert torch.allclose(got.double(), want, atol=1e-5)
    # the correctness gate passes it on fresh inputs, as the runner does
    assert check(lambda a, b, c: call(a, b, c, case), case, seed=11).passed


def _fake_flash_module(returns_lse: bool) -> types.ModuleType:
    """A stand-in for the FA3/FA4 packages' flash_attn_func, with their (B, N, H, D) interface and
    their GQA; it checks the layout it is given, so a wrong adapter fails here."""
    def flash_attn_func(q, k, v, softmax_scale=None, causal=False):
        assert q.shape[1] > q.shape[2], "expected (B, N, H, D)"
        assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal, scale=softmax_scale, enable_gqa=True)
        out = out.transpose(1, 2).contiguous()
        return (out, torch.zeros(q.shape[0], q.shape[2], q.shape[1])) if returns_lse else out

    module = types.ModuleType("fake_flash")
    module.flash_attn_func = flash_attn_func
    return module


@pytest.mark.parametrize(("name", "module_name", "returns_lse"), [
    ("flash3", "flash_attn_interface", False),
    ("flash3", "flash_attn_interface", True),
    ("flash4", "flash_attn.cute", True),
])
def test_flash3_and_flash4_adapters_give_b_h_n_d_exact_attention(monkeypatch, name, module_name, returns_lse):
    monkeypatch.setitem(sys.modules, module_name, _fake_flash_module(returns_lse))
    method = load_registry(plugins=False).get(name)
    case = Case(name, "exact", 160, 1, 4, 2, 64, "fp32", True, "cpu")
    q, k, v = make_inputs(case, 5)
    got = method.bound(case)(*method.prepared(q, k, v, case), case)
    assert got.shape == q.shape
    assert torch.allclose(got.double(), _exact(q, k, v, case), atol=1e-5)


def test_flash3_and_flash4_say_why_they_are_unavailable():
    registry = load_registry(plugins=False)
    for name in ("flash3", "flash4"):
        availability = registry.get(name).availability("cuda" if torch.cuda.is_available() else "cpu")
        if not availability.available:
            assert availability.reason and "\n" not in availability.reason


def test_profiler_chatter_is_dropped_and_other_stderr_kept(capfd):
    with _profiler_chatter_dropped():
        os.write(2, b"USDT:2026-01-01 00:00:00 1:1 Handler.cpp:52] profiler_start\n")
        os.write(2, b"a real warning\n")
    err = capfd.readouterr().err
    assert "a real warning" in err and "USDT" not in err


def test_the_runner_binds_once_per_configuration_and_times_only_the_bound_call(tmp_path):
    from tbench.core.sweep import Sweep
    from tbench.harness import provenance
    from tbench.harness.measure import MeasureSettings
    from tbench.harness.runner import Runner, RunOptions
    from tbench.harness.timing import TimingPolicy
    from tbench.methods.registry import Method, Registry, always_available
    from tbench.results.store import Store

    bound_for: list[int] = []

    def bind(case: Case):
        bound_for.append(case.seq_len)

        def call(q, k, v, case):
            return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, scale=case.softmax_scale,
                                                  enable_gqa=True)
        return call

    def unbound(q, k, v, case):
        raise AssertionError("the harness must call what bind returned")

    registry = Registry()
    registry.add(Method(name="bound", family="exact", call=unbound, description="bound SDPA",
                        availability=always_available("SDPA, bound per case"), bind=bind))
    store = Store(f"sqlite:///{tmp_path / 'bound.db'}")
    sweep = Sweep(lengths=[64, 96], methods=["bound"], heads=[2], kv_heads=[1], head_dims=[16], dtypes=["fp32"],
                  device="cpu", timing="cpu", baseline="bound")
    options = RunOptions(settings=MeasureSettings(policy=TimingPolicy.quick()), isolate=False, plugins=False,
                         peaks=False)
    outcome = Runner(store, registry, options, show_progress=False).run(
        sweep, info=provenance.collect("cpu", sweep.as_dict(), argv=["test"]))
    rows = store.measurements([outcome.run_id])
    assert list(rows["status"]) == ["ok", "ok"], list(rows["message"])
    assert sorted(bound_for) == [64, 96]
