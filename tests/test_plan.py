"""Run planning: presets fill what the request leaves out, options given win, and the methodology
scripts plan through the same code."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
from conftest import run_cli

from tbench.core.case import Family
from tbench.core.errors import UsageError
from tbench.core.sweep import BEST_EXACT, Sweep
from tbench.harness.plan import HEADLINE_METHODS, PRESETS, Preset, RunRequest, parse_preset, plan_run, run_uuid
from tbench.harness.timing import TimingPolicy
from tbench.methods.catalog import load_registry
from tbench.methods.registry import Registry, always_available


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    return load_registry(plugins=False)


def test_headline_is_the_default_on_a_gpu(registry):
    plan = plan_run(RunRequest(methods="sdpa-math,tensorized-ref"), registry, gpus=1)
    sweep = plan.sweep
    assert plan.preset is Preset.HEADLINE
    assert sweep.lengths == [2**e for e in range(12, 18)]  # 4k..128k
    assert (sweep.heads, sweep.kv_heads, sweep.head_dims, sweep.dtypes) == ([32], [8], [128], ["bf16"])
    assert (sweep.orders, sweep.batches, sweep.causal) == ([2, 3], [1], [True])
    assert (sweep.device, sweep.timing) == ("cuda", "events")
    assert (plan.policy.min_time_s, plan.policy.budget_s, plan.policy.min_samples) == (1.0, 10.0, 10)


def test_cpu_is_the_default_without_a_gpu_and_every_available_method_runs(registry):
    plan = plan_run(RunRequest(), registry, gpus=0)
    assert plan.preset is Preset.CPU
    sweep = plan.sweep
    assert sweep.lengths == [512, 1024, 2048]
    assert (sweep.heads, sweep.kv_heads, sweep.head_dims, sweep.dtypes) == ([4], [2], [64], ["fp32"])
    assert (sweep.device, sweep.timing) == ("cpu", "cpu")
    available = [m.name for m in registry if m.availability("cpu").available]
    assert sweep.methods == available and "sdpa-math" in available
    assert (plan.policy.min_time_s, plan.policy.budget_s) == (0.1, 2.0)
    # --device cpu on a GPU machine plans the CPU preset, as does --preset cpu alone
    assert plan_run(RunRequest(device="cpu"), registry, gpus=1).preset is Preset.CPU
    assert plan_run(RunRequest(preset=Preset.CPU), registry, gpus=1).sweep.device == "cpu"


def test_quick_is_short_and_explicit_options_win(registry):
    quick = plan_run(RunRequest(preset=Preset.QUICK, methods="sdpa-math"), registry, gpus=1)
    assert quick.sweep.lengths == [4096, 8192, 16384]
    headline = PRESETS[Preset.HEADLINE]
    assert quick.policy.min_time_s < headline.min_time_s and quick.policy.min_samples < headline.min_samples
    assert quick.policy.held_back_min_time_s < headline.held_back_min_time_s
    asked = plan_run(RunRequest(preset=Preset.CPU, heads="8", kv_heads="8", lengths="64", causal=False,
                                min_time=0.5, budget=3.0, orders="2", timing="cpu"), registry, gpus=0)
    assert (asked.sweep.heads, asked.sweep.kv_heads, asked.sweep.lengths) == ([8], [8], [64])
    assert asked.sweep.head_dims == [64] and asked.sweep.causal == [False] and asked.sweep.orders == [2]
    assert (asked.policy.min_time_s, asked.policy.budget_s) == (0.5, 3.0)


def test_baseline_is_the_fastest_exact_method_unless_named(registry):
    plan = plan_run(RunRequest(methods="full,sdpa-math,tensorized-ref"), registry, gpus=0)
    assert plan.sweep.baseline == BEST_EXACT
    # no exact method in the sweep: the tensorized one is its own baseline
    only_tensorized = plan_run(RunRequest(methods="tensorized-ref"), registry, gpus=0)
    assert only_tensorized.sweep.baseline == "tensorized-ref"
    assert plan_run(RunRequest(methods="full,sdpa-math", baseline="full"), registry, gpus=0).sweep.baseline == "full"
    with pytest.raises(UsageError, match="baseline 'fastest' unknown; allowed: best"):
        plan_run(RunRequest(methods="full,sdpa-math", baseline="fastest"), registry, gpus=0)


def test_a_method_cannot_take_the_name_of_the_fastest_exact_baseline(registry):
    taken = dataclasses.replace(registry.get("sdpa-math"), name=BEST_EXACT)
    with pytest.raises(ValueError, match="'best' is reserved"):
        Registry().add(taken)


def test_resumed_sweep_keeps_its_axes(registry):
    first = plan_run(RunRequest(lengths="64", methods="sdpa-math"), registry, gpus=0).sweep
    resumed = plan_run(RunRequest(lengths="4k", heads="16"), registry, resumed=Sweep.from_dict(first.as_dict()),
                       gpus=0)
    assert resumed.sweep == first


@pytest.mark.parametrize(("request_", "needle"), [
    (RunRequest(device="cuda"), "no CUDA GPU is visible"),
    (RunRequest(timing="graph"), "timing 'graph' not possible on cpu; allowed: cpu"),
    (RunRequest(target_rse=2.0), "target-rse 2.0 must be between 0 and 1"),
    (RunRequest(min_samples=0), "min-samples 0 must be at least 1"),
    (RunRequest(shard="1/2"), "needs --run-key"),
    (RunRequest(devices="all"), "needs GPUs, but the device is cpu"),
])
def test_bad_requests(registry, request_, needle):
    with pytest.raises(UsageError, match=needle):
        plan_run(request_, registry, gpus=0)


def test_presets_by_name_and_run_keys():
    assert parse_preset("quick") is Preset.QUICK
    with pytest.raises(UsageError, match="preset 'fast' unknown; allowed: headline, quick, cpu"):
        parse_preset("fast")
    assert run_uuid("job-7") == run_uuid("job-7") != run_uuid("job-8")
    assert run_uuid("12345678-1234-5678-1234-567812345678") == "12345678-1234-5678-1234-567812345678"


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--preset", "fast"], "preset 'fast' unknown; allowed: headline, quick, cpu"),
    (["run", "--quick", "--preset", "cpu"], "--quick is --preset quick; it cannot go with --preset cpu"),
])
def test_cli_preset_errors(args, needle, tmp_path, cli_env):
    result = run_cli([*args, "--db", str(tmp_path / "p.db")], cli_env)
    assert result.returncode == 2 and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_cpu_preset_with_overrides(tmp_path, cli_env):
    db = tmp_path / "p.db"
    result = run_cli(["run", "--preset", "cpu", "--lengths", "64", "--heads", "2", "--kv-heads", "1",
                      "--head-dim", "32", "--methods", "sdpa-math,full", "--quiet", "--budget", "0.2",
                      "--db", str(db)], cli_env)
    assert result.returncode == 0, result.stderr
    sweep = sqlite3.connect(db).execute("select sweep from runs").fetchone()[0]
    assert '"heads": [2]' in sweep and '"dtypes": ["fp32"]' in sweep and '"baseline": "best"' in sweep


def _everything_available() -> Registry:
    """The built-in methods, each declared available (as on a GPU machine with every package)."""
    registry = Registry()
    for item in load_registry(plugins=False):
        registry.add(dataclasses.replace(item, availability=always_available("test")))
    return registry


def test_headline_measures_its_methods_and_names_the_ones_it_leaves_out():
    registry = _everything_available()
    plan = plan_run(RunRequest(), registry, gpus=1)
    assert plan.preset is Preset.HEADLINE
    assert plan.sweep.methods == [name for name in registry.names() if name in HEADLINE_METHODS]
    # one method of each family at least, the strongest exact kernels and the PyTorch compositions
    families = {registry.get(name).family for name in plan.sweep.methods}
    assert families == {f.value for f in Family}
    assert {"flash3", "sdpa-cudnn", "tensorized", "tensorized-sdpa"} <= set(plan.sweep.methods)
    # nothing available is dropped silently: every other method is named
    assert set(plan.left_out) == set(registry.names()) - set(plan.sweep.methods)
    assert {"full", "sdpa-math", "flex"} <= set(plan.left_out)
    assert plan.policy.clock_settle_max_s < TimingPolicy.clock_settle_max_s
    # asked-for methods are measured as asked, and nothing is reported left out
    asked = plan_run(RunRequest(methods="full,tensorized"), registry, gpus=1)
    assert asked.sweep.methods == ["full", "tensorized"] and asked.left_out == ()
