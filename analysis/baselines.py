"""Committed baselines (`results/baselines/<name>.json`) and turning any gate input into a gate Side.

A baseline file is one run reduced to what the gate needs (per configuration: key fields, status,
median and samples) plus the provenance that makes it trustworthy (GPU, driver, versions, commit,
command). It is small enough to commit and review in a pull request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.records import utcnow
from ..results.bundle import BundleError, RunModel, parse_bundle, read_json, validation_message, write_json
from ..results.store import Store
from .gate import ConfigResult, GateError, Side

BASELINE_FORMAT = "tbench-baseline"
BASELINE_VERSION = 1
DIR_ENV = "TBENCH_BASELINES_DIR"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

Timestamp = Annotated[datetime, Field(strict=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class BaselineConfig(_Strict):
    config_key: str = Field(min_length=1, max_length=400)
    method: str
    seq_len: int
    order_m: int | None
    dims: str
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    causal: bool
    timing_mode: str
    status: str
    message: str = ""
    median_ms: float | None
    samples_ms: list[float]


class BaselineProvenance(_Strict):
    run_uuid: str
    started_at: Timestamp
    command: str
    host: str
    device: str
    gpu_name: str | None
    gpu_count: int
    driver: str | None
    cuda: str | None
    torch_version: str
    triton_version: str | None
    python_version: str
    platform: str
    tbench_version: str
    git_commit: str | None


class BaselineFile(_Strict):
    format: Literal["tbench-baseline"]
    version: int
    name: str
    saved_at: Timestamp
    saved_by: str
    provenance: BaselineProvenance
    configurations: list[BaselineConfig]


def baselines_dir(override: str | Path | None = None) -> Path:
    """--baselines-dir, else $TBENCH_BASELINES_DIR, else results/baselines/ of this checkout."""
    if override:
        return Path(override)
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    # the committed baselines ship with the results room (package data of tbench.results)
    return Path(__file__).resolve().parent.parent / "results" / "baselines"


def check_name(name: str) -> str:
    # The name becomes a file name: no separators, no dot files, nothing a shell would mangle.
    if not _NAME.match(name):
        raise GateError(f"baseline name '{name}' is not allowed; use letters, digits, '.', '_' and '-'")
    return name


# --- from a run ------------------------------------------------------------------------------------


def _configs(measurements: Iterable[Any]) -> list[BaselineConfig]:
    return [BaselineConfig(
        config_key=m.config_key, method=m.method, seq_len=m.seq_len, order_m=m.order_m, dims=m.dims or "",
        batch=m.batch, heads=m.heads, kv_heads=m.kv_heads, head_dim=m.head_dim, dtype=m.dtype, causal=m.causal,
        timing_mode=m.timing_mode, status=m.status, message=m.message or "", median_ms=m.median_ms,
        # nanosecond resolution is all a timer gives; rounding keeps committed files reviewable
        samples_ms=[round(float(x), 6) for x in (m.samples_ms or [])],
    ) for m in measurements]


def baseline_from_run(run: RunModel, name: str, saved_by: str) -> BaselineFile:
    prov = BaselineProvenance(
        run_uuid=run.uuid, started_at=run.started_at, command=run.command, host=run.host, device=run.device,
        gpu_name=run.gpu_name, gpu_count=run.gpu_count, driver=run.driver, cuda=run.cuda,
        torch_version=run.torch_version, triton_version=run.triton_version, python_version=run.python_version,
        platform=run.platform, tbench_version=run.tbench_version, git_commit=run.git_commit)
    return BaselineFile(format=BASELINE_FORMAT, version=BASELINE_VERSION, name=name, saved_at=utcnow(),
                        saved_by=saved_by, provenance=prov, configurations=_configs(run.measurements))


def save_baseline(baseline: BaselineFile, directory: Path, force: bool = False) -> Path:
    if not directory.is_dir():
        raise GateError(f"baselines folder '{directory}' does not exist")
    path = directory / f"{check_name(baseline.name)}.json"
    if path.exists() and not force:
        raise GateError(f"baseline '{baseline.name}' exists ({path}); use --force to replace it")
    ok = sum(c.status == "ok" for c in baseline.configurations)
    if ok == 0:
        raise GateError("the run has no ok measurement; a baseline without timings cannot gate anything")
    write_json(baseline.model_dump(mode="json"), path)
    return path


def parse_baseline(data: Any, source: str) -> BaselineFile:
    if data.get("version") != BASELINE_VERSION:
        raise BundleError(f"'{source}' has baseline version {data.get('version')!r}; this tbench reads version "
                          f"{BASELINE_VERSION}")
    try:
        return BaselineFile.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"'{source}' is not a valid baseline: {validation_message(exc)}") from None


# --- gate inputs -----------------------------------------------------------------------------------


def _side_from_baseline(b: BaselineFile, label: str) -> Side:
    results = [ConfigResult(c.config_key, c.status, c.median_ms, tuple(c.samples_ms), c.method, c.seq_len,
                            c.message) for c in b.configurations]
    return Side.of(label, b.provenance.gpu_name, results, b.provenance.model_dump(mode="json"))


def _burst_starts(device_state: dict | None) -> tuple[int, ...]:
    """Where each burst of samples starts, as the runner recorded it (absent in older runs)."""
    starts = (device_state or {}).get("burst_starts")
    if not isinstance(starts, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in starts):
        return ()
    return tuple(starts)


def _side_from_run(run: RunModel, label: str) -> Side:
    results = [ConfigResult(m.config_key, m.status, m.median_ms, tuple(m.samples_ms or ()), m.method, m.seq_len,
                            m.message, _burst_starts(m.device_state)) for m in run.measurements]
    prov = run.model_dump(mode="json", exclude={"measurements", "sweep", "environment"})
    return Side.of(label, run.gpu_name, results, prov)


def _side_from_file(path: Path, label: str) -> Side:
    data = read_json(path)
    kind = data.get("format") if isinstance(data, dict) else None
    if kind == BASELINE_FORMAT:
        return _side_from_baseline(parse_baseline(data, str(path)), label)
    if kind == "tbench-bundle":
        bundle = parse_bundle(data, str(path))
        if len(bundle.runs) != 1:
            raise GateError(f"bundle '{path}' holds {len(bundle.runs)} runs; the gate needs one (export just one)")
        return _side_from_run(bundle.runs[0], label)
    raise BundleError(f"'{path}' is neither a tbench baseline nor a tbench bundle (format {kind!r})")


def run_as_model(store: Store, run_id: int | None) -> tuple[int, RunModel]:
    """A stored run (None: the latest) with its id, in the bundle's shape."""
    from ..results.bundle import export_bundle

    run = store.get_run(run_id)
    return run.id, export_bundle(store, [run.id]).runs[0]


def load_side(spec: str, db: str | None, directory: Path) -> Side:
    """A run id or 'latest' (in --db), a bundle or baseline file, or the name of a committed baseline."""
    if spec == "latest" or spec.isdigit():
        run_id, run = run_as_model(Store(db, readonly=True), None if spec == "latest" else int(spec))
        return _side_from_run(run, f"run {run_id}")
    path = Path(spec)
    if path.is_file():
        return _side_from_file(path, str(path))
    if _NAME.match(spec):
        named = directory / f"{spec}.json"
        if named.is_file():
            return _side_from_file(named, f"baseline {spec}")
    known = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
    raise GateError(f"'{spec}' is not a run id, 'latest', a file, or a baseline in {directory} "
                    f"(known: {', '.join(known) or 'none'})")
