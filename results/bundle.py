"""Bundles: runs (with their UUID and provenance) and their measurements, and quality runs and their
results, as one versioned JSON file.

A bundle moves results between stores (a GPU box to a laptop, CI artifacts to the leaderboard).
Version 2 added the quality runs; version 1 files (speed runs only) are read as before.
A file whose name ends in .gz is written gzip-compressed; gzip-compressed files are read as well.
Reading is defensive because bundles come from elsewhere: the size is capped before parsing,
duplicate JSON keys, duplicate run UUIDs and duplicate configurations are refused, and every field
is type-checked strictly. Importing is one transaction, and a run whose UUID the store already has
is skipped, so importing the same file twice changes nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from ..core.records import utcnow
from .models import Measurement, QualityResult, QualityRun, Run
from .store import Store, StoreError

BUNDLE_FORMAT = "tbench-bundle"
BUNDLE_VERSION = 2  # the version written; 2 added quality_runs
READABLE_VERSIONS = (1, 2)
MAX_BYTES = 256 * 2**20  # refuse bigger files before reading them: a bundle is never that large

# JSON has no datetime: these fields alone are parsed from ISO strings (everything else is strict).
Timestamp = Annotated[datetime, Field(strict=False)]


class BundleError(Exception):
    """A file that cannot be read as a bundle; one line for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class MeasurementModel(_Strict):
    config_key: str = Field(min_length=1, max_length=400)
    method: str = Field(min_length=1, max_length=128)
    family: str = Field(max_length=16)
    seq_len: int = Field(ge=0)
    order_m: int | None = None
    dims: str = Field(default="", max_length=128)
    batch: int = Field(ge=0)
    heads: int = Field(ge=0)
    kv_heads: int = Field(ge=0)
    head_dim: int = Field(ge=0)
    dtype: str = Field(max_length=8)
    causal: bool
    device: str = Field(max_length=16)
    device_index: int | None = None
    timing_mode: str = Field(max_length=16)
    # core.case.Mode; bundles from before modes timed the forward
    mode: str = Field(default="fwd", max_length=16, pattern=r"^(fwd|bwd|fwd_bwd)$")
    # core.case.Scope and TimingProtocol; bundles from before scopes timed the operator, tbench's way
    scope: str = Field(default="op", max_length=16, pattern=r"^(op|layer|model)$")
    model: str = Field(default="", max_length=64)
    layers: int = Field(default=0, ge=0)
    protocol: str = Field(default="tbench", max_length=16, pattern=r"^(tbench|paper)$")
    status: str = Field(min_length=1, max_length=16)
    message: str = ""
    provenance: str = ""
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    rse: float | None = None
    n_samples: int = Field(default=0, ge=0)
    samples_ms: list[float] | None = None
    peak_bytes: int | None = None
    total_peak_bytes: int | None = None
    flops: float | None = None
    min_bytes: float | None = None
    tflops: float | None = None
    tbps: float | None = None
    check_error: float | None = None
    fidelity_rel_l2: float | None = None
    fidelity_max_abs: float | None = None
    throttled: bool | None = None
    device_state: dict[str, Any] | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None


class ProvenanceModel(_Strict):
    """The columns that runs and quality runs share (a schema test keeps both tables equal)."""

    uuid: str = Field(min_length=1, max_length=36)
    status: str = Field(max_length=16)
    started_at: Timestamp
    finished_at: Timestamp | None = None
    command: str = ""
    host: str = Field(default="", max_length=255)
    device: str = Field(max_length=16)
    gpu_name: str | None = Field(default=None, max_length=255)
    gpu_count: int = Field(default=0, ge=0)
    driver: str | None = Field(default=None, max_length=64)
    cuda: str | None = Field(default=None, max_length=64)
    torch_version: str = Field(default="", max_length=64)
    triton_version: str | None = Field(default=None, max_length=64)
    python_version: str = Field(default="", max_length=64)
    platform: str = Field(default="", max_length=255)
    tbench_version: str = Field(default="", max_length=64)
    git_commit: str | None = Field(default=None, max_length=64)
    sweep: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, Any] = Field(default_factory=dict)


def _unique(keys: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"{what} '{key}' appears twice")
        seen.add(key)


class RunModel(ProvenanceModel):
    measurements: list[MeasurementModel] = Field(default_factory=list)

    @field_validator("measurements")
    @classmethod
    def _unique_configs(cls, value: list[MeasurementModel]) -> list[MeasurementModel]:
        _unique((m.config_key for m in value), "configuration")
        return value


class QualityResultModel(_Strict):
    config_key: str = Field(min_length=1, max_length=400)
    task: str = Field(min_length=1, max_length=16)
    method: str = Field(min_length=1, max_length=128)
    family: str = Field(max_length=16)
    order_m: int | None = None
    dims: str = Field(default="", max_length=128)
    seq_len: int = Field(ge=0)
    vocab: int = Field(ge=0)
    items: int = Field(ge=0)
    d_model: int = Field(ge=0)
    layers: int = Field(ge=0)
    heads: int = Field(ge=0)
    mlp: bool
    dtype: str = Field(max_length=8)
    device: str = Field(max_length=16)
    seed: int
    lr: float
    steps: int = Field(ge=0)
    batch: int = Field(ge=0)
    status: str = Field(min_length=1, max_length=16)
    message: str = ""
    provenance: str = ""
    accuracy: float | None = None
    scored: int = Field(default=0, ge=0)
    by_distance: dict[str, Any] | None = None
    final_loss: float | None = None
    train_seconds: float | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None


class QualityRunModel(ProvenanceModel):
    results: list[QualityResultModel] = Field(default_factory=list)

    @field_validator("results")
    @classmethod
    def _unique_configs(cls, value: list[QualityResultModel]) -> list[QualityResultModel]:
        _unique((r.config_key for r in value), "quality configuration")
        return value


class BundleModel(_Strict):
    format: Literal["tbench-bundle"]
    version: int
    created_at: Timestamp
    tbench_version: str = ""
    runs: list[RunModel]
    quality_runs: list[QualityRunModel] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> BundleModel:
        if self.version < 2 and self.quality_runs:
            raise ValueError(f"quality_runs need bundle version 2, this file says version {self.version}")
        _unique((r.uuid for r in self.runs), "run uuid")
        _unique((r.uuid for r in self.quality_runs), "quality run uuid")
        return self


_RUN_FIELDS = list(ProvenanceModel.model_fields)
_MEASUREMENT_FIELDS = list(MeasurementModel.model_fields)
_QUALITY_RESULT_FIELDS = list(QualityResultModel.model_fields)


# --- reading files ---------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            # json.loads would silently keep the last one; a doctored file could hide a field so.
            raise BundleError(f"key '{key}' appears twice in one object")
        data[key] = value
    return data


def _reject_constant(name: str) -> None:
    raise BundleError(f"'{name}' is not valid JSON")


def _gunzip(raw: bytes, path: Path, max_bytes: int) -> bytes:
    """The content of a gzip file, refused once it exceeds max_bytes (a small file can expand a lot)."""
    inflater = zlib.decompressobj(wbits=31)  # gzip header; one member, as write_json writes
    try:
        data = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as exc:
        raise BundleError(f"'{path}' is not valid gzip: {exc}") from None
    if len(data) > max_bytes:
        raise BundleError(f"'{path}' holds more than {max_bytes / 2**20:.0f} MiB once decompressed, more than "
                          "a tbench file may have")
    if not inflater.eof:
        raise BundleError(f"'{path}' is a truncated gzip file")
    if inflater.unused_data:
        raise BundleError(f"'{path}' has data after its gzip stream")
    return data


def read_json(path: str | Path, max_bytes: int = MAX_BYTES) -> Any:
    """A JSON file (gzip-compressed or not), size-checked before reading and strict about duplicate keys and NaN."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if not path.is_file():
            raise BundleError(f"'{path}' is not a file")
        if size > max_bytes:
            raise BundleError(f"'{path}' is {size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB "
                              "a tbench file may have")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise BundleError(f"file '{path}' does not exist") from None
    except OSError as exc:
        raise BundleError(f"cannot read '{path}': {exc.strerror}") from None
    if len(raw) > max_bytes:  # it grew while we looked
        raise BundleError(f"'{path}' is larger than {max_bytes / 2**20:.0f} MiB")
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw, path, max_bytes)
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except BundleError as exc:
        raise BundleError(f"'{path}' is malformed: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"'{path}' is not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError(f"'{path}' is nested too deeply") from None


def validation_message(exc: ValidationError) -> str:
    """The first problem of a pydantic error, as 'field.path: message'."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "top level"
    return f"{where}: {first['msg']} ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''})"


def parse_bundle(data: Any, source: str) -> BundleModel:
    if not isinstance(data, dict):
        raise BundleError(f"'{source}' is not a tbench bundle (the top level is not an object)")
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"'{source}' is not a tbench bundle (format is {data.get('format')!r})")
    version = data.get("version")
    # bool is an int to Python: `true` must not pass as version 1
    if type(version) is not int or version not in READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise BundleError(f"'{source}' has bundle version {version!r}; this tbench reads versions {readable}")
    try:
        return BundleModel.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"'{source}' is not a valid bundle: {validation_message(exc)}") from None


def read_bundle(path: str | Path, max_bytes: int = MAX_BYTES) -> BundleModel:
    return parse_bundle(read_json(path, max_bytes), str(path))


# --- export ----------------------------------------------------------------------------------------


def _run_model(run: Run) -> RunModel:
    data = {f: getattr(run, f) for f in _RUN_FIELDS}
    data["sweep"], data["environment"] = run.sweep or {}, run.environment or {}
    data["measurements"] = [MeasurementModel(**{f: getattr(m, f) for f in _MEASUREMENT_FIELDS})
                            for m in run.measurements]
    return RunModel.model_validate(data)


def _quality_run_model(run: QualityRun) -> QualityRunModel:
    data = {f: getattr(run, f) for f in _RUN_FIELDS}
    data["sweep"], data["environment"] = run.sweep or {}, run.environment or {}
    data["results"] = [QualityResultModel(**{f: getattr(r, f) for f in _QUALITY_RESULT_FIELDS})
                       for r in run.results]
    return QualityRunModel.model_validate(data)


def export_bundle(store: Store, run_ids: Iterable[int], quality_run_ids: Iterable[int] = ()) -> BundleModel:
    """The runs and quality runs in the order given (imported into an empty store, they get ids 1, 2, ...
    in that order)."""
    from .. import __version__

    runs, quality_runs = [], []
    with store.session() as session:
        for run_id in dict.fromkeys(run_ids):
            run = session.get(Run, run_id)
            if run is None:
                raise StoreError(f"run {run_id} does not exist in '{store.url}'")
            runs.append(_run_model(run))
        for run_id in dict.fromkeys(quality_run_ids):
            quality_run = session.get(QualityRun, run_id)
            if quality_run is None:
                raise StoreError(f"quality run {run_id} does not exist in '{store.url}'")
            quality_runs.append(_quality_run_model(quality_run))
    return BundleModel(format=BUNDLE_FORMAT, version=BUNDLE_VERSION, created_at=utcnow(),
                       tbench_version=__version__, runs=runs, quality_runs=quality_runs)


def write_json(data: Any, path: str | Path) -> None:
    """Writes through a temporary file, so a crash never leaves half a file under the final name.

    A name ending in .gz gives a gzip file (without a timestamp, so the same data gives the same bytes).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        raw = (json.dumps(data, indent=1, allow_nan=False) + "\n").encode()
        with open(tmp, "wb") as f:
            f.write(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"cannot write '{path}': {exc.strerror}") from None
    except ValueError as exc:  # NaN or infinity somewhere
        tmp.unlink(missing_ok=True)
        raise BundleError(f"cannot write '{path}': {exc}") from None


def write_bundle(bundle: BundleModel, path: str | Path) -> None:
    write_json(bundle.model_dump(mode="json"), path)


# --- import ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportResult:
    imported: list[tuple[str, int]]  # (uuid, new run id)
    skipped: list[str]  # uuids the store already had
    quality_imported: list[tuple[str, int]] = field(default_factory=list)  # (uuid, new quality run id)
    quality_skipped: list[str] = field(default_factory=list)


def import_runs(store: Store, runs: list[RunModel], quality_runs: list[QualityRunModel] | None = None) -> ImportResult:
    """All runs and quality runs in one transaction: either every new one lands, or none does.
    Each lands in the order given, so an empty store gives them the ids 1, 2, ... they had when exported
    whole."""
    quality_runs = quality_runs or []
    imported: list[tuple[str, Run]] = []
    skipped: list[str] = []
    quality_imported: list[tuple[str, QualityRun]] = []
    quality_skipped: list[str] = []
    try:
        with store.session() as session, session.begin():
            existing = set(session.scalars(select(Run.uuid).where(Run.uuid.in_([r.uuid for r in runs]))))
            for model in runs:
                if model.uuid in existing:
                    skipped.append(model.uuid)
                    continue
                # ORM objects: every value is a bound parameter, so text that looks like SQL stays text.
                run = Run(**{f: getattr(model, f) for f in _RUN_FIELDS})
                run.measurements = [Measurement(**m.model_dump()) for m in model.measurements]
                session.add(run)
                imported.append((model.uuid, run))
            existing = set(session.scalars(select(QualityRun.uuid).where(
                QualityRun.uuid.in_([r.uuid for r in quality_runs]))))
            for quality_model in quality_runs:
                if quality_model.uuid in existing:
                    quality_skipped.append(quality_model.uuid)
                    continue
                quality_run = QualityRun(**{f: getattr(quality_model, f) for f in _RUN_FIELDS})
                quality_run.results = [QualityResult(**r.model_dump()) for r in quality_model.results]
                session.add(quality_run)
                quality_imported.append((quality_model.uuid, quality_run))
            # New rows are inserted in the order they were added, so ids follow the bundle's order.
            session.flush()
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0]
        raise StoreError(f"import into '{store.url}' failed, nothing was imported: {reason}") from None
    return ImportResult([(uuid, run.id) for uuid, run in imported], skipped,
                        [(uuid, run.id) for uuid, run in quality_imported], quality_skipped)
