"""A store nothing breaks: hostile text, signals, bad input, read-only and foreign files, busy machines."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.results.bundle import export_bundle, write_bundle
from tbench.results.store import Store

SMALL = ["--device", "cpu", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--budget", "0.3",
         "--min-samples", "3", "--quiet"]
MARKUP = "[/oops]"


def _one_line_error(result, needle: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- text from the store is printed as written ---------------------------------------------------------


def _markup_bundle(tmp_path: Path) -> Path:
    """A bundle whose command, method, message and GPU name are console markup."""
    store = Store(str(tmp_path / "src.db"))
    run_id = store.start_run(RunInfo(command=MARKUP, device="cpu", gpu_name="[bold]gpu[/bold]",
                                     sweep={"baseline": MARKUP}))
    for method, status in ((MARKUP, "ok"), ("[red]x", "error")):
        case = Case(method=method, family="exact", seq_len=128, batch=1, heads=2, kv_heads=1, head_dim=32,
                    dtype="fp32", causal=True, device="cpu", timing="cpu")
        timing = Timing(1.0, 0.98, 1.02, 1.0, 0.01, 0.97, [1.0 + 0.001 * i for i in range(-5, 6)], 0.002) \
            if status == "ok" else None
        store.record(run_id, MeasurementRecord(case, status, message="[/broken] [link=x]" if status != "ok" else "",
                                               timing=timing, flops=1e9))
    store.finish_run(run_id, "finished")
    path = tmp_path / "markup.json"
    write_bundle(export_bundle(store, [run_id]), path)
    store.close()
    return path


def test_markup_from_an_imported_bundle_is_printed_literally(tmp_path, cli_env):
    db = str(tmp_path / "m.db")
    imported = run_cli(["import", str(_markup_bundle(tmp_path)), "--db", db], cli_env)
    assert imported.returncode == 0, imported.stderr
    listed = run_cli(["runs", "--db", db], cli_env)
    assert listed.returncode == 0, listed.stderr
    assert MARKUP in listed.stdout and "[bold]gpu[/bold]" in listed.stdout
    shown = run_cli(["show", "--db", db], cli_env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count(MARKUP) >= 2  # the command line and the method
    assert "[red]x" in shown.stdout and "[/broken] [link=x]" in shown.stdout
    assert f"x{MARKUP}" in shown.stdout  # the speedup column is named after the baseline
    gated = run_cli(["gate", "--baseline", "1", "--candidate", "1", "--db", db], cli_env)
    assert gated.returncode == 0, gated.stderr
    assert MARKUP in gated.stdout and "Traceback" not in gated.stderr


def test_pytest_benchmark_ids_keep_their_brackets(tmp_path, cli_env):
    session = {
        "machine_info": {"node": "ci", "python_version": "3.11", "system": "Linux"},
        "benchmarks": [{"name": "test_attn[causal-4096]", "fullname": "t.py::test_attn[causal-4096]",
                        "stats": {"min": 0.001, "max": 0.003, "mean": 0.002, "stddev": 0.0005, "rounds": 3,
                                  "median": 0.002, "data": [0.001, 0.002, 0.003]}}],
        "datetime": "2024-05-01T10:00:00", "version": "4.0.0",
    }
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(session))
    db = str(tmp_path / "p.db")
    assert run_cli(["import", str(path), "--db", db], cli_env).returncode == 0
    shown = run_cli(["show", "--db", db], cli_env)
    assert shown.returncode == 0, shown.stderr
    assert "test_attn[causal-4096]" in shown.stdout


def test_markup_in_bad_input_is_printed_literally(tmp_path, cli_env):
    _one_line_error(run_cli(["run", "--lengths", MARKUP, "--db", str(tmp_path / "e.db")], cli_env),
                    f"length '{MARKUP}' is not a number")


# --- bad input that used to pass --------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--lengths", ""], "lengths '' is empty"),
    (["run", "--methods", ""], "methods '' is empty"),
    (["run", "--methods", " , "], "methods ' , ' is empty"),
    (["run", "--budget", "-1"], "budget -1.0 must be positive"),
    (["run", "--budget", "0"], "budget 0.0 must be positive"),
    (["run", "--lengths", "128", "--orders", "99", "--methods", "tensorized-ref"],
     "orders: m=99 is too high; allowed: 1..7"),
    (["run", "--lengths", "128,4096", "--orders", "2,8", "--methods", "tensorized-ref"],
     "orders: m=8 is too high; allowed: 1..7"),
    (["run", "--methods", "tensorized,sdpa-math"], "unavailable on cpu: tensorized: needs a CUDA GPU"),
    (["run", "--methods", "sdpa-math", "--baseline", "flash2"], "unavailable on cpu: flash2:"),
])
def test_bad_run_input_is_one_line_and_exit_2(args, needle, tmp_path, cli_env):
    env = {k: v for k, v in cli_env.items() if k != "TRITON_INTERPRET"}
    _one_line_error(run_cli([*args, "--device", "cpu", "--db", str(tmp_path / "e.db")], env), needle)


def test_orders_up_to_the_limit_are_accepted(tmp_path, cli_env):
    result = run_cli(["run", "--lengths", "8", "--orders", "3", "--methods", "tensorized-ref", *SMALL,
                      "--no-check", "--db", str(tmp_path / "o.db")], cli_env)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "o.db") as con:
        assert con.execute("select dims from measurements").fetchall() == [("2x2x2",)]


def test_show_unknown_baseline_names_the_methods(tmp_path, cli_env):
    db = str(tmp_path / "s.db")
    made = run_cli(["run", "--lengths", "64", "--methods", "sdpa-math,full", *SMALL, "--db", db], cli_env)
    assert made.returncode == 0, made.stderr
    _one_line_error(run_cli(["show", "--baseline", "nosuch", "--db", db], cli_env),
                    "baseline 'nosuch' is not a method of run 1; allowed: best (the fastest exact method on "
                    "each shape) or one of its methods: full, sdpa-math")
    shown = run_cli(["show", "--baseline", "full", "--db", db], cli_env)
    assert shown.returncode == 0 and "1.00x" in shown.stdout


def test_version(cli_env):
    from tbench import __version__

    result = run_cli(["--version"], cli_env)
    assert result.returncode == 0 and result.stdout.strip() == f"tbench {__version__}"


# --- SIGTERM and SIGHUP end a run like Ctrl-C -----------------------------------------------------------


def _committed_rows(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            return con.execute("select count(*) from measurements").fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_termination_signal_interrupts_the_run_cleanly(signum, tmp_path, cli_env):
    db = tmp_path / "sig.db"
    exe = Path(sys.executable).parent / "tbench"
    # two shapes, each sampled for 2 s at least: the signal lands while the second is measured
    args = ["run", "--lengths", "128,256", "--methods", "full,sdpa-math", "--device", "cpu", "--heads", "2",
            "--kv-heads", "1", "--head-dim", "32", "--min-time", "2", "--budget", "3", "--quiet", "--db", str(db)]
    proc = subprocess.Popen([str(exe), *args], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while _committed_rows(db) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no row was committed"
        time.sleep(0.1)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "tbench run --resume 1" in stderr
    assert "run 1 (interrupted)" in stdout  # the partial table
    with sqlite3.connect(db) as con:
        assert con.execute("select status from runs").fetchall() == [("interrupted",)]
        kept = con.execute("select count(*) from measurements").fetchone()[0]
    assert 1 <= kept < 4
    resumed = run_cli(["run", "--resume", "1", "--quiet", "--db", str(db)], cli_env)
    assert resumed.returncode == 0, resumed.stderr
    with sqlite3.connect(db) as con:
        assert con.execute("select status from runs").fetchall() == [("finished",)]
        assert con.execute("select count(*) from measurements where status = 'ok'").fetchone()[0] == 4


# --- read-only commands never change the file; run refuses foreign databases --------------------------


def _snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


def _rollback_journal_store(tmp_path: Path) -> Path:
    """A tbench store in SQLite's default rollback-journal mode, as a copy from elsewhere may be."""
    path = tmp_path / "ro" / "store.db"
    path.parent.mkdir()
    Store(str(tmp_path / "src.db")).close()
    src = sqlite3.connect(tmp_path / "src.db")
    dst = sqlite3.connect(path)
    src.backup(dst)
    src.close()
    dst.execute("PRAGMA journal_mode=DELETE")
    dst.close()
    return path


def test_readonly_store_cannot_write(tmp_path):
    path = _rollback_journal_store(tmp_path)
    before = _snapshot(path)
    store = Store(str(path), readonly=True)
    assert store.runs() == []
    with pytest.raises(Exception, match=r"readonly|read-only|query_only"):
        store.start_run(RunInfo(command="x", device="cpu"))
    with pytest.raises(Exception, match=r"readonly|read-only|query_only"), store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE intruder (x)")
    store.close()
    assert _snapshot(path) == before
    # the writable store on the same file does write (the check above can fail)
    writable = Store(str(path))
    writable.start_run(RunInfo(command="x", device="cpu"))
    writable.close()
    assert _snapshot(path)[0] != before[0]


def test_read_commands_leave_the_file_byte_identical(tmp_path, cli_env):
    db = tmp_path / "made.db"
    made = run_cli(["run", "--lengths", "64", "--methods", "sdpa-math,full", *SMALL, "--db", str(db)], cli_env)
    assert made.returncode == 0, made.stderr
    path = tmp_path / "ro" / "store.db"
    path.parent.mkdir()
    with sqlite3.connect(db) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    with sqlite3.connect(path) as con:
        con.execute("PRAGMA journal_mode=DELETE")
    before = _snapshot(path)
    time.sleep(0.05)  # so that a write would show in the mtime
    for args in (["runs"], ["show"], ["show", "1", "--baseline", "full"], ["export", "1", "--out",
                 str(tmp_path / "b.json")], ["gate", "--baseline", "1", "--candidate", "1"]):
        result = run_cli([*args, "--db", str(path)], cli_env)
        assert result.returncode == 0, (args, result.stderr)
    assert _snapshot(path) == before  # same bytes, same mtime, no -wal or -shm beside it


@pytest.mark.parametrize("content", ["empty", "foreign"])
def test_read_commands_do_not_touch_empty_or_foreign_files(content, tmp_path, cli_env):
    path = tmp_path / "ro" / "other.db"
    path.parent.mkdir()
    path.touch()
    if content == "foreign":
        with sqlite3.connect(path) as con:
            con.execute("CREATE TABLE people (name TEXT)")
            con.execute("INSERT INTO people VALUES ('ada')")
    before = _snapshot(path)
    for args in (["runs"], ["show"]):
        _one_line_error(run_cli([*args, "--db", str(path)], cli_env), "is not a tbench database")
    assert _snapshot(path) == before


def test_run_refuses_a_foreign_sqlite_file(tmp_path, cli_env):
    path = tmp_path / "theirs.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE people (name TEXT)")
    before = _snapshot(path)
    for args in (["run", "--lengths", "64", "--methods", "full", *SMALL], ["db", "upgrade"]):
        _one_line_error(run_cli([*args, "--db", str(path)], cli_env),
                        "is not a tbench database (it holds other tables: people)")
    assert _snapshot(path) == before
    with sqlite3.connect(path) as con:
        assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["people"]


def test_read_only_media_are_opened_immutable(tmp_path, monkeypatch):
    """Without write access to the file or its folder SQLite cannot make a WAL reader's shared
    memory file; such a store is opened immutable (root ignores permissions, so access is faked)."""
    Store(str(tmp_path / "s.db")).close()
    import tbench.results.store as store_module

    real_access = os.access
    monkeypatch.setattr(store_module.os, "access", lambda path, mode: mode != os.W_OK and real_access(path, mode))
    store = Store(str(tmp_path / "s.db"), readonly=True)
    assert store.engine.url.query.get("immutable") == "1" and store.engine.url.query.get("mode") == "ro"
    assert store.runs() == []
    store.close()
    # the dashboard opens such a store the same way, and reads it
    from tbench.dashboard import data

    url = f"sqlite:///{tmp_path / 's.db'}"
    assert "immutable=1" in str(data.readonly_url(url))
    assert data.probe(url, data.open_readonly(url)).kind == "empty"
    monkeypatch.undo()
    assert "immutable" not in str(data.readonly_url(url))  # a writable store is read with locking, as usual


# --- dashboard address ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("port", "needle"), [("99999", "port 99999 is out of range; allowed: 1..65535"),
                                              ("0", "port 0 is out of range; allowed: 1..65535"),
                                              ("-5", "port -5 is out of range")])
def test_dashboard_bad_port_is_one_line(port, needle, tmp_path, cli_env):
    _one_line_error(run_cli(["dashboard", "--port", port, "--db", str(tmp_path / "d.db")], cli_env, timeout=60),
                    needle)


def test_dashboard_port_in_use_is_one_line(tmp_path, cli_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _one_line_error(run_cli(["dashboard", "--port", str(port), "--db", str(tmp_path / "d.db")], cli_env,
                                timeout=60), f"port {port} is in use on 127.0.0.1")


def test_dashboard_listens_on_localhost_unless_told():
    from tbench.dashboard.launch import streamlit_command

    local = streamlit_command("sqlite:////tmp/x.db", 8765)
    assert local[local.index("--server.address") + 1] == "127.0.0.1"
    everywhere = streamlit_command("sqlite:////tmp/x.db", 8765, host="0.0.0.0")
    assert everywhere[everywhere.index("--server.address") + 1] == "0.0.0.0"


# --- busy machines and noisy measurements are flagged ---------------------------------------------------


def _record(samples: list[float]) -> MeasurementRecord:
    from tbench.harness.timing import summarize

    case = Case(method="full", family="exact", seq_len=128, batch=1, heads=2, kv_heads=1, head_dim=32,
                dtype="fp32", causal=True, device="cpu", timing="cpu")
    return MeasurementRecord(case, "ok", timing=summarize(samples))


def test_noisy_and_busy_records_are_flagged():
    from tbench.harness import busy

    steady = _record([1.0 + 0.001 * (i % 5) for i in range(50)])
    assert busy.flag(steady, None, None, target_rse=0.005) == [] and steady.message == ""
    assert "noisy" not in steady.device_state

    wild = _record([1.0, 1.1, 30.0, 0.9, 15.0, 1.0, 2.0, 40.0, 1.2, 9.0])
    warnings = busy.flag(wild, None, None, target_rse=0.005)
    assert warnings and warnings[0].startswith("noisy: rse")
    assert wild.device_state["noisy"]["p80_over_p20"] > 1.5 and "noisy" in wild.message

    load = busy.HostLoad(cores=2)
    crowded = _record([1.0 + 0.001 * (i % 5) for i in range(50)])
    assert busy.flag(crowded, load, 0.2, target_rse=0.005) == []  # a little background load is fine
    assert busy.flag(crowded, load, 1.5, target_rse=0.005) == [
        "machine busy: other processes kept 1.5 of 2 CPU cores busy"]
    assert crowded.device_state["busy"] == {"other_cpu_cores": 1.5, "cores": 2}

    shared = _record([1.0 + 0.001 * (i % 5) for i in range(50)])
    shared.device_state["before"] = {"other_processes": 0}
    shared.device_state["after"] = {"other_processes": 2}
    assert busy.flag(shared, None, None, target_rse=0.005) == ["GPU shared with 2 other processes"]


def _orphan_spinners(count: int, seconds: float) -> list[int]:
    """Busy loops that are not this process's descendants (their parent shell exits at once)."""
    started = subprocess.run(["sh", "-c", " ".join(
        f"timeout {seconds} {sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!;" for _ in range(count))],
        capture_output=True, text=True, check=True)
    return [int(pid) for pid in started.stdout.split()]


def _stop(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def test_host_load_counts_other_processes_not_our_workers():
    from tbench.harness import busy

    pids = _orphan_spinners(1, 20)
    try:
        load = busy.HostLoad.start()
        time.sleep(1.0)
        assert load.others(min_interval_s=0.0) >= 0.5  # the orphan spins on a core (shared with others)
    finally:
        _stop(pids)
    # our own descendants are this run's workers, not other load
    mine = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    before = busy._own_cpu_s()
    mine.wait()
    assert busy._own_cpu_s() - before >= 0.5


def test_run_on_a_busy_machine_warns_and_flags_rows(tmp_path, cli_env):
    db = tmp_path / "busy.db"
    pids = _orphan_spinners(os.cpu_count() or 1, 120)
    try:
        result = run_cli(["run", "--lengths", "128", "--methods", "full,sdpa-math", *SMALL, "--db", str(db)], cli_env)
    finally:
        _stop(pids)
    assert result.returncode == 0, result.stderr
    assert "the machine is busy before the run" in result.stderr and "rows flagged" in result.stderr
    with sqlite3.connect(db) as con:
        rows = con.execute("select message, device_state from measurements").fetchall()
    assert rows and all("machine busy" in message for message, _ in rows)
    assert all(json.loads(state)["busy"]["other_cpu_cores"] > 0.5 for _, state in rows)
    shown = run_cli(["show", "--db", str(db)], cli_env)
    assert "busy" in shown.stdout


# --- a long sweep says so up front --------------------------------------------------------------------


def test_estimate_grows_with_the_cost_and_calls_out_long_sweeps():
    from tbench.harness import estimate
    from tbench.harness.timing import TimingPolicy

    def case(n: int) -> Case:
        return Case(method="full", family="exact", seq_len=n, batch=1, heads=4, kv_heads=2, head_dim=64,
                    dtype="fp32", causal=True, device="cpu", timing="cpu")

    policy = TimingPolicy(min_time_s=0.1, budget_s=2.0)
    rate = 1e10  # a fixed rate: no probe, no timing in this test
    short, long = (estimate.case_seconds(case(n), rate, policy, check=True) for n in (512, 131072))
    assert short < 2.5 and long > 3600  # three calls of ~100 s each at least, whatever the budget
    small = estimate.Estimate({"a": short}, rate, nominal_s=2.05)
    assert not small.far_beyond
    big = estimate.Estimate({"a": short, "b": long}, rate, nominal_s=4.1)
    assert big.far_beyond and big.total_s > 3600
    assert [estimate.duration(s) for s in (45, 720, 3 * 3600, 3 * 86400)] == ["45 s", "12 min", "3.0 h", "3.0 days"]


def test_long_cpu_sweep_warns_up_front(tmp_path, cli_env):
    db = tmp_path / "long.db"
    log = tmp_path / "stderr.txt"
    exe = Path(sys.executable).parent / "tbench"
    with log.open("w") as stderr:
        proc = subprocess.Popen([str(exe), "run", "--device", "cpu", "--lengths", "4k..128k", "--methods",
                                 "full,sdpa-math", "--db", str(db)], env=cli_env, stdout=subprocess.DEVNULL,
                                stderr=stderr)
        deadline = time.monotonic() + 120
        while "far longer" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    text = " ".join(log.read_text().split())
    # in minutes, hours or days by the speed of the machine; never a few seconds
    assert re.search(r"Estimated time: ~[\d.]+ (min|h|days) for 12 configurations", text), text
    assert "far longer than its budgets suggest (12 configurations x 2 s" in text
    assert "full N=131072" in text
