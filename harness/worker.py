"""Measurement isolation: cases run in a spawned worker process.

An OOM, a CUDA error that poisons the context, a segfault, an abort or a hang in one
configuration then costs only that configuration: the parent records it (`oom`, `error`,
`timeout`) and starts a fresh worker for the rest of the sweep.

Protocol over a Pipe. Parent -> worker: ("peaks",), ("group", cases), ("stop",).
Worker -> parent: ("beacon", case_key, step), ("record", MeasurementRecord), ("done",),
("peaks", dict), ("poisoned", message).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from ..core.case import Case
from ..core.records import MeasurementRecord
from .measure import MeasureSettings, measure_group
from .signals import ignore_stop_signals

# Errors after which the CUDA context cannot be trusted: the worker must be replaced.
POISON_MARKERS = ("illegal memory access", "device-side assert", "unspecified launch failure",
                  "CUDA error", "misaligned address")


def _worker_main(conn: Connection, settings: MeasureSettings, plugins: bool, device: str) -> None:
    # The parent handles Ctrl-C, SIGTERM and SIGHUP; a worker must not die half-way through a message.
    ignore_stop_signals()
    # Keep Triton autotuners' choices on disk (fla-core's kernels tune over dozens of configs: 36 s at
    # the first shape on an H200), so a later worker or run on this machine reuses them instead of
    # timing every config again; Triton keeps none for configs with a pre-hook, as tbench's own have
    # (those go to tbench's tuning record, kernels/tuning_record.py).
    # Read when a kernel module is imported, so set first. Not when tbench's own tuning is switched
    # off: its stand-in choice must not be kept as a result.
    if os.environ.get("TBENCH_TRITON_AUTOTUNE", "1") != "0":
        os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    try:
        _serve(conn, settings, plugins, device)
    except (BrokenPipeError, EOFError, ConnectionResetError):
        return  # the parent is gone or stopped listening: nothing left to report to


def _serve(conn: Connection, settings: MeasureSettings, plugins: bool, device: str) -> None:
    from ..methods.catalog import load_registry
    from .peaks import measure_peaks
    from .timing import spin_up

    registry = load_registry(plugins=plugins)
    if device.startswith("cuda") and torch_device_index(device) is not None:
        import torch

        torch.cuda.set_device(torch.device(device))
    spun_up = False
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        kind = message[0]
        if kind == "stop":
            return
        if kind == "peaks":
            conn.send(("peaks", measure_peaks(device)))
            continue
        cases: list[Case] = message[1]
        poisoned: list[str] = []
        if not spun_up:
            spin_up(device, settings.policy.spinup_s)
            spun_up = True

        def emit(rec: MeasurementRecord, poisoned: list[str] = poisoned) -> None:
            conn.send(("record", rec))
            if rec.status == "error" and any(m in rec.message for m in POISON_MARKERS):
                poisoned.append(rec.message)
                raise _Poisoned(rec.message)

        try:
            measure_group(cases, registry, settings, emit,
                          beacon=lambda case, step: conn.send(("beacon", case.key, step)),
                          device_index=_device_index(device))
        except _Poisoned:
            conn.send(("poisoned", poisoned[-1]))
            return
        conn.send(("done",))


class _Poisoned(Exception):
    pass


def torch_device_index(device: str) -> int | None:
    """'cuda:1' -> 1; 'cuda' and 'cpu' -> None (no explicit index)."""
    import torch

    return torch.device(device).index


def _device_index(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


@dataclass
class WorkerEvent:
    kind: str  # record, beacon, done, died, timeout, poisoned
    case_key: str | None = None
    step: str = ""
    record: MeasurementRecord | None = None
    message: str = ""
    payload: Any = None


class Worker:
    """Parent-side handle of one worker process."""

    def __init__(self, settings: MeasureSettings, plugins: bool, device: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, settings, plugins, device), daemon=True)
        self.process.start()
        child.close()
        self.in_flight: tuple[str, str] | None = None
        self.last_activity = time.monotonic()

    def send(self, message: tuple[Any, ...]) -> None:
        self.last_activity = time.monotonic()
        self.conn.send(message)

    def poll_event(self, wait_s: float) -> WorkerEvent | None:
        """The next message if one arrives within wait_s; `died` if the process exited; else None."""
        try:
            ready = self.conn.poll(wait_s)
        except (EOFError, OSError):
            ready = False
        if not ready:
            return None if self.process.is_alive() else self._died()
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            return self._died()
        self.last_activity = time.monotonic()
        kind = message[0]
        if kind == "beacon":
            self.in_flight = (message[1], message[2])
            return WorkerEvent("beacon", message[1], message[2])
        if kind == "record":
            self.in_flight = None
            return WorkerEvent("record", message[1].case.key, record=message[1])
        if kind == "poisoned":
            self.process.join(timeout=10)
            return WorkerEvent("poisoned", message=message[1])
        if kind == "peaks":
            return WorkerEvent("peaks", payload=message[1])
        return WorkerEvent(kind)

    def silent_for(self) -> float:
        return time.monotonic() - self.last_activity

    def timeout_event(self) -> WorkerEvent:
        return WorkerEvent("timeout", *(self.in_flight or (None, "")))

    def next_event(self, timeout_s: float) -> WorkerEvent:
        """The worker's next message; `timeout` if silent for timeout_s, `died` if it exited."""
        while True:
            event = self.poll_event(0.5)
            if event is not None:
                return event
            if self.silent_for() > timeout_s:
                return self.timeout_event()

    def _died(self) -> WorkerEvent:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        key, step = self.in_flight or (None, "")
        return WorkerEvent("died", key, step, message=f"worker process {how} during {step or 'start-up'}")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.send(("stop",))
            self.process.join(timeout=10)
        except (OSError, BrokenPipeError):
            pass
        self.kill()
