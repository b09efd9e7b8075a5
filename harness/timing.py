"""How one sample is timed, and when to stop sampling.

GPU samples are CUDA-event intervals around one call (or one CUDA-graph replay) with the L2
cache flushed before each, outside the timed interval. CPU samples use time.perf_counter.
Sampling is adaptive: it stops once the relative standard error of the median (Maritz-Jarrett)
is at most `target_rse`, with a floor on samples and time and a per-measurement budget.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats.mstats import mjci

from ..core.case import TimingMode
from ..core.records import Timing

TIMING_MODES = tuple(m.value for m in TimingMode)


@dataclass(frozen=True)
class TimingPolicy:
    target_rse: float = 0.005
    min_samples: int = 10
    max_samples: int = 2000
    min_time_s: float = 0.1
    budget_s: float = 10.0  # per measurement, excluding warm-up
    warmup_s: float = 0.05
    warmup_calls: int = 2
    # Interleaved rounds: untimed calls before a case's samples in each round, then a burst of
    # samples of at most this long (at least one sample).
    settle_s: float = 0.02
    burst_s: float = 0.05
    # Also require the burst medians to pin the median down to target_rse (see Sampling.burst_rse).
    burst_rse: bool = True
    # Cases whose calls differ by more than this factor are timed in separate rotations, lightest
    # first: a millisecond kernel that follows a power-capped 100 ms kernel runs at the clocks that
    # one left behind, not at its own. Each rotation starts with a longer settle.
    tier_ratio: float = 4.0
    tier_settle_s: float = 0.25
    # A GPU that has been idle starts at low clocks; a fresh worker keeps it busy this long first.
    spinup_s: float = 2.0
    # Before each rotation, wait (at most cool_max_s) until the GPU is no warmer than this, so
    # that measurements start from the same temperature whatever ran before them. A chip at its
    # power cap runs slower when hot, by a few percent.
    cool_to_c: float | None = None
    cool_max_s: float = 60.0
    # A chip at its power cap raises or lowers its clocks over seconds after the workload
    # changes. Each rotation's settle goes on (at most clock_settle_max_s) until the mean SM clock
    # of the last clock_window_s differs from that of the window before by at most
    # clock_tolerance, so that every run measures a configuration at the clocks it settles to,
    # not at a point on the way there that depends on what ran before.
    # A rotation whose GPU is not held back (no power or thermal limit) stops settling after
    # tier_settle_s: its clocks are already at their maximum.
    clock_window_s: float = 2.0
    clock_tolerance: float = 0.005
    clock_settle_max_s: float = 12.0
    # Held back, the clocks keep wandering by several percent over seconds even once settled;
    # such a measurement samples at least this long (within budget_s) to average over them.
    held_back_min_time_s: float = 3.0

    @classmethod
    def quick(cls) -> TimingPolicy:
        """For tests and smoke runs: coarse, fast."""
        return cls(target_rse=0.05, min_samples=3, max_samples=30, min_time_s=0.0, budget_s=1.0,
                   warmup_s=0.0, warmup_calls=1, settle_s=0.0, burst_s=0.0, tier_settle_s=0.0,
                   spinup_s=0.0, clock_settle_max_s=0.0, burst_rse=False, held_back_min_time_s=0.0)


def spin_up(device: str, seconds: float) -> None:
    """Keep the GPU busy with matrix products for `seconds`, so that measurements start from the
    clocks of a loaded GPU, as every later one does, not from those of an idle one."""
    if seconds <= 0 or not device.startswith("cuda"):
        return
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize(device)
    del a
    torch.cuda.empty_cache()


def cool_down(read_c: Callable[[], float | None], target_c: float, limit_s: float,
              sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> tuple[float, float | None]:
    """Idle until `read_c()` is at most `target_c` or `limit_s` has passed. Returns (seconds
    waited, last temperature read); an unreadable temperature ends the wait at once."""
    start = clock()
    while True:
        temp = read_c()
        if temp is None or temp <= target_c or clock() - start >= limit_s:
            return clock() - start, temp
        sleep(0.5)


def clocks_settled(readings: list[tuple[float, float]], now: float, window_s: float, tolerance: float) -> bool:
    """True once the mean clock of the last `window_s` is within `tolerance` (relative) of the
    mean of the window before it; `readings` are (seconds, MHz), at least 3 per window needed."""
    last = [mhz for t, mhz in readings if now - window_s < t <= now]
    prev = [mhz for t, mhz in readings if now - 2 * window_s < t <= now - window_s]
    if len(last) < 3 or len(prev) < 3:
        return False
    a, b = sum(prev) / len(prev), sum(last) / len(last)
    return abs(b - a) <= tolerance * a


def median_rse(samples: list[float]) -> float:
    """Relative standard error of the median; infinite until there are enough samples."""
    if len(samples) < 5:
        return float("inf")
    data = np.asarray(samples, dtype=np.float64)
    median = float(np.median(data))
    if median <= 0:
        return float("inf")
    if np.ptp(data) == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        stderr = float(np.asarray(mjci(data, prob=[0.5]))[0])
    return stderr / median if np.isfinite(stderr) else float("inf")


def summarize(samples: list[float]) -> Timing:
    data = np.asarray(samples, dtype=np.float64)
    return Timing(
        median_ms=float(np.median(data)),
        p20_ms=float(np.percentile(data, 20)),
        p80_ms=float(np.percentile(data, 80)),
        mean_ms=float(data.mean()),
        std_ms=float(data.std(ddof=1)) if len(data) > 1 else 0.0,
        min_ms=float(data.min()),
        samples_ms=[float(x) for x in data],
        rse=median_rse(samples),
    )


@dataclass
class Sampling:
    """Sampling state of one measurement: its samples and the time spent on them."""

    policy: TimingPolicy
    samples: list[float]
    spent_s: float = 0.0
    stop_reason: str = ""
    burst_starts: list[int] = field(default_factory=list)

    def add(self, sample_ms: float, spent_s: float) -> None:
        self.samples.append(sample_ms)
        self.spent_s += spent_s

    def start_burst(self) -> None:
        self.burst_starts.append(len(self.samples))

    def burst_rse(self) -> float:
        """Standard error of the mean of the burst medians, relative to the median of all samples.
        Samples of one burst share the clock of that moment; when the clocks swing (a chip at its
        power cap), they are not independent, and the per-sample error understates the error of
        the median. Infinite before there are 3 bursts."""
        edges = [*self.burst_starts, len(self.samples)]
        medians = [float(np.median(self.samples[a:b])) for a, b in itertools.pairwise(edges) if b > a]
        if len(medians) < 3:
            return float("inf")
        median = float(np.median(self.samples))
        return float(np.std(medians, ddof=1) / np.sqrt(len(medians)) / median) if median > 0 else float("inf")

    @property
    def done(self) -> bool:
        n, p = len(self.samples), self.policy
        if n >= p.max_samples:
            self.stop_reason = f"max samples ({p.max_samples})"
            return True
        if self.spent_s >= p.budget_s and n >= min(p.min_samples, 3):
            self.stop_reason = f"time budget ({p.budget_s:g} s)"
            return True
        if (n >= p.min_samples and self.spent_s >= p.min_time_s and median_rse(self.samples) <= p.target_rse
                and (not p.burst_rse or not self.burst_starts or self.burst_rse() <= p.target_rse)):
            self.stop_reason = "target precision"
            return True
        return False


@dataclass
class Prepared:
    """A call ready to be timed. `hold_cycles`: how long the GPU waits, after the L2 flush and
    before the start event, so that the host has queued the whole call when the clock starts
    (`host_ms`: the host's time to issue one call, measured when prepared). The hold grows when a
    sample shows the host slower than that (`covers`, `lengthen_hold`), and the sample is taken
    again; `retakes` counts the samples taken again (`retake_until_covered`)."""

    call: Callable[[], object]
    hold_cycles: int = 0
    hold_ms: float = 0.0
    host_ms: float | None = None
    # Runs before each sample, outside the timed interval (e.g. the forward whose backward is timed).
    setup: Callable[[], None] | None = None
    retakes: int = 0

    def __call__(self) -> object:
        if self.setup is not None:
            self.setup()
        return self.call()

    def covers(self, issue_ms: float) -> bool:
        """Whether the hold outlasted the host's issue of one sample (`issue_ms`, from the hold's
        launch to the call's return), so that the whole call was queued when the clock started. A
        call without a hold, or with one at the cap (host-bound), is taken as it is."""
        return not self.hold_cycles or issue_ms <= self.hold_ms or self.hold_ms >= HOLD_CAP_MS

    def lengthen_hold(self, issue_ms: float, cycles_per_ms: float) -> None:
        """A hold that covers `issue_ms`, for the sample's retake and the samples after it."""
        self.hold_cycles, self.hold_ms = hold_for(issue_ms, cycles_per_ms)


class Timer:
    """Times one call of a zero-argument function, returning milliseconds. `setup`, when given, runs
    before every sample, untimed."""

    mode = "cpu"

    def prepare(self, fn: Callable[[], object], setup: Callable[[], None] | None = None,
                call_s: float | None = None) -> Prepared:
        return Prepared(fn, setup=setup)

    def sample(self, fn: Prepared) -> float:
        if fn.setup is not None:
            fn.setup()
        start = time.perf_counter()
        fn.call()
        return (time.perf_counter() - start) * 1e3


# A call at least this long is timed with one host-issue probe, not five (CudaEventTimer.prepare).
LONG_CALL_S = 0.25


# The longest GPU hold before a sample: a call whose host time is longer is host-bound.
HOLD_CAP_MS = 20.0
# How many times one sample is taken again with a longer hold before it is kept as it is.
MAX_RETAKES = 3


def retake_until_covered(fn: Prepared, attempt: Callable[[], tuple[float, float]], cycles_per_ms: float) -> float:
    """One sample: `attempt()` takes it, returning (its time, the host's issue time), and is run
    again with a longer hold while the hold did not cover the issue, at most MAX_RETAKES times, after
    which the last is kept as it is. The hold is lengthened after every uncovered attempt, the last
    too, so that the samples after it start covered; `fn.retakes` counts the attempts run again."""
    for n in range(MAX_RETAKES + 1):
        took, issue_ms = attempt()
        if fn.covers(issue_ms):
            break
        fn.lengthen_hold(issue_ms, cycles_per_ms)
        if n < MAX_RETAKES:
            fn.retakes += 1
    return took


def hold_for(host_ms: float, cycles_per_ms: float, cap_ms: float = HOLD_CAP_MS) -> tuple[int, float]:
    """GPU wait that covers the host's issue time of a call with a margin, at most `cap_ms` (a
    call whose host time is longer than that is host-bound and is timed as such)."""
    hold_ms = min(cap_ms, 1.5 * host_ms + 0.02)
    return int(hold_ms * cycles_per_ms), hold_ms


class CudaEventTimer(Timer):
    """CUDA events around one call, the L2 flushed before it. Without a hold the GPU would sit
    idle after the start event until the host issued the call's first kernel (0.1-0.2 ms of
    Python for a Triton launch), and that wait, which varies from run to run, would be counted as
    the call's time; holding the GPU until the host is done is how a pipeline that keeps the GPU
    fed sees the call."""

    mode = "events"

    def __init__(self, device: torch.device, flush_bytes: int | None = None) -> None:
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or 64 * 2**20
        # Writing twice the L2 size evicts whatever the previous call left there.
        self.flush_buffer = torch.empty(flush_bytes or 2 * l2, dtype=torch.uint8, device=device)
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)
        self.cycles_per_ms = self._calibrate_sleep()

    def _calibrate_sleep(self) -> float:
        cycles = 2_000_000
        torch.cuda._sleep(cycles)  # first launch loads the kernel
        torch.cuda.synchronize()
        self.start.record()
        torch.cuda._sleep(cycles)
        self.end.record()
        self.end.synchronize()
        return cycles / max(float(self.start.elapsed_time(self.end)), 1e-3)

    def flush(self) -> None:
        self.flush_buffer.fill_(1)

    def _capture(self, fn: Callable[[], object]) -> Callable[[], object]:
        return fn

    def prepare(self, fn: Callable[[], object], setup: Callable[[], None] | None = None,
                call_s: float | None = None) -> Prepared:
        """`call_s`: the call's time as the warm-up saw it. The host's issue time is the median of five
        calls, or of one when a call is that long: each costs a whole call (2.7 s for a Llama layer at
        128k x 5), and a few milliseconds of hold are then a small share of it."""
        if setup is not None and self.mode == "graph":
            raise ValueError("graph timing cannot replay a call that needs an untimed setup before each sample")
        call = self._capture(fn)
        busy_ms = 10.0
        issue = []
        for _ in range(1 if call_s is not None and call_s >= LONG_CALL_S else 5):
            if setup is not None:
                setup()
            torch.cuda.synchronize()
            torch.cuda._sleep(int(busy_ms * self.cycles_per_ms))  # GPU busy: the host is timed alone
            start = time.perf_counter()
            call()
            issue.append((time.perf_counter() - start) * 1e3)
        torch.cuda.synchronize()
        host_ms = float(np.median(issue))
        if host_ms > 0.8 * busy_ms:  # the call waits for the GPU itself: nothing to hide
            return Prepared(call, 0, 0.0, host_ms, setup)
        cycles, hold_ms = hold_for(host_ms, self.cycles_per_ms)
        return Prepared(call, cycles, hold_ms, host_ms, setup)

    def sample(self, fn: Prepared) -> float:
        """One call's GPU time. The hold was sized from the host's issue time when the call was
        prepared; should the host turn slower later (another process, a slower core), the GPU would
        wait for it inside the timed interval and the sample would time the host. Such a sample is
        taken again, with a hold that covers the host's time, as are the samples after it."""

        def attempt() -> tuple[float, float]:
            if fn.setup is not None:
                fn.setup()  # queued before the flush: done before the start event
            self.flush()
            issued_from = time.perf_counter()
            if fn.hold_cycles:
                torch.cuda._sleep(fn.hold_cycles)
            self.start.record()
            fn.call()
            issue_ms = (time.perf_counter() - issued_from) * 1e3
            self.end.record()
            self.end.synchronize()
            return float(self.start.elapsed_time(self.end)), issue_ms

        return retake_until_covered(fn, attempt, self.cycles_per_ms)


@dataclass(frozen=True)
class Replay:
    """A captured call. The graph reads the memory of what the call held when it was captured (its
    inputs, the saved tensors of an autograd graph its backward retains), so the call is kept alive
    with it: were it collected, a replay would read freed memory."""

    graph: torch.cuda.CUDAGraph
    captured: Callable[[], object]

    def __call__(self) -> None:
        self.graph.replay()


class CudaGraphTimer(CudaEventTimer):
    """Replays a CUDA graph of the call, which removes CPU launch overhead from the samples."""

    mode = "graph"

    def _capture(self, fn: Callable[[], object]) -> Callable[[], object]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # allocations of the first call must not land inside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # the same stream: a backward's kernels run on the stream of their forward, which for a
        # backward captured alone is the first call's
        with torch.cuda.graph(graph, stream=stream):
            fn()
        torch.cuda.synchronize()
        return Replay(graph, fn)


def make_timer(mode: str, device: str) -> Timer:
    if mode not in TIMING_MODES:
        raise ValueError(f"timing mode '{mode}' unknown; allowed: {', '.join(TIMING_MODES)}")
    if device == "cpu":
        if mode != "cpu":
            raise ValueError(f"timing mode '{mode}' needs a CUDA device; on the CPU use 'cpu'")
        return Timer()
    if mode == "cpu":
        raise ValueError("timing mode 'cpu' is for the CPU; on a GPU use 'events' or 'graph'")
    dev = torch.device(device)
    return CudaGraphTimer(dev) if mode == "graph" else CudaEventTimer(dev)
