"""The correctness gate catches subtle bugs through a real CPU sweep (`tbench run`, plugin methods):
one head zeroed, the wrong GQA mapping, a 2 % softmax-scale error in bf16, tensorized hops in the
wrong order; correct methods in the same sweep stay ok."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from conftest import run_cli

from tbench.core.case import Case
from tbench.core.folding import auto_dims
from tbench.harness.correctness import check, check_rows, fold_edge_rows
from tbench.kernels.reference import exact_attention_f64

BUGS = "test-bug-zero-head,test-bug-gqa,test-bug-scale,test-bug-hop-order"


def _statuses(db) -> dict[tuple[str, str], tuple[str, str]]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT method, dtype, status, message FROM measurements").fetchall()
    return {(m, d): (s, msg) for m, d, s, msg in rows}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_subtle_bugs_end_wrong_and_correct_methods_ok(tmp_path, plugin_env, dtype):
    db = tmp_path / "bench.db"
    result = run_cli(["run", "--device", "cpu", "--lengths", "200", "--orders", "2", "--heads", "4", "--kv-heads", "2",
                      "--head-dim", "32", "--dtype", dtype, "--no-causal", "--methods",
                      f"{BUGS},sdpa-math,tensorized-ref", "--budget", "0.2", "--min-samples", "3", "--quiet",
                      "--db", str(db)], plugin_env)
    assert result.returncode == 0, result.stderr
    found = _statuses(db)
    for bug in BUGS.split(","):
        status, message = found[(bug, dtype)]
        assert status == "wrong", (bug, status, message)
        assert "check seed" in message
    for good in ("sdpa-math", "tensorized-ref"):
        assert found[(good, dtype)][0] == "ok", found[(good, dtype)]


def test_no_check_rows_are_unchecked_and_shown(tmp_path, plugin_env):
    db = tmp_path / "bench.db"
    result = run_cli(["run", "--device", "cpu", "--lengths", "128", "--heads", "2", "--kv-heads", "1",
                      "--head-dim", "32", "--methods", "test-bug-scale", "--no-check", "--budget", "0.2",
                      "--min-samples", "3", "--quiet", "--db", str(db)], plugin_env)
    assert result.returncode == 0, result.stderr
    assert _statuses(db)[("test-bug-scale", "fp32")][0] == "unchecked"
    shown = run_cli(["show", "--db", str(db)], plugin_env)
    assert shown.returncode == 0 and "unchecked" in shown.stdout


def test_rows_cover_ends_and_fold_edges():
    case = Case("x", "tensorized", 1000, 1, 1, 1, 8, "fp32", True, "cpu", 2, auto_dims(1000, 2))
    rows = set(check_rows(case, seed=3).tolist())
    assert {0, 999} <= rows and fold_edge_rows(1000, case.dims) <= rows
    assert {31, 32, 991} <= fold_edge_rows(1000, (32, 32))  # 991: the last slice of the outer hop with padding
    assert len(rows) >= 64
    assert rows != set(check_rows(case, seed=4).tolist())  # the seed moves the random rows


def test_every_head_is_checked_on_sampled_rows(monkeypatch):
    # sampled rows (the whole output is too big): a bug in the last head still fails
    import tbench.harness.correctness as correctness

    monkeypatch.setattr(correctness, "WHOLE_OUTPUT_WORK", 0)
    case = Case("x", "exact", 300, 2, 4, 2, 16, "fp32", True, "cpu")

    def good(q, k, v):
        return exact_attention_f64(q, k, v, True).to(q.dtype)

    def bad(q, k, v):
        out = good(q, k, v)
        out[1, 3, 299] += 1.0  # one row of the last (batch, head)
        return out

    ok = check(good, case, seed=5)
    assert ok.passed and ok.details["rows"] != "all" and ok.details["seed"] == 5
    broken = check(bad, case, seed=5)
    assert not broken.passed and "batch 1, head 3" in broken.message
    declared = check(bad, case, seed=5, tolerance=lambda c: 10.0)
    assert declared.passed and declared.details["tolerance_source"] == "declared by the method"
    assert torch.isfinite(torch.tensor(broken.error))
