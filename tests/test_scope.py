"""Layer and model scope: a Llama-shaped layer or model around each method, through the real CLI
into SQLite; the transformers attention interface; the layer's correctness gate."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import measurement_rows as _rows
from conftest import run_cli
from errors import rel_err

from tbench.core.case import Case
from tbench.core.errors import UsageError
from tbench.core.sweep import Sweep
from tbench.methods.catalog import load_registry

pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("hf_kernels_unshadowed")

QUICK = ["--min-samples", "3", "--budget", "0.3", "--min-time", "0.02", "--quiet"]



def test_the_issue_command_stores_ok_layer_rows_with_time_and_memory(tmp_path, cli_env):
    # exactly the command of the issue's "done when", in a fresh folder: the store is ./tbench.db
    args = ["run", "--device", "cpu", "--scope", "layer", "--preset", "tiny", "--methods",
            "tensorized-ref,sdpa-math", "--lengths", "256"]
    result = subprocess.run([str(Path(sys.executable).parent / "tbench"), *args], env=cli_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = _rows(tmp_path / "tbench.db")
    assert {(r["method"], r["order_m"]) for r in rows} == {("sdpa-math", None), ("tensorized-ref", 2),
                                                           ("tensorized-ref", 3)}
    for r in rows:
        assert r["status"] == "ok", r["message"]
        assert (r["scope"], r["model"], r["layers"], r["protocol"]) == ("layer", "tiny", 1, "tbench")
        assert r["median_ms"] > 0 and r["peak_bytes"] > 0 and r["n_samples"] >= 3
        assert r["config_key"].endswith("|layer|tiny|L1")
    # a tensorized layer is checked against the layer with the tensorized spec, and differs from exact
    tensorized = [r for r in rows if r["method"] == "tensorized-ref"]
    assert all(r["check_error"] < 1e-5 < 0.05 < r["fidelity_rel_l2"] for r in tensorized)
    shown = run_cli(["show", "--db", str(tmp_path / "tbench.db")], cli_env)
    assert shown.returncode == 0 and "scope layer" in shown.stdout


def test_model_scope_times_k_layers_with_the_papers_protocol_and_scales_to_the_depth(tmp_path, cli_env):
    db = tmp_path / "m.db"
    result = run_cli(["run", "--device", "cpu", "--scope", "model", "--layers", "1", "--preset", "tiny",
                      "--methods", "sdpa-math", "--orders", "2", "--lengths", "128", "--protocol", "paper", *QUICK,
                      "--db", str(db)], cli_env)
    assert result.returncode == 0, result.stderr
    (row,) = _rows(db)
    assert row["status"] == "ok", row["message"]
    assert (row["scope"], row["layers"], row["protocol"], row["n_samples"]) == ("model", 1, "paper", 1)
    state = json.loads(row["device_state"])
    assert state["depth"]["depth"] == 2 and state["depth"]["layers_timed"] == 1
    assert state["depth"]["full_depth_ms_estimate"] == pytest.approx(2 * row["median_ms"])
    assert "50 forward passes" in state["protocol"]


def test_model_scope_with_two_layers_checks_the_whole_stack(tmp_path, cli_env):
    db = tmp_path / "m2.db"
    result = run_cli(["run", "--device", "cpu", "--scope", "model", "--layers", "2", "--preset", "tiny",
                      "--methods", "sdpa-math,tensorized-ref", "--orders", "2", "--lengths", "128", *QUICK,
                      "--db", str(db)], cli_env)
    assert result.returncode == 0, result.stderr
    rows = _rows(db)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(r["layers"] == 2 and r["peak_bytes"] > 0 for r in rows)


@pytest.mark.parametrize(("args", "message"), [
    (["--scope", "block", "--preset", "tiny"], "scope 'block' unknown; allowed: op, layer, model"),
    (["--scope", "layer", "--preset", "cpu"], "--scope layer needs a model shape preset"),
    (["--scope", "layer", "--preset", "tiny", "--layers", "2"], "--layers 2 is for --scope model"),
    (["--scope", "layer", "--preset", "tiny", "--heads", "8"], "conflicts with model tiny"),
    (["--preset", "tiny", "--protocol", "fast"], "protocol 'fast' unknown; allowed: tbench, paper"),
])
def test_bad_scope_input_is_one_line_exit_2(tmp_path, cli_env, args, message):
    result = run_cli(["run", "--device", "cpu", "--methods", "sdpa-math", "--lengths", "128", *args,
                      "--db", str(tmp_path / "x.db")], cli_env)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.db").exists()


def test_op_keys_are_unchanged_and_scopes_append_theirs():
    base = dict(method="sdpa-math", family="exact", seq_len=1000, batch=1, heads=4, kv_heads=2, head_dim=16,
                dtype="fp32", causal=True, device="cpu")
    assert Case(**base).key == "sdpa-math|N1000|m-|-|B1|H4|KV2|D16|fp32|causal|events"
    layer = Case(**base, scope="layer", model="tiny", layers=1)
    assert layer.key == Case(**base).key + "|layer|tiny|L1"
    assert Case(**base, protocol="paper").key == Case(**base).key + "|paper"
    assert layer.attention() == Case(**base)
    old = Sweep(lengths=[128], methods=["sdpa-math"]).as_dict()
    for name in ("scope", "model", "layers", "protocol"):
        del old[name]
    assert Sweep.from_dict(old).cases(load_registry(plugins=False))[0].key == Case(
        **{**base, "seq_len": 128, "heads": 32, "kv_heads": 8, "head_dim": 128, "dtype": "bf16",
           "device": "cuda"}).key
    with pytest.raises(UsageError, match="needs a model shape"):
        Sweep(lengths=[128], methods=["sdpa-math"], scope="layer").validate(load_registry(plugins=False))


# --- the transformers attention interface ---------------------------------------------------------


def _tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, initializer_range=0.125,
                         attn_implementation=attn)
    return LlamaModel(config).eval()


def test_a_transformers_llama_runs_a_tbench_method_by_name():
    from tbench.model import attention_name, register_attention

    names = register_attention()
    assert {"tbench-sdpa-math", "tbench-tensorized-ref", "tbench-tensorized-ref-m3"} <= set(names)
    assert attention_name("tensorized", 2) == "tbench-tensorized-m2"
    model = _tiny_llama("sdpa")
    ids = torch.randint(128, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
        model.config._attn_implementation = "tbench-sdpa-math"
        got = model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # a different operator is not passed off as the same model: tensorized attention differs
        model.config._attn_implementation = "tbench-tensorized-ref-m2"
        other = model(input_ids=ids).last_hidden_state
    assert rel_err(other, expected) > 1e-2


def test_the_comparison_catches_an_attention_output_in_the_wrong_layout():
    from transformers import AttentionInterface

    from tbench.model.attention import TbenchAttention

    exact = TbenchAttention(load_registry(plugins=False).get("sdpa-math"))

    def wrong_layout(module, query, key, value, attention_mask, **kwargs):
        out, _ = exact(module, query, key, value, attention_mask, **kwargs)
        return out.transpose(1, 2).contiguous(), None  # (B, H, N, D) where (B, N, H, D) is expected

    AttentionInterface.register("test-wrong-layout", wrong_layout)
    model = _tiny_llama("sdpa")
    ids = torch.randint(128, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
        model.config._attn_implementation = "test-wrong-layout"
        got = model(input_ids=ids).last_hidden_state
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --- the layer's correctness gate -----------------------------------------------------------------


def _layer_case(method: str, family: str, **over) -> Case:
    base = dict(method=method, family=family, seq_len=128, batch=2, heads=4, kv_heads=2, head_dim=16, dtype="fp32",
                causal=True, device="cpu", timing="cpu", scope="layer", model="tiny", layers=1)
    return Case(**{**base, **over})


@pytest.mark.parametrize("scope", ["layer", "model"])
def test_the_layer_gate_passes_the_method_and_fails_a_wrong_operator(scope):
    from tbench.harness.scoped import build_for, check_scoped

    registry = load_registry(plugins=False)
    case = _layer_case("tensorized-ref", "tensorized", order=2, dims=(16, 8), scope=scope,
                       layers=1 if scope == "layer" else 2)
    built, _ = build_for(case, 0)
    method = registry.get("tensorized-ref")
    good = check_scoped(case, method, built, seed=3)
    assert good.passed and good.error < 1e-5 and good.fidelity_rel_l2 > 1e-2
    # exact attention under a tensorized name: the layer's output is not the tensorized layer's
    impostor = dataclasses.replace(method, call=registry.get("sdpa-math").call, bind=None, prepare=None)
    bad = check_scoped(case, impostor, built, seed=3)
    assert not bad.passed and "vs its float64 definition exceeds" in bad.message
    exact_case = _layer_case("sdpa-math", "exact", scope=scope, layers=case.layers)
    assert check_scoped(exact_case, registry.get("sdpa-math"), built, seed=3).passed


def test_a_model_deeper_than_the_limit_is_checked_through_its_first_layer():
    """The whole stack in float64 for two layers; beyond that the first layer, which still catches a
    wrong attention."""
    from tbench.harness.scoped import build_for, check_scoped

    registry = load_registry(plugins=False)
    method = registry.get("tensorized-ref")
    impostor = dataclasses.replace(method, call=registry.get("sdpa-math").call, bind=None, prepare=None)
    for layers, compared in ((2, "last hidden state"), (3, "first layer's output minus its input")):
        case = _layer_case("tensorized-ref", "tensorized", order=2, dims=(16, 8), scope="model", layers=layers)
        built, _ = build_for(case, 0)
        good = check_scoped(case, method, built, seed=3)
        assert good.passed and good.details["compared"].startswith(compared), good.details
        bad = check_scoped(case, impostor, built, seed=3)
        assert not bad.passed and "vs its float64 definition exceeds" in bad.message


def test_the_layer_gate_catches_a_method_wrong_only_on_the_last_sequence_of_the_batch():
    """The gate compares the batch's first and last sequences: a wrong batch stride shows on the last."""
    import torch

    from tbench.harness.scoped import build_for, check_scoped, checked_sequences

    assert checked_sequences(1) == (0,) and checked_sequences(3) == (0, 2)
    registry = load_registry(plugins=False)
    case = _layer_case("sdpa-math", "exact", batch=3)
    built, _ = build_for(case, 0)
    method = registry.get("sdpa-math")
    assert check_scoped(case, method, built, seed=3).passed

    def last_sequence_wrong(q, k, v, case):
        out = method.call(q, k, v, case)
        return torch.cat([out[:-1], out[-1:] * 1.05])

    bad = check_scoped(case, dataclasses.replace(method, call=last_sequence_wrong, bind=None), built, seed=3)
    assert not bad.passed and "(batch 2)" in bad.message, bad.message
    assert bad.details["sequences"] == [0, 2]


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_the_layer_gate_checks_a_linear_method_whose_gates_span_the_batch(mode):
    """simple-gla's gates are drawn for the whole batch: its definition must see the whole batch
    (evaluated one sequence at a time, the gates' batch did not match and the check raised)."""
    from tbench.harness.scoped import build_for, check_scoped

    registry = load_registry(plugins=False)
    gla = registry.get("simple-gla")

    def recurrence(q, k, v, case):  # simple-gla's float64 definition in the inputs' dtype, on any device
        return gla.reference(q, k, v, case).to(q.dtype)

    on_cpu = dataclasses.replace(gla, call=recurrence, bind=None, prepare=None, devices=frozenset({"cpu"}))
    case = _layer_case("simple-gla", "linear", batch=3, mode=mode)
    built, _ = build_for(case, 0)
    good = check_scoped(case, on_cpu, built, seed=3)
    assert good.passed, good.message
    assert good.error < 1e-4

    def scaled(q, k, v, case):
        return recurrence(q, k, v, case) * 1.05

    bad = check_scoped(case, dataclasses.replace(on_cpu, call=scaled), built, seed=3)
    assert not bad.passed and "exceeds" in bad.message, bad.message
