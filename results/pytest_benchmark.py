"""pytest-benchmark's JSON layout, both ways, so its tooling (`pytest-benchmark compare`,
github-action-benchmark) reads tbench results and tbench reads theirs.

pytest-benchmark keeps times in seconds; tbench stores milliseconds. One tbench run is one
pytest-benchmark session file. The full tbench configuration travels in `params` and `extra_info`,
so a tbench file comes back exactly; a foreign file becomes one measurement per benchmark with the
benchmark's name as the method.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import statistics
import uuid as uuidlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.records import utcnow
from .bundle import MeasurementModel, RunModel, validation_message
from .models import Run
from .store import Store, StoreError

KEY_FIELDS = ["seq_len", "order_m", "dims", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal",
              "timing_mode"]
PROVENANCE_FIELDS = ["uuid", "command", "host", "device", "gpu_name", "gpu_count", "driver", "cuda",
                     "torch_version", "triton_version", "python_version", "platform", "tbench_version",
                     "git_commit"]
# A fixed namespace: the same foreign file always gets the same run UUID, so importing it twice is a no-op.
_NAMESPACE = uuidlib.UUID("6f1b7c1e-3d0a-4e57-9a55-2b8f3f0c9e41")


class PytestBenchmarkError(Exception):
    """A file that is not pytest-benchmark JSON; one line for the user."""


# --- export ----------------------------------------------------------------------------------------


def _stats_seconds(samples_ms: list[float], median_ms: float) -> dict[str, Any]:
    data = sorted(x / 1e3 for x in samples_ms) or [median_ms / 1e3]
    n = len(data)
    q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive") if n > 1 else (data[0],) * 3
    iqr = q3 - q1
    mean = statistics.fmean(data)
    stddev = statistics.stdev(data) if n > 1 else 0.0
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    iqr_outliers = sum(1 for x in data if x < low or x > high)
    stddev_outliers = sum(1 for x in data if abs(x - mean) > stddev) if stddev else 0
    return {
        "min": data[0], "max": data[-1], "mean": mean, "stddev": stddev, "rounds": n,
        "median": median_ms / 1e3, "iqr": iqr, "q1": q1, "q3": q3, "iqr_outliers": iqr_outliers,
        "stddev_outliers": stddev_outliers, "outliers": f"{stddev_outliers};{iqr_outliers}",
        "ld15iqr": min((x for x in data if x >= low), default=data[0]),
        "hd15iqr": max((x for x in data if x <= high), default=data[-1]),
        "ops": 1 / mean, "total": sum(data), "iterations": 1,
        "data": [x / 1e3 for x in samples_ms],
    }


def export_pytest_benchmark(store: Store, run_id: int) -> dict[str, Any]:
    """One run in pytest-benchmark's layout; only measurements with a timing become benchmarks."""
    with store.session() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise StoreError(f"run {run_id} does not exist in '{store.url}'")
        measurements = list(run.measurements)
        provenance = {f: getattr(run, f) for f in PROVENANCE_FIELDS}
    benchmarks = []
    for m in measurements:
        if m.status != "ok" or m.median_ms is None:
            continue
        param = m.config_key.split("|", 1)[1] if "|" in m.config_key else m.config_key
        name = f"{m.method}[{param}]"
        benchmarks.append({
            "group": m.method, "name": name, "fullname": f"tbench::{name}",
            "params": {**{f: getattr(m, f) for f in KEY_FIELDS}, "mode": m.mode}, "param": param,
            "extra_info": {"tbench": {"config_key": m.config_key, "method": m.method, "family": m.family,
                                      "device": m.device, "median_ms": m.median_ms, "tflops": m.tflops,
                                      "peak_bytes": m.peak_bytes}},
            "options": {"disable_gc": False, "timer": "tbench", "min_rounds": len(m.samples_ms or []),
                        "max_time": 0, "min_time": 0, "warmup": True},
            "stats": _stats_seconds(list(m.samples_ms or []), m.median_ms),
        })
    commit = provenance["git_commit"] or ""
    return {
        "machine_info": {"node": provenance["host"], "processor": provenance["platform"],
                         "machine": provenance["device"], "python_implementation": "CPython",
                         "python_version": provenance["python_version"], "system": provenance["platform"],
                         "cpu": {}, "gpu": provenance["gpu_name"], "tbench": provenance},
        "commit_info": {"id": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty"),
                        "project": "tbench", "branch": None},
        "benchmarks": benchmarks,
        "datetime": utcnow().isoformat(),
        "version": "5.1.0",
    }


# --- import ----------------------------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")  # pytest-benchmark writes many fields we do not need


class _Stats(_Loose):
    min: float
    max: float
    mean: float
    median: float
    rounds: int = Field(ge=0)
    stddev: float = 0.0
    data: list[float] | None = None


class _Benchmark(_Loose):
    name: str = Field(min_length=1, max_length=128)
    fullname: str = Field(default="", max_length=400)
    params: dict[str, Any] | None = None
    extra_info: dict[str, Any] = Field(default_factory=dict)
    stats: _Stats


class _Session(_Loose):
    machine_info: dict[str, Any]
    commit_info: dict[str, Any] = Field(default_factory=dict)
    benchmarks: list[_Benchmark]
    # named like pytest-benchmark's key; the module alias keeps the type name unshadowed
    datetime: dt.datetime | None = None
    version: str = ""


def looks_like_pytest_benchmark(data: Any) -> bool:
    return isinstance(data, dict) and "benchmarks" in data and "machine_info" in data


def _measurement(bench: _Benchmark) -> MeasurementModel:
    ms = [x * 1e3 for x in bench.stats.data] if bench.stats.data else []
    median_ms = bench.stats.median * 1e3
    timing = {"median_ms": median_ms, "mean_ms": bench.stats.mean * 1e3, "min_ms": bench.stats.min * 1e3,
              "std_ms": bench.stats.stddev * 1e3, "samples_ms": ms or None, "n_samples": len(ms)}
    info = bench.extra_info.get("tbench")
    params = bench.params or {}
    if isinstance(info, dict) and all(f in params for f in KEY_FIELDS):
        # A tbench export: the configuration comes back whole.
        return MeasurementModel.model_validate({
            "config_key": info.get("config_key"), "method": info.get("method"), "family": info.get("family"),
            "device": info.get("device"), **{f: params[f] for f in KEY_FIELDS},
            "mode": params.get("mode", "fwd"), "status": "ok",
            "provenance": "imported from pytest-benchmark JSON", **timing})
    return MeasurementModel.model_validate({
        "config_key": (bench.fullname or bench.name)[:400], "method": bench.name, "family": "exact",
        "seq_len": 0, "batch": 0, "heads": 0, "kv_heads": 0, "head_dim": 0, "dtype": "", "causal": False,
        "device": "cpu", "timing_mode": "wallclock", "status": "ok",
        "provenance": "imported from pytest-benchmark JSON", **timing})


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def parse_pytest_benchmark(data: Any, source: str) -> RunModel:
    """A pytest-benchmark session file as one run. Without a tbench UUID in the file, the run's UUID is
    derived from the content, so the same file always maps to the same run."""
    try:
        session = _Session.model_validate(data)
        measurements = [_measurement(b) for b in session.benchmarks]
        keys = [m.config_key for m in measurements]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise PytestBenchmarkError(f"'{source}': benchmark '{dup}' appears twice")
        prov = session.machine_info.get("tbench")
        prov = dict(prov) if isinstance(prov, dict) else {}
        run_uuid = prov.get("uuid") or str(uuidlib.uuid5(_NAMESPACE, _digest(data)))
        info = session.machine_info
        commit = session.commit_info.get("id") or None
        if commit and session.commit_info.get("dirty"):
            commit += "-dirty"
        started = session.datetime.replace(tzinfo=None) if session.datetime else utcnow()
        run = {
            "command": f"imported from {source}", "host": str(info.get("node", ""))[:255],
            "device": "cpu", "python_version": str(info.get("python_version", ""))[:64],
            "platform": str(info.get("system", ""))[:255], "git_commit": commit[:64] if commit else None,
            **{k: v for k, v in prov.items() if k in PROVENANCE_FIELDS},
            "uuid": run_uuid, "status": "finished", "started_at": started, "finished_at": started,
            "environment": {"imported_from": "pytest-benchmark", "pytest_benchmark_version": session.version},
            "measurements": measurements,
        }
        return RunModel.model_validate(run)
    except ValidationError as exc:
        raise PytestBenchmarkError(f"'{source}' is not valid pytest-benchmark JSON: {validation_message(exc)}") \
            from None
