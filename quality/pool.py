"""Quality configurations trained in spawned worker processes, several at once on one device.

The models are small: one process spends most of a step on the CPU (launching kernels, making
batches) and leaves the GPU idle, so a few processes share it. Each worker trains one configuration
at a time and sends back its record; the parent alone writes to the store. A worker that dies (a
segfault, an abort, a CUDA error that poisons its context) costs only the configuration it was
training: the parent makes that an `error` record naming the exit code or signal and starts a fresh
worker for the rest.

Protocol over a Pipe. Parent -> worker: ("train", Configuration), ("stop",).
Worker -> parent: ("record", QualityRecord).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from multiprocessing.connection import Connection, wait

from ..core.records import utcnow
from ..harness.signals import ignore_stop_signals
from ..harness.worker import POISON_MARKERS
from ..methods.registry import Registry
from ..results.quality import QualityRecord
from .plan import Configuration, QualityPlan

# Concurrent workers on a GPU by default. Not measured yet: the default until a sweep on the target
# GPU shows which count finishes the default preset soonest.
DEFAULT_CUDA_JOBS = 4
# On the CPU the workers would share the same cores: one, with all of them.
DEFAULT_CPU_JOBS = 1
# Torch threads of a worker on the CPU. One: a reduction split over more threads adds in another
# order, and the results must not depend on --jobs (more jobs use more cores instead).
CPU_WORKER_THREADS = 1
# Seconds a stopped worker gets to exit before it is killed.
_STOP_WAIT_S = 10.0


def default_jobs(device: str) -> int:
    return DEFAULT_CUDA_JOBS if device.startswith("cuda") else DEFAULT_CPU_JOBS


def gpu_worker_threads(jobs: int, cores: int | None = None) -> int:
    """Torch threads of each of `jobs` workers on a GPU, for their CPU work (drawing batches): the
    cores shared out, so that the workers do not crowd each other off them. The batches do not
    depend on it (a seeded generator draws them in order)."""
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def _worker_main(conn: Connection, plan: QualityPlan, plugins: bool, threads: int | None) -> None:
    # The parent handles Ctrl-C, SIGTERM and SIGHUP (it kills the workers and marks the run).
    ignore_stop_signals()
    # Tuned Triton choices kept on disk, shared with later workers and runs (as the speed worker does).
    if os.environ.get("TBENCH_TRITON_AUTOTUNE", "1") != "0":
        os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    try:
        _serve(conn, plan, plugins, threads)
    except (BrokenPipeError, EOFError, ConnectionResetError):
        return  # the parent is gone: nothing left to report to


def _serve(conn: Connection, plan: QualityPlan, plugins: bool, threads: int | None) -> None:
    import torch

    from ..methods.catalog import load_registry
    from .job import train_configuration

    if threads is not None:
        torch.set_num_threads(threads)
    device = plan.settings.device
    if device.startswith("cuda") and torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))
    registry = load_registry(plugins=plugins)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        record = train_configuration(plan, message[1], registry)
        conn.send(("record", record))
        if _poisoned(record):
            return  # this process's CUDA context cannot be trusted: the parent starts a fresh worker


def _poisoned(record: QualityRecord) -> bool:
    return record.status == "error" and any(m in record.message for m in POISON_MARKERS)


@contextmanager
def _stop_signals_ignored() -> Iterator[None]:
    """A spawned child inherits ignored signals: ignoring them while it starts means a Ctrl-C can
    never reach it before it installs its own dispositions (and print a traceback)."""
    signals = (signal.SIGINT, *(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)))
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class _Worker:
    """Parent-side handle of one worker process and the configuration it is training."""

    def __init__(self, plan: QualityPlan, plugins: bool, threads: int | None) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, plan, plugins, threads), daemon=True)
        if threading.current_thread() is threading.main_thread():  # signal dispositions are the main thread's
            with _stop_signals_ignored():
                self.process.start()
        else:
            self.process.start()
        child.close()
        self.config: Configuration | None = None
        self.trained = 0  # configurations it has sent back
        self.started_at: datetime = utcnow()

    def assign(self, config: Configuration) -> bool:
        """Sends the worker a configuration; False if it is gone (it died idle)."""
        try:
            self.conn.send(("train", config))
        except OSError:
            return False
        self.config, self.started_at = config, utcnow()
        return True

    def receive(self) -> QualityRecord | str:
        """The record the worker sent, or (it died) how it died."""
        try:
            if self.conn.poll():
                message = self.conn.recv()
                self.config = None
                self.trained += 1
                return message[1]
        except (EOFError, OSError):
            pass
        self.process.join(timeout=_STOP_WAIT_S)
        return _death(self.process.exitcode)

    def stop(self) -> None:
        with suppress(OSError):
            self.conn.send(("stop",))
        self.process.join(timeout=_STOP_WAIT_S)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=_STOP_WAIT_S)
        self.conn.close()


def train_in_workers(plan: QualityPlan, configs: Sequence[Configuration], registry: Registry, jobs: int,
                     on_record: Callable[[QualityRecord], None], plugins: bool = True) -> None:
    """Trains `configs` in up to `jobs` workers at once; `on_record` gets each record as it arrives
    (in the calling process, in completion order). Workers load the registry from the installed
    methods and plugins; `registry` (the same methods) names the failed ones."""
    threads = CPU_WORKER_THREADS if plan.settings.device == "cpu" else gpu_worker_threads(jobs)
    pending = deque(configs)
    workers: list[_Worker] = []
    try:
        while pending or workers:
            while pending and len(workers) < jobs:
                workers.append(_Worker(plan, plugins, threads))
            for worker in list(workers):
                if worker.config is not None or not pending:
                    continue
                config = pending.popleft()
                if worker.assign(config):
                    continue
                worker.kill()
                workers.remove(worker)
                if worker.trained:  # it died idle: a fresh worker takes the configuration
                    pending.appendleft(config)
                else:  # it died starting up, as the next one may: the configuration is charged, not retried
                    on_record(_died(plan, config, registry, _death(worker.process.exitcode), utcnow()))
            if pending and len(workers) < jobs:
                continue
            ready = wait([w.conn for w in workers] + [w.process.sentinel for w in workers])
            for worker in list(workers):
                if worker.conn not in ready and worker.process.sentinel not in ready:
                    continue
                config = worker.config
                got = worker.receive()
                if isinstance(got, QualityRecord):
                    on_record(got)
                    if _poisoned(got):  # the worker exits: its CUDA context cannot be trusted
                        worker.kill()
                        workers.remove(worker)
                    elif not pending:
                        worker.stop()
                        workers.remove(worker)
                    continue
                worker.kill()
                workers.remove(worker)
                if config is not None:  # died training it (a worker that dies idle costs nothing)
                    on_record(_died(plan, config, registry, got, worker.started_at))
    finally:
        for worker in workers:
            worker.kill()


def _died(plan: QualityPlan, config: Configuration, registry: Registry, how: str,
          started_at: datetime) -> QualityRecord:
    from .job import failed_record

    return failed_record(plan, config, registry, f"worker process {how} while training {config.label()}",
                         started_at)
