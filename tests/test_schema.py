"""One schema: the bundle models, the store's row mapping and the baseline model agree with the ORM
model column by column, so a column added in one place and forgotten in another fails here."""

from __future__ import annotations

import types
import typing
from dataclasses import fields

import pytest
from pydantic import Field, create_model
from sqlalchemy import String

from tbench.analysis.baselines import BaselineConfig
from tbench.core.case import Case, DType, Family, Status, TimingMode
from tbench.core.records import MeasurementRecord, Timing
from tbench.results.bundle import MeasurementModel, QualityResultModel, QualityRunModel, RunModel
from tbench.results.models import Measurement, QualityResult, QualityRun, Run
from tbench.results.store import _to_row

SURROGATE = {"id", "run_id", "quality_run_id"}  # database keys: a bundle carries runs by UUID instead


def _columns(model: type) -> dict:
    return {c.name: c for c in model.__table__.columns if c.name not in SURROGATE}


def _optional(annotation: object) -> bool:
    return isinstance(annotation, types.UnionType | typing._UnionGenericAlias) and type(None) in typing.get_args(
        annotation)


def _max_length(field: object) -> int | None:
    for item in field.metadata:  # type: ignore[attr-defined]
        if getattr(item, "max_length", None) is not None:
            return item.max_length
    return None


def _agree(pydantic_model: type, orm_model: type, skip: set[str] = frozenset()) -> None:
    columns = _columns(orm_model)
    bundle_fields = {k: v for k, v in pydantic_model.model_fields.items() if k not in skip}
    assert set(bundle_fields) == set(columns), (
        f"{pydantic_model.__name__} vs {orm_model.__name__}: only in bundle "
        f"{sorted(set(bundle_fields) - set(columns))}, only in table {sorted(set(columns) - set(bundle_fields))}")
    for name, field in bundle_fields.items():
        column = columns[name]
        if column.nullable and column.default is None:
            assert _optional(field.annotation), f"{name}: nullable in the table, required in the bundle"
        if isinstance(column.type, String) and column.type.length:
            assert _max_length(field) == column.type.length, f"{name}: bundle and table lengths differ"


def test_bundle_measurement_model_agrees_with_the_table():
    _agree(MeasurementModel, Measurement)


def test_bundle_run_model_agrees_with_the_table():
    _agree(RunModel, Run, skip={"measurements"})


def test_bundle_quality_result_model_agrees_with_the_table():
    _agree(QualityResultModel, QualityResult)


def test_bundle_quality_run_model_agrees_with_the_table():
    _agree(QualityRunModel, QualityRun, skip={"results"})


def _without(model: type, name: str) -> type:
    """The pydantic model with one field dropped, as a forgotten field would leave it."""
    kept = {k: (f.annotation, f) for k, f in model.model_fields.items() if k != name}
    return create_model(f"{model.__name__}Without_{name}", **kept)


def _with_length(model: type, name: str, length: int) -> type:
    """The pydantic model with one string field's max_length changed."""
    kept = {k: (f.annotation, f) for k, f in model.model_fields.items() if k != name}
    kept[name] = (str, Field(max_length=length))
    return create_model(f"{model.__name__}Len_{name}", **kept)


@pytest.mark.parametrize(("model", "table", "skip", "dropped"), [
    (MeasurementModel, Measurement, frozenset(), "median_ms"),
    (RunModel, Run, {"measurements"}, "git_commit"),
    (QualityResultModel, QualityResult, frozenset(), "accuracy"),
    (QualityResultModel, QualityResult, frozenset(), "by_distance"),
    (QualityRunModel, QualityRun, {"results"}, "sweep"),
])
def test_the_schema_check_fails_on_a_dropped_field(model, table, skip, dropped):
    with pytest.raises(AssertionError, match=rf"only in table \['{dropped}'\]"):
        _agree(_without(model, dropped), table, skip)


def test_the_schema_check_fails_on_a_wrong_length_or_a_required_nullable():
    with pytest.raises(AssertionError, match="task: bundle and table lengths differ"):
        _agree(_with_length(QualityResultModel, "task", 17), QualityResult)
    kept = {k: (f.annotation, f) for k, f in QualityResultModel.model_fields.items() if k != "accuracy"}
    required = create_model("RequiredAccuracy", accuracy=(float, ...), **kept)
    with pytest.raises(AssertionError, match="accuracy: nullable in the table, required in the bundle"):
        _agree(required, QualityResult)


def test_baseline_config_fields_are_table_columns():
    columns = _columns(Measurement)
    missing = set(BaselineConfig.model_fields) - set(columns)
    assert not missing, f"baseline fields that are no measurement column: {sorted(missing)}"


def test_row_mapping_fills_every_column():
    case = Case(method="m", family="tensorized", seq_len=100, batch=1, heads=2, kv_heads=1, head_dim=8,
                dtype="bf16", causal=True, device="cuda:0", order=2, dims=(10, 10), timing="graph")
    record = MeasurementRecord(
        case=case, status="ok", message="x", provenance="p",
        timing=Timing(median_ms=1.0, p20_ms=0.9, p80_ms=1.1, mean_ms=1.0, std_ms=0.1, min_ms=0.8,
                      samples_ms=[1.0, 0.9, 1.1], rse=0.01),
        peak_bytes=1, total_peak_bytes=2, flops=3.0, min_bytes=4.0, check_error=1e-3, fidelity_rel_l2=0.5,
        fidelity_max_abs=0.7, throttled=False, device_index=0, device_state={"sm_mhz": 1980})
    row = _to_row(7, record)
    empty = [name for name in _columns(Measurement) if getattr(row, name) is None]
    assert not empty, f"columns the store never fills: {empty}"
    # Stored as plain text, whatever enum type the record holds.
    assert {type(row.family), type(row.dtype), type(row.timing_mode), type(row.status)} == {str}


def test_every_enum_value_fits_its_column():
    columns = _columns(Measurement)
    for column, enum in (("family", Family), ("dtype", DType), ("timing_mode", TimingMode), ("status", Status)):
        length = columns[column].type.length
        too_long = [e.value for e in enum if len(e.value) > length]
        assert not too_long, f"{column} values longer than {length}: {too_long}"


def test_record_fields_are_all_stored():
    stored = set(_columns(Measurement)) | {"case", "timing"}
    derived = {"tflops", "tbps"}  # properties, stored too
    missing = {f.name for f in fields(MeasurementRecord)} - stored - derived
    assert not missing, f"record fields the store drops: {sorted(missing)}"


def test_quality_runs_keep_the_provenance_columns_of_runs():
    from tbench.results.models import QualityRun

    runs = {name: (type(c.type), getattr(c.type, "length", None), c.nullable) for name, c in _columns(Run).items()}
    quality = {name: (type(c.type), getattr(c.type, "length", None), c.nullable)
               for name, c in _columns(QualityRun).items()}
    assert quality == runs


def test_quality_record_fills_every_result_column():
    from tbench.results.models import QualityResult
    from tbench.results.quality import QualityRecord

    columns = {c.name for c in QualityResult.__table__.columns} - {"id", "quality_run_id"}
    assert {f.name for f in fields(QualityRecord)} == columns
