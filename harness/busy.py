"""Is the machine busy, and is a measurement too noisy to trust?

A CPU sweep on a machine that other processes load is off by large factors, with spreads of
hundreds of percent, and looks like any other run. The runner therefore measures what other
processes take of the CPUs while each configuration is measured (total busy time from /proc/stat
minus the CPU time of this process and its workers), reads the other processes on the GPU (NVML,
in the worker's samples), and checks each measurement's spread against its target. Flagged rows
keep the evidence in `device_state` and say so in their message; the run warns as it goes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.records import MeasurementRecord

# Other processes using more than this share of the CPUs (and at least MIN_OTHER_CORES cores)
# make a host busy: a CPU measurement then competes for cores, a GPU one for its launch thread.
BUSY_SHARE = 0.25
MIN_OTHER_CORES = 0.5
# A measurement whose relative standard error is this many times its target, or whose p80 is
# this many times its p20, is noisy: its median can be off by more than its spread shows.
NOISY_RSE_FACTOR = 4.0
NOISY_P80_OVER_P20 = 1.5


def _proc_ticks(pid: int | str) -> tuple[int, float] | None:
    """(parent pid, utime + stime in seconds) of a live process, from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    """CPU seconds of this process, its finished children and its live descendants (the workers)."""
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _proc_ticks(entry.name)
            if found is not None:
                procs[int(entry.name)] = found
    ours = {os.getpid()}
    grew = True
    while grew:  # descendants, whatever their depth
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return own + sum(procs[pid][1] for pid in ours - {os.getpid()} if pid in procs)


def _busy_cpu_s() -> float | None:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class HostLoad:
    """CPU cores that processes other than this run kept busy between successive readings."""

    cores: int
    _last: tuple[float, float, float] | None = None  # (wall time, busy CPU s, own CPU s)
    _others: float | None = None  # over the last interval long enough to tell

    @classmethod
    def start(cls) -> HostLoad:
        load = cls(os.cpu_count() or 1)
        load._last = load._read()
        return load

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        busy = _busy_cpu_s()
        if busy is None:
            return None
        return time.monotonic(), busy, _own_cpu_s()

    def others(self, min_interval_s: float = 0.25) -> float | None:
        """Cores the other processes used on average since the last reading (None where unknown).
        Within min_interval_s of it (records that finish together) the last answer stands."""
        if self._last is None:
            return None
        if time.monotonic() - self._last[0] < min_interval_s:
            return self._others
        now = self._read()
        last, self._last = self._last, now
        if now is None:
            return None
        self._others = max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))
        return self._others

    def busy(self, others: float | None) -> bool:
        return others is not None and others >= max(MIN_OTHER_CORES, BUSY_SHARE * self.cores)

    def describe(self, others: float) -> str:
        return f"other processes kept {others:.1f} of {self.cores} CPU cores busy"


def probe_host(seconds: float = 0.5) -> tuple[HostLoad, float | None]:
    """What other processes take of the CPUs now (this process sleeps meanwhile)."""
    load = HostLoad.start()
    time.sleep(seconds)
    return load, load.others(min_interval_s=0.0)


def gpu_others(rec: MeasurementRecord) -> int:
    """Other processes on the measured GPU, as the worker's NVML samples saw them."""
    counts = [s.get("other_processes") for s in (rec.device_state.get("before"), rec.device_state.get("after"))
              if isinstance(s, dict)]
    return max((c for c in counts if c is not None), default=0)


def noisy(rec: MeasurementRecord, target_rse: float) -> dict | None:
    """The evidence that a measurement's spread is far above its target, or None."""
    t = rec.timing
    if t is None or not t.median_ms:
        return None
    rse = t.rse if t.rse is not None and math.isfinite(t.rse) else None
    ratio = t.p80_ms / t.p20_ms if t.p20_ms and t.p20_ms > 0 else None
    too_spread = ratio is not None and ratio > NOISY_P80_OVER_P20
    too_uncertain = rse is not None and rse > NOISY_RSE_FACTOR * target_rse
    if not (too_spread or too_uncertain):
        return None
    return {"rse": rse, "target_rse": target_rse, "p80_over_p20": round(ratio, 3) if ratio else None}


def flag(rec: MeasurementRecord, load: HostLoad | None, others: float | None, target_rse: float) -> list[str]:
    """Marks a measured record busy and/or noisy (in device_state and its message); returns the
    warnings, empty if the record is clean."""
    if rec.status != "ok" or rec.timing is None:
        return []
    warnings = []
    if load is not None and load.busy(others):
        assert others is not None
        rec.device_state["busy"] = {"other_cpu_cores": round(others, 2), "cores": load.cores}
        warnings.append(f"machine busy: {load.describe(others)}")
    on_gpu = gpu_others(rec)
    if on_gpu:
        rec.device_state["busy"] = {**rec.device_state.get("busy", {}), "other_gpu_processes": on_gpu}
        warnings.append(f"GPU shared with {on_gpu} other process{'es' if on_gpu > 1 else ''}")
    evidence = noisy(rec, target_rse)
    if evidence is not None:
        rec.device_state["noisy"] = evidence
        parts = []
        if evidence["rse"] is not None:
            parts.append(f"rse {100 * evidence['rse']:.2g}% (target {100 * target_rse:.2g}%)")
        if evidence["p80_over_p20"] is not None:
            parts.append(f"p80/p20 {evidence['p80_over_p20']:.2f}")
        warnings.append("noisy: " + ", ".join(parts))
    if warnings:
        rec.message = "; ".join([rec.message, *warnings] if rec.message else warnings)
    return warnings
