"""Plain records passed from the runner to the store (no database imports here, so measuring
workers stay light)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from .case import Case, Status


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class RunInfo:
    """Provenance of one invocation of the runner."""

    command: str
    device: str
    host: str = ""
    gpu_name: str | None = None
    gpu_count: int = 0
    driver: str | None = None
    cuda: str | None = None
    torch_version: str = ""
    triton_version: str | None = None
    python_version: str = ""
    platform: str = ""
    tbench_version: str = ""
    git_commit: str | None = None
    sweep: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    uuid: str | None = None
    started_at: datetime = field(default_factory=utcnow)


@dataclass
class Timing:
    """Summary statistics of the timed samples, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    samples_ms: list[float]
    rse: float | None = None  # relative standard error of the median

    @property
    def count(self) -> int:
        return len(self.samples_ms)


@dataclass
class MeasurementRecord:
    case: Case
    status: Status
    message: str = ""
    provenance: str = ""
    timing: Timing | None = None
    peak_bytes: int | None = None  # allocated during the call beyond the inputs
    total_peak_bytes: int | None = None  # including the inputs
    flops: float | None = None
    min_bytes: float | None = None
    check_error: float | None = None  # vs the method's own definition, float64
    fidelity_rel_l2: float | None = None  # vs exact attention
    fidelity_max_abs: float | None = None
    throttled: bool | None = None
    device_index: int | None = None
    device_state: dict = field(default_factory=dict)
    started_at: datetime = field(default_factory=utcnow)
    finished_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @property
    def tflops(self) -> float | None:
        if self.timing is None or not self.flops:
            return None
        return self.flops / (self.timing.median_ms * 1e-3) / 1e12

    @property
    def tbps(self) -> float | None:
        if self.timing is None or not self.min_bytes:
            return None
        return self.min_bytes / (self.timing.median_ms * 1e-3) / 1e12

    def as_dict(self) -> dict:
        data = asdict(self)
        data["case"] = self.case.as_dict()
        data["status"] = str(self.status)
        return data
