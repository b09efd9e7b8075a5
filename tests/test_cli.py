"""The real `tbench` console script in a subprocess, on a real SQLite file."""

import sqlite3

import pytest
from conftest import run_cli

SMALL = ["--device", "cpu", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--budget", "0.3",
         "--min-samples", "3", "--quiet"]


def test_run_then_show(tmp_path, cli_env):
    db = tmp_path / "t.db"
    result = run_cli(["run", "--lengths", "128,256", "--methods", "full,sdpa-math,tensorized-ref",
                      "--db", str(db), *SMALL], cli_env)
    assert result.returncode == 0, result.stderr
    assert "Run 1 finished" in result.stderr
    rows = sqlite3.connect(db).execute(
        "select method, seq_len, order_m, dims, status, median_ms, check_error, fidelity_rel_l2 from measurements"
    ).fetchall()
    # 2 lengths x (full + sdpa-math + tensorized-ref at m=2 and m=3)
    assert len(rows) == 8
    assert {r[4] for r in rows} == {"ok"}
    assert all(r[5] > 0 for r in rows)
    ref = [r for r in rows if r[0] == "tensorized-ref"]
    assert sorted((r[1], r[2], r[3]) for r in ref) == [(128, 2, "8x16"), (128, 3, "4x4x8"), (256, 2, "16x16"),
                                                         (256, 3, "4x8x8")]
    # exact methods agree with exact attention; tensorized attention is a different operator
    assert all(r[7] < 1e-4 for r in rows if r[0] != "tensorized-ref")
    assert all(r[7] > 0.1 for r in ref)
    run = sqlite3.connect(db).execute("select status, command, torch_version, environment from runs").fetchone()
    assert run[0] == "finished" and run[1].startswith("tbench run") and run[2]
    assert "copy_tbps" in run[3]

    shown = run_cli(["show", "--db", str(db)], cli_env)
    assert shown.returncode == 0, shown.stderr
    # speedups face the fastest exact method of each length by default
    assert "tensorized-ref" in shown.stdout and "xbest" in shown.stdout
    listed = run_cli(["runs", "--db", str(db)], cli_env)
    assert "8 / 8" in listed.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--lengths", "128k..4k"], "lengths '128k..4k': a range must go upwards"),
    (["run", "--lengths", "4q"], "length '4q' is not a number"),
    (["run", "--lengths", "0"], "length '0' must be at least 1"),
    (["run", "--methods", "nope"], "method 'nope' unknown; known: tensorized, tensorized-triton, tensorized-recompute"),
    (["run", "--orders", "0"], "orders '0': '0' is not an integer >= 1"),
    (["run", "--heads", "6", "--kv-heads", "4"], "heads 6 is not a multiple of kv-heads 4"),
    (["run", "--dtype", "fp8"], "dtype 'fp8' unknown; allowed: bf16, fp16, fp32"),
    (["run", "--db", "sqlite:////no/such/dir/x.db"], "folder '/no/such/dir' does not exist"),
    (["run", "--device", "tpu"], "device 'tpu' unknown"),
    (["run", "--cool-to", "300"], "cool-to 300.0 must be a temperature in deg C between 0 and 100"),
    (["run", "--min-time", "-1"], "min-time -1.0 must be at least 0 seconds"),
    (["show", "99"], "run 99 does not exist"),
    (["show", "abc"], "run 'abc' is not a run id"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, cli_env):
    if "--db" not in args:
        args = [*args, "--db", str(tmp_path / "e.db")]
    if args[0] == "show":
        run_cli(["run", "--lengths", "64", "--methods", "sdpa-math", *SMALL, "--db", str(tmp_path / "e.db")], cli_env)
    result = run_cli(args, cli_env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_list_shows_availability_and_plugin_problems(cli_env, plugin_env):
    result = run_cli(["list", "--device", "cpu"], cli_env)
    assert result.returncode == 0
    assert "tensorized-ref" in result.stdout and "flash2" in result.stdout
    assert "needs a CUDA GPU" in result.stdout
    if "xformers is not installed" in result.stdout.replace("\n", " "):
        # a pip extra in a reason is shown as written, not swallowed as console markup
        assert "tbench[xformers]" in result.stdout
    with_plugin = run_cli(["list", "--device", "cpu"], plugin_env)
    assert with_plugin.returncode == 0, with_plugin.stderr
    assert "test-slow" in with_plugin.stdout
    # the broken entry point is reported, not fatal
    assert "plugin not loaded" in with_plugin.stderr and "tbench_testplugin_missing" in with_plugin.stderr


def test_plugin_method_and_injected_oom(tmp_path, plugin_env):
    db = tmp_path / "p.db"
    result = run_cli(["run", "--lengths", "128", "--methods", "test-slow,test-oom,sdpa-math", "--db", str(db),
                      *SMALL], plugin_env)
    assert result.returncode == 0, result.stderr
    rows = dict(sqlite3.connect(db).execute("select method, status from measurements").fetchall())
    assert rows == {"test-slow": "ok", "test-oom": "oom", "sdpa-math": "ok"}


def test_configurations_that_cannot_fit_are_skipped(tmp_path, cli_env):
    db = tmp_path / "s.db"
    result = run_cli(["run", "--lengths", "1m", "--methods", "full", "--heads", "64", "--kv-heads", "64",
                      "--device", "cpu", "--quiet", "--db", str(db)], cli_env)
    assert result.returncode == 0, result.stderr
    status, message = sqlite3.connect(db).execute("select status, message from measurements").fetchone()
    assert status == "skipped" and "needs about" in message and "GiB" in message
