"""Isolation, the correctness gate, interruption and resume, with misbehaving plugin methods."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import ctrl_c_reaches_child, run_cli

SMALL = ["--device", "cpu", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--budget", "0.3",
         "--min-samples", "3", "--quiet"]


def statuses(db):
    return dict(sqlite3.connect(db).execute("select method || ':' || seq_len, status from measurements").fetchall())


def test_abort_hang_oom_and_wrong_each_cost_only_themselves(tmp_path, plugin_env):
    db = tmp_path / "iso.db"
    result = run_cli(["run", "--lengths", "64,128", "--methods", "test-abort,sdpa-math,test-hang,test-oom,test-wrong",
                      "--timeout", "8", "--db", str(db), *SMALL], plugin_env)
    assert result.returncode == 0, result.stderr
    got = statuses(db)
    for n in (64, 128):
        assert got[f"test-abort:{n}"] == "error"
        assert got[f"test-hang:{n}"] == "timeout"
        assert got[f"test-oom:{n}"] == "oom"
        assert got[f"test-wrong:{n}"] == "wrong"
        assert got[f"sdpa-math:{n}"] == "ok"
    messages = dict(sqlite3.connect(db).execute("select method, message from measurements where seq_len=64"))
    assert "SIGABRT" in messages["test-abort"]
    assert "relative L2 error" in messages["test-wrong"]
    # a wrong method is never ranked: it has no timing, so no speedup
    medians = dict(sqlite3.connect(db).execute("select method, median_ms from measurements where seq_len=64"))
    assert medians["test-wrong"] is None


def test_sigkill_mid_sweep_then_resume_measures_everything_once(tmp_path, plugin_env):
    db = tmp_path / "kill.db"
    env = dict(plugin_env, TBENCH_TEST_SLOWDOWN_S="0.05")
    exe = Path(sys.executable).parent / "tbench"
    lengths = "64,96,128,160,192,224"
    args = [str(exe), "run", "--lengths", lengths, "--methods", "test-slow,sdpa-math", "--db", str(db), *SMALL,
            "--budget", "0.5"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline:
        time.sleep(0.2)
        if db.exists():
            try:
                done = sqlite3.connect(db).execute("select count(*) from measurements").fetchone()[0]
            except sqlite3.OperationalError:
                continue
            if done >= 3:
                break
    assert done >= 3, "the sweep made no progress"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = sqlite3.connect(db).execute("select count(*) from measurements").fetchone()[0]
    assert before < 12
    resumed = run_cli(["run", "--resume", "latest", "--db", str(db), "--budget", "0.3", "--min-samples", "3",
                       "--quiet"], env)
    assert resumed.returncode == 0, resumed.stderr
    keys = [r[0] for r in sqlite3.connect(db).execute("select config_key from measurements")]
    assert len(keys) == 12 and len(set(keys)) == 12
    assert sqlite3.connect(db).execute("select status from runs").fetchone()[0] == "finished"


def test_ctrl_c_stops_cleanly_with_a_partial_summary(tmp_path, plugin_env):
    db = tmp_path / "int.db"
    env = dict(plugin_env, TBENCH_TEST_SLOWDOWN_S="0.05")
    exe = Path(sys.executable).parent / "tbench"
    proc = subprocess.Popen([str(exe), "run", "--lengths", "64,128,256,512", "--methods", "test-slow",
                             "--db", str(db), *SMALL, "--budget", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches_child)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        if db.exists():
            try:
                if sqlite3.connect(db).execute("select count(*) from measurements").fetchone()[0] >= 1:
                    break
            except sqlite3.OperationalError:
                pass
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stdout and "tbench run --resume" in stderr
    assert "Traceback" not in stderr
    assert sqlite3.connect(db).execute("select status from runs").fetchone()[0] == "interrupted"
