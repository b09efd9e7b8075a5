"""Running a quality plan: one model per configuration, each result stored as soon as it is scored,
and a configuration that fails (out of memory, a kernel error) stored as such without stopping the rest."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.records import RunInfo, utcnow
from ..methods.registry import Registry
from ..results.quality import QualityRecord, finish_quality_run, record_quality, start_quality_run
from ..results.store import Store
from .model import AttentionSpec, ModelSpec
from .plan import Configuration, QualityPlan
from .tasks import TaskSpec
from .train import TrainSpec, train


@dataclass(frozen=True)
class QualityOutcome:
    run_id: int
    status: str
    counts: dict[str, int]
    seconds: float


def _record(plan: QualityPlan, config: Configuration, registry: Registry, status: str, **values: object
            ) -> QualityRecord:
    s = plan.settings
    method = registry.get(config.method)
    return QualityRecord(
        config_key=config.key, task=str(s.task), method=config.method, family=str(method.family),
        order_m=config.order, dims="x".join(map(str, config.dims)) if config.dims else "", seq_len=config.seq_len,
        vocab=s.vocab, items=s.items, d_model=s.d_model, layers=s.layers, heads=s.heads, mlp=s.mlp,
        dtype=str(s.dtype), device=s.device, seed=config.seed, lr=config.lr, steps=s.steps,
        batch=s.batch(config.seq_len), status=status, **values)  # type: ignore[arg-type]


def train_configuration(plan: QualityPlan, config: Configuration, registry: Registry) -> QualityRecord:
    s = plan.settings
    method = registry.get(config.method)
    attention = AttentionSpec(method, s.device, s.dtype, config.order)
    model = ModelSpec(s.vocab, config.seq_len, s.d_model, s.layers, s.heads, s.mlp)
    task = TaskSpec(s.task, config.seq_len, s.vocab, s.items)
    spec = TrainSpec(steps=s.steps, batch=s.batch(config.seq_len), lr=config.lr, seed=config.seed,
                     eval_sequences=s.eval_sequences)
    started = utcnow()
    provenance = method.provenance(attention.case(model, spec.batch))
    try:
        result = train(task, model, attention, spec)
    except torch.cuda.OutOfMemoryError as exc:
        return _record(plan, config, registry, "oom", message=str(exc).splitlines()[0], provenance=provenance,
                       started_at=started)
    except Exception as exc:  # one configuration's failure must not end the others
        return _record(plan, config, registry, "error", message=f"{type(exc).__name__}: {exc}".splitlines()[0],
                       provenance=provenance, started_at=started)
    finally:
        if s.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return _record(plan, config, registry, "ok", provenance=provenance, accuracy=result.score.accuracy,
                   scored=result.score.total, by_distance=result.score.buckets(), final_loss=result.final_loss,
                   train_seconds=result.seconds, started_at=started)


def run_quality(plan: QualityPlan, registry: Registry, store: Store, info: RunInfo,
                on_result: Callable[[int, QualityRecord], None] | None = None) -> QualityOutcome:
    started = time.monotonic()
    run_id = start_quality_run(store, info)
    counts: Counter[str] = Counter()
    try:
        for i, config in enumerate(plan.configurations):
            rec = train_configuration(plan, config, registry)
            record_quality(store, run_id, rec)
            counts[rec.status] += 1
            if on_result is not None:
                on_result(i, rec)
    except KeyboardInterrupt:
        finish_quality_run(store, run_id, "interrupted")
        raise
    status = "finished" if counts.get("ok", 0) == len(plan.configurations) else "finished with failures"
    finish_quality_run(store, run_id, "finished" if status == "finished" else "failed")
    return QualityOutcome(run_id, status, dict(counts), time.monotonic() - started)
