"""Shards of one sweep, run as separate real processes, fill one run."""

import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import run_cli

from tbench.core.sweep import Sweep
from tbench.methods.catalog import load_registry

SWEEP = ["--device", "cpu", "--lengths", "64,128,192", "--methods", "sdpa-math,tensorized-ref", "--orders", "2",
         "--heads", "2", "--kv-heads", "1", "--head-dim", "16", "--budget", "0.2", "--min-samples", "3", "--quiet"]


def test_parallel_shards_fill_one_run(tmp_path, cli_env):
    db = tmp_path / "shards.db"
    exe = Path(sys.executable).parent / "tbench"
    procs = [subprocess.Popen([str(exe), "run", *SWEEP, "--shard", f"{i}/3", "--run-key", "job-42", "--db", str(db)],
                              env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (1, 2, 3)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from runs").fetchone()[0] == 1
    assert con.execute("select status from runs").fetchone()[0] == "finished"
    keys = [k for (k,) in con.execute("select config_key from measurements")]
    sweep = Sweep(lengths=[64, 128, 192], methods=["sdpa-math", "tensorized-ref"], orders=[2], heads=[2], kv_heads=[1],
                  head_dims=[16], dtypes=["fp32"], device="cpu", timing="cpu")
    assert sorted(keys) == sorted(c.key for c in sweep.cases(load_registry(plugins=False)))


def test_one_shard_leaves_the_run_partial_and_shard_needs_a_key(tmp_path, cli_env):
    db = tmp_path / "part.db"
    result = run_cli(["run", *SWEEP, "--shard", "1/2", "--run-key", "k", "--db", str(db)], cli_env)
    assert result.returncode == 0, result.stderr
    assert sqlite3.connect(db).execute("select status from runs").fetchone()[0] == "partial"
    again = run_cli(["run", *SWEEP, "--shard", "2/2", "--run-key", "k", "--db", str(db)], cli_env)
    assert again.returncode == 0 and "Joining run 1" in again.stderr
    assert sqlite3.connect(db).execute("select status from runs").fetchone()[0] == "finished"
    different = run_cli(["run", *SWEEP[:-1], "--orders", "3", "--run-key", "k", "--db", str(db)], cli_env)
    assert different.returncode == 2 and "whose sweep differs" in different.stderr
    no_key = run_cli(["run", *SWEEP, "--shard", "1/2", "--db", str(db)], cli_env)
    assert no_key.returncode == 2 and "--run-key" in no_key.stderr
    bad = run_cli(["run", *SWEEP, "--shard", "3/2", "--run-key", "k", "--db", str(db)], cli_env)
    assert bad.returncode == 2 and "3/2" in bad.stderr
