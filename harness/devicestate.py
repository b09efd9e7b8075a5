"""GPU state around each measurement, read through NVML (never changed: only read)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

# NVML clock-event reasons that mean the GPU ran slower than it could: software power cap,
# hardware slowdown, software and hardware thermal slowdown, power brake.
SLOWDOWN_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80
REASON_NAMES = {0x4: "sw power cap", 0x8: "hw slowdown", 0x20: "sw thermal", 0x40: "hw thermal",
                0x80: "hw power brake"}


class DeviceMonitor:
    """Samples SM/memory clocks, temperature, power and throttle reasons of one GPU."""

    def __init__(self, device: str) -> None:
        self.handle: Any = None
        self.nvml: Any = None
        if not device.startswith("cuda"):
            return
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            index = torch.device(device).index
            index = torch.cuda.current_device() if index is None else index
            # NVML counts GPUs in PCI order, CUDA may not (CUDA_VISIBLE_DEVICES); match by UUID.
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            try:
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            except Exception:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.nvml = pynvml
        except Exception:
            self.handle = None

    def sample(self) -> dict:
        if self.handle is None:
            return {}
        nvml, h = self.nvml, self.handle
        state: dict = {}
        readers = {
            "sm_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM),
            "temperature_c": lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU),
            "power_w": lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0,
            "throttle_reasons": lambda: int(nvml.nvmlDeviceGetCurrentClocksEventReasons(h))
            if hasattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons")
            else int(nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)),
            # this process holds a context on the GPU; any further one is someone else's (counted,
            # not matched by pid: in a container NVML may report the host's pids)
            "other_processes": lambda: max(0, len(nvml.nvmlDeviceGetComputeRunningProcesses(h)) - 1),
        }
        for key, read in readers.items():
            try:
                state[key] = read()
            except Exception:
                state[key] = None
        return state

    def sm_clock_mhz(self) -> float | None:
        if self.handle is None:
            return None
        return float(self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))

    @staticmethod
    def throttled(*states: dict | None) -> bool | None:
        reasons = [s.get("throttle_reasons") for s in states if s]
        known = [r for r in reasons if r is not None]
        if not known:
            return None
        return any(r & SLOWDOWN_MASK for r in known)

    @staticmethod
    def reasons(*states: dict | None) -> str:
        """Names of the slowdown reasons seen in any of the samples."""
        seen = 0
        for state in states:
            if state and state.get("throttle_reasons") is not None:
                seen |= state["throttle_reasons"]
        return ", ".join(name for bit, name in REASON_NAMES.items() if seen & bit) or "none"


class ClockTrace:
    """SM clock readings taken every `period_s` by a background thread while in a `with` block,
    as (seconds since the block began, MHz). An unreadable clock gives an empty trace."""

    def __init__(self, read_mhz: Callable[[], float | None], period_s: float = 0.05) -> None:
        self.read_mhz = read_mhz
        self.period_s = period_s
        self.readings: list[tuple[float, float]] = []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                mhz = self.read_mhz()
            except Exception:
                mhz = None
            if mhz is not None:
                self.readings.append((self.now(), float(mhz)))
            self._stop.wait(self.period_s)

    def __enter__(self) -> ClockTrace:
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="tbench-clock-trace", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def between(self, spans: list[tuple[float, float]]) -> list[float]:
        """Readings that fall inside any of the (start, end) spans."""
        return [mhz for t, mhz in list(self.readings) if any(a <= t <= b for a, b in spans)]


def clock_summary(readings: list[float]) -> dict | None:
    if not readings:
        return None
    return {"mean": round(sum(readings) / len(readings), 1), "min": min(readings), "max": max(readings),
            "n": len(readings)}
