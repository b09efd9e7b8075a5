"""GPU state around each measurement, read through NVML (never changed: only read)."""

from __future__ import annotations

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
        }
        for key, read in readers.items():
            try:
                state[key] = read()
            except Exception:
                state[key] = None
        return state

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
