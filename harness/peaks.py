"""The device's own ceilings, measured once per run: copy bandwidth and matmul throughput.
Achieved TB/s and TFLOP/s are reported as a percentage of these, not of datasheet numbers."""

from __future__ import annotations

import time

import torch


def _median_ms(fn, device: str, reps: int = 20) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(3):
        fn()
    for _ in range(reps):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def _copy_tbps(device: str) -> float:
    nbytes = 2**31 if device.startswith("cuda") else 2**27
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device)
    return 2 * nbytes / (ms * 1e-3) / 1e12


def _matmul_tflops(device: str, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    ms = _median_ms(lambda: a @ b, device)
    return 2 * size**3 / (ms * 1e-3) / 1e12


def measure_peaks(device: str) -> dict:
    """Copy bandwidth (bytes read + written) and dense matmul rate, on random data."""
    on_gpu = device.startswith("cuda")
    peaks = {
        "copy_tbps": _copy_tbps(device),
        "matmul_tflops": _matmul_tflops(device, torch.bfloat16 if on_gpu else torch.float32, 8192 if on_gpu else 1024),
        "matmul_dtype": "bf16" if on_gpu else "fp32",
    }
    if on_gpu:
        torch.cuda.empty_cache()
    return peaks
