"""How close a measured time is to what the device allows: the roofline.

A configuration cannot run faster than its floor, max(minimum bytes / copy bandwidth, FLOPs / matmul
rate), with both ceilings measured on the device at the start of the run (`harness/peaks.py`), not
taken from a datasheet. The share of the roofline is floor / measured time; since the stored
TB/s and TFLOP/s are minimum bytes and FLOPs over the measured time, it is the larger of
TB/s / copy bandwidth and TFLOP/s / matmul rate, and that larger term names the floor that binds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import pandas as pd

from ..core.case import TIMED_STATUSES


class Bound(StrEnum):
    BYTES = "bytes"  # moving the minimum bytes at the copy bandwidth takes longer
    FLOPS = "flops"  # the FLOPs at the matmul rate take longer


@dataclass(frozen=True)
class Roofline:
    share: float  # floor / measured time: 1 is as fast as the device allows
    bound: Bound


def _matmul_class(dtype: str) -> str:
    """The matmul peak that applies to a dtype: bf16 and fp16 run at one tensor-core rate."""
    return "16-bit" if dtype in ("bf16", "fp16") else dtype


def roofline(tflops: object, tbps: object, dtype: str, peaks: dict | None) -> Roofline | None:
    """The share of the roofline of one measurement, or None where it cannot be known: no peaks
    measured, no FLOPs or bytes, or a dtype whose matmul rate was not measured (the run measures
    bf16 on a GPU and fp32 on a CPU; fp32 attention on a GPU runs at another rate)."""
    if not peaks or not peaks.get("copy_tbps") or not peaks.get("matmul_tflops"):
        return None
    if any(v is None or pd.isna(v) or float(v) <= 0 for v in (tflops, tbps)):  # type: ignore[arg-type]
        return None
    if _matmul_class(dtype) != _matmul_class(str(peaks.get("matmul_dtype", ""))):
        return None
    by_bytes = float(tbps) / float(peaks["copy_tbps"])  # type: ignore[arg-type]
    by_flops = float(tflops) / float(peaks["matmul_tflops"])  # type: ignore[arg-type]
    return Roofline(by_bytes, Bound.BYTES) if by_bytes >= by_flops else Roofline(by_flops, Bound.FLOPS)


def with_roofline(df: pd.DataFrame, peaks_by_run: dict[int, dict]) -> pd.DataFrame:
    """Adds `roofline` (share of the floor, NaN where unknown) and `bound` ('bytes', 'flops' or '')
    to measurement rows with run_id, status, dtype, tflops and tbps; only timed rows get one."""
    shares, bounds = [], []
    for row in df[["run_id", "status", "dtype", "tflops", "tbps"]].itertuples(index=False):
        found = (roofline(row.tflops, row.tbps, str(row.dtype), peaks_by_run.get(int(row.run_id)))
                 if row.status in TIMED_STATUSES else None)
        shares.append(found.share if found else float("nan"))
        bounds.append(str(found.bound) if found else "")
    return df.assign(roofline=shares, bound=bounds)


def roofline_text(found: Roofline | None) -> str:
    """'63% flops': the share and the floor that binds; '-' where unknown."""
    if found is None:
        return "-"
    percent = 100 * found.share
    return f"{percent:.0f}% {found.bound}" if percent >= 10 else f"{percent:.2g}% {found.bound}"
