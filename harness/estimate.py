"""How long a sweep will take, roughly, before it starts.

Each configuration's call costs its FLOPs (core/cost.py) at a rough device rate: on a CPU a
quick matmul probe, on a GPU a nominal rate. Its measurement then takes its warm-up, its
correctness check and its sampling (at least min_time, at most the budget, but never fewer than
three calls however long they take). Only the order of magnitude matters: it tells a sweep of
minutes from one of days, and it weights the progress bar so that its ETA counts the long
configurations still ahead rather than the short ones already done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..core import cost
from ..core.case import Case, Mode
from .timing import TimingPolicy

# Attention reaches a fraction of a GPU's matmul peak; a nominal effective rate is near enough
# for an order of magnitude, and reading the real one would start CUDA in the parent process.
NOMINAL_GPU_FLOPS = 1e14
# A share of the matmul rate that attention reaches on a CPU (softmax, masking, memory traffic).
CPU_ATTENTION_SHARE = 0.3
# The float64 reference runs this many times slower than the method (correctness check).
REFERENCE_SLOWDOWN = 8.0
# Seconds of fixed cost per configuration: building inputs, messages, commits.
OVERHEAD_S = 0.05
# A sweep estimated past this many times its nominal length (configurations x budget) is called out.
FAR_BEYOND = 3.0


def cpu_rate(seconds: float = 0.1) -> float:
    """FLOP/s of a float32 matmul on this CPU, in about `seconds`."""
    import torch

    size = 256
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        calls += 1
    return 2 * size**3 * calls / (time.perf_counter() - start)


def device_rate(device: str) -> float:
    """Rough attention FLOP/s of the device."""
    if device.startswith("cuda"):
        return NOMINAL_GPU_FLOPS
    return cpu_rate() * CPU_ATTENTION_SHARE


def case_seconds(case: Case, rate: float, policy: TimingPolicy, check: bool) -> float:
    # a bwd sample also runs its forward, untimed but on the clock of the run
    untimed = cost.forward_flops(case) if case.mode is Mode.BWD else 0.0
    call = (cost.flops(case) + untimed) / rate
    sampling = max(min(max(policy.min_time_s, policy.min_samples * call), policy.budget_s), 3 * call)
    warm = policy.warmup_calls * call + policy.warmup_s
    checking = (1 + REFERENCE_SLOWDOWN) * call if check else 0.0
    return OVERHEAD_S + warm + checking + sampling


@dataclass(frozen=True)
class Estimate:
    seconds: dict[str, float]  # by case key
    rate: float  # FLOP/s assumed
    nominal_s: float  # what the sweep's budgets alone suggest: configurations x budget
    devices: int = 1

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values()) / self.devices

    @property
    def far_beyond(self) -> bool:
        return self.total_s > FAR_BEYOND * self.nominal_s and self.total_s > 60

    def longest(self, cases: list[Case]) -> tuple[Case, float]:
        case = max(cases, key=lambda c: self.seconds[c.key])
        return case, self.seconds[case.key]


def estimate(cases: list[Case], device: str, policy: TimingPolicy, check: bool, devices: int = 1) -> Estimate:
    rate = device_rate(device)
    seconds = {case.key: case_seconds(case, rate, policy, check) for case in cases}
    return Estimate(seconds, rate, len(cases) * (policy.budget_s + policy.warmup_s) / max(1, devices),
                    max(1, devices))


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h', '2.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
