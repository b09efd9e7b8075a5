"""How `tbench quality` runs: batches made ahead (the same batches as drawing them in the loop),
configurations trained in worker processes (the same results as one at a time; a worker that dies
costs only its configuration; Ctrl-C marks the run interrupted), and a run resumed where it stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch
from conftest import ctrl_c_reaches_child, run_cli

from tbench.core.records import RunInfo
from tbench.methods.catalog import load_registry
from tbench.quality.job import make_record
from tbench.quality.plan import QualityRequest, plan_quality
from tbench.quality.pool import CPU_WORKER_THREADS, _death, gpu_worker_threads
from tbench.quality.prefetch import Prefetcher
from tbench.quality.runner import IN_PROCESS, run_quality
from tbench.quality.tasks import TaskSpec, generate
from tbench.results.quality import finish_quality_run, quality_results, record_quality, start_quality_run
from tbench.results.store import Store

TASK = TaskSpec("mqar", 48, 32, 4)


def _plain(seed: int, count: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [generate(TASK, 8, generator) for _ in range(count)]


def _drawn(spec: TaskSpec, threads: int, seed: int = 0) -> list:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(seed)
        return [generate(spec, 64, generator) for _ in range(2)]
    finally:
        torch.set_num_threads(previous)


def _prefetched(seed: int, count: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    with Prefetcher(lambda: generate(TASK, 8, generator), count, "cpu") as batches:
        return list(batches)


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets) and torch.equal(x.distance, y.distance)
        for x, y in zip(a, b, strict=True))


def _batch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tbench-batches"]


def test_prefetched_batches_are_the_plain_loops_bit_for_bit():
    assert _same(_prefetched(3, 7), _plain(3, 7))
    assert not _same(_prefetched(3, 7), _plain(4, 7))  # another seed differs: the comparison can fail
    assert not _same(_prefetched(3, 6), _plain(3, 7))
    assert _prefetched(3, 0) == []
    assert not _batch_threads()


def test_batches_do_not_depend_on_the_thread_count():
    # a worker on a GPU draws with its share of the cores; the default preset's largest batch
    big = TaskSpec("mqar", 4096, 256, 16)
    one, many = (_drawn(big, threads) for threads in (1, max(2, torch.get_num_threads())))
    assert _same(one, many)
    assert not _same(one, _drawn(big, 1, seed=1))


def test_prefetcher_stops_its_thread_when_training_stops_or_fails():
    generator = torch.Generator().manual_seed(0)
    drawn = [0]

    def count_draw():
        drawn[0] += 1
        return generate(TASK, 8, generator)

    with Prefetcher(count_draw, 10**6, "cpu") as batches:
        for i, _ in enumerate(batches):
            if i == 2:
                break  # training raised or ended early: the producer is blocked on a full queue
    assert not _batch_threads()
    assert drawn[0] <= 3 + 2 + 1  # the ones used, a full queue and the one in hand: then it stopped

    calls = [0]

    def draw():
        calls[0] += 1
        if calls[0] == 3:
            raise ValueError("bad draw")
        return generate(TASK, 8, generator)

    got = []
    with pytest.raises(ValueError, match="bad draw"), Prefetcher(draw, 10, "cpu") as batches:
        got.extend(batches)
    assert len(got) == 2 and not _batch_threads()  # the draw's error reaches the consumer, after the good ones


def test_worker_deaths_and_thread_shares_are_named():
    assert _death(-signal.SIGABRT) == "killed by SIGABRT"
    assert _death(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert _death(3) == "exited with code 3"
    assert gpu_worker_threads(4, cores=16) == 4 and gpu_worker_threads(4, cores=2) == 1


def _tiny_plan(**overrides):
    registry = load_registry(plugins=False)
    request = QualityRequest(preset="tiny", steps=30, **overrides)
    return plan_quality(request, registry, {m.name: None for m in registry}), registry


def _results(store: Store, run_id: int) -> dict[str, tuple]:
    df = quality_results(store, [run_id])
    return {r.config_key: (r.status, r.accuracy, r.final_loss, r.scored) for r in df.itertuples()}


def test_two_workers_train_what_one_trains_and_in_process_trains(tmp_path, monkeypatch):
    # A spawned worker runs the parent's __main__ file again; Streamlit's AppTest (the dashboard tests)
    # leaves a temporary script there that cannot run alone. The CLI's __main__ is the tbench script.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))
    plan, registry = _tiny_plan()
    store = Store(str(tmp_path / "q.db"))
    threads = torch.get_num_threads()
    torch.set_num_threads(CPU_WORKER_THREADS)  # as in a worker: another thread count may add in another order
    try:
        outcomes = {jobs: run_quality(plan, registry, store, RunInfo(command="test", device="cpu"), jobs=jobs)
                    for jobs in (IN_PROCESS, 1, 2)}
    finally:
        torch.set_num_threads(threads)
    results = {jobs: _results(store, o.run_id) for jobs, o in outcomes.items()}
    assert len(results[1]) == len(plan.configurations) == 4
    assert all(status == "ok" for status, *_ in results[1].values())
    assert results[2] == results[1] == results[IN_PROCESS]  # accuracy and final loss, bit for bit
    assert all(o.status == "finished" and o.counts == {"ok": 4} for o in outcomes.values())
    # another seed gives other numbers: the comparison can fail
    other, _ = _tiny_plan(seeds="1")
    run = run_quality(other, registry, store, RunInfo(command="test", device="cpu"))
    assert sorted(v[2] for v in _results(store, run.run_id).values()) != sorted(v[2] for v in results[1].values())


def _rows(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as con:
        return {m: (s, msg) for m, s, msg in con.execute("SELECT config_key, status, message FROM quality_results")}


def _run_status(db: Path) -> list[str]:
    with sqlite3.connect(db) as con:
        return [s for (s,) in con.execute("SELECT status FROM quality_runs ORDER BY id")]


def test_a_worker_that_dies_costs_only_its_configuration(tmp_path, plugin_env):
    db = tmp_path / "q.db"
    result = run_cli(["quality", "--device", "cpu", "--preset", "tiny", "--methods", "test-abort,sdpa-math",
                      "--lengths", "32", "--steps", "5", "--jobs", "1", "--db", str(db)],
                     plugin_env, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = _rows(db)
    assert len(rows) == 2  # one worker at a time: the abort needed a replacement for what followed
    for key, (status, message) in rows.items():
        if key.startswith("test-abort"):
            assert status == "error" and message.startswith("worker process killed by SIGABRT while training "
                                                            "test-abort N=32 seed="), message
        else:
            assert status == "ok" and message == ""
    assert "1 error, 1 ok" in result.stderr and "killed by SIGABRT" in result.stderr
    assert _run_status(db) == ["failed"] and "Traceback" not in result.stderr


def test_a_worker_whose_cuda_context_is_poisoned_is_replaced(tmp_path, plugin_env):
    db, pids = tmp_path / "q.db", tmp_path / "pids.txt"
    env = {**plugin_env, "TBENCH_TEST_PID_FILE": str(pids),
           "TBENCH_TEST_RAISE": "CUDA error: an illegal memory access was encountered"}
    result = run_cli(["quality", "--device", "cpu", "--preset", "tiny", "--methods", "test-slow", "--lengths", "32",
                      "--seeds", "0,1", "--steps", "5", "--jobs", "1", "--db", str(db)], env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [s for s, _ in _rows(db).values()] == ["error", "error"]
    assert all("illegal memory access" in m for _, m in _rows(db).values())
    # one worker at a time, each configuration in a fresh one: the first worker was not trusted again
    assert len(set(pids.read_text().split())) == 2
    # an error that leaves the context sound keeps the worker
    pids.unlink()
    env["TBENCH_TEST_RAISE"] = "shape mismatch"
    again = run_cli(["quality", "--device", "cpu", "--preset", "tiny", "--methods", "test-slow", "--lengths", "32",
                     "--seeds", "0,1", "--steps", "5", "--jobs", "1", "--db", str(tmp_path / "r.db")], env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(set(pids.read_text().split())) == 1


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_ctrl_c_marks_the_run_interrupted_and_stops_every_worker(tmp_path, plugin_env):
    db = tmp_path / "q.db"
    exe = Path(sys.executable).parent / "tbench"
    # a terminal's Ctrl-C reaches the whole foreground process group: the CLI and its workers
    proc = subprocess.Popen([str(exe), "quality", "--device", "cpu", "--preset", "tiny", "--methods",
                             "sdpa-math,test-hang", "--lengths", "32", "--steps", "5", "--jobs", "2", "--db", str(db)],
                            env=plugin_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=ctrl_c_reaches_child)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (db.exists() and _rows_or_none(db)):
            time.sleep(0.5)
        assert _rows_or_none(db), "the exact method was never stored"
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)  # a worker left running would keep the CLI from exiting
        assert proc.returncode != 0 and "Traceback" not in stderr, stderr
        assert _run_status(db) == ["interrupted"]
        assert [s for s, _ in _rows(db).values()] == ["ok"]  # the hanging configuration left no row
        time.sleep(1)
        assert _running_in_group(proc.pid) == []  # no worker outlived the run
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever a failed check left behind
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _running_in_group(pgid: int) -> list[int]:
    """Processes of a process group that still run (an exited one left to a container's init, which
    may never reap it, does not count)."""
    running = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            running.append(int(entry.name))
    return running


def _rows_or_none(db: Path) -> dict[str, tuple] | None:
    try:
        return _rows(db)
    except sqlite3.Error:
        return None


def _partial_run(db: Path) -> tuple[int, str]:
    """A quality run stored through the store API as an interrupted run would leave it: one of its
    two configurations stored (with a made-up accuracy), the other missing."""
    plan, registry = _tiny_plan(lengths="32")
    store = Store(str(db))
    sweep = {"kind": "quality", "preset": "tiny", **plan.settings.as_dict()}
    run_id = start_quality_run(store, RunInfo(command="tbench quality", device="cpu", sweep=sweep))
    kept = plan.configurations[0]
    record_quality(store, run_id, make_record(plan, kept, registry, "ok", accuracy=0.123, scored=7))
    finish_quality_run(store, run_id, "interrupted")
    store.close()
    return run_id, kept.key


def test_resume_trains_only_what_the_run_lacks(tmp_path, cli_env):
    db = tmp_path / "q.db"
    run_id, kept = _partial_run(db)
    result = run_cli(["quality", "--resume", "latest", "--db", str(db)], cli_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"Resuming quality run {run_id}: 1 of 2 configurations left to train" in result.stderr
    assert "[1/1] sdpa-math|N32" in result.stderr and "2 ok" in result.stderr
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT config_key, accuracy FROM quality_results WHERE quality_run_id = ?",
                                (run_id,)).fetchall())
        steps = {s for (s,) in con.execute("SELECT steps FROM quality_results")}
    assert rows[kept] == 0.123 and len(rows) == 2  # the stored one kept as it was, the missing one trained
    assert steps == {30}  # with the run's settings
    assert _run_status(db) == ["finished"]
    again = run_cli(["quality", "--resume", str(run_id), "--db", str(db)], cli_env, timeout=300)
    assert again.returncode == 0 and "0 of 2 configurations left" in again.stderr, again.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--resume", "99"], "quality run 99 does not exist"),
    (["--resume", "one"], "quality run 'one' is not a quality run id"),
    (["--resume", "1", "--methods", "sdpa-math"], "--resume trains with the run's own settings; drop --methods"),
    (["--resume", "2"], "quality run 2 was not made by `tbench quality` and cannot be resumed"),
    (["--jobs", "0"], "jobs 0 must be at least 1"),
])
def test_bad_resume_and_jobs_are_one_line_and_exit_2(tmp_path, cli_env, args, message):
    db = tmp_path / "q.db"
    _partial_run(db)
    store = Store(str(db))
    start_quality_run(store, RunInfo(command="elsewhere", device="cpu", sweep={"lengths": [32]}))
    store.close()
    result = run_cli(["quality", *args, "--db", str(db)], cli_env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert len(_rows(db)) == 1  # nothing trained
