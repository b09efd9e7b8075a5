"""One configuration of a quality plan trained and turned into a stored record: its accuracy, or why
there is none (out of memory, an error)."""

from __future__ import annotations

from datetime import datetime

import torch

from ..core.records import utcnow
from ..methods.registry import Registry
from ..results.quality import QualityRecord
from .model import AttentionSpec, ModelSpec
from .plan import Configuration, QualityPlan
from .tasks import TaskSpec
from .train import TrainSpec, train


def make_record(plan: QualityPlan, config: Configuration, registry: Registry, status: str, **values: object
                ) -> QualityRecord:
    s = plan.settings
    method = registry.get(config.method)
    return QualityRecord(
        config_key=config.key, task=str(s.task), method=config.method, family=str(method.family),
        order_m=config.order, dims="x".join(map(str, config.dims)) if config.dims else "", seq_len=config.seq_len,
        vocab=s.vocab, items=s.items, d_model=s.d_model, layers=s.layers, heads=s.heads, mlp=s.mlp,
        dtype=str(s.dtype), device=s.device, seed=config.seed, lr=config.lr, steps=s.steps,
        batch=s.batch(config.seq_len), status=status, **values)  # type: ignore[arg-type]


def _attention(plan: QualityPlan, config: Configuration, registry: Registry) -> tuple[AttentionSpec, ModelSpec]:
    s = plan.settings
    attention = AttentionSpec(registry.get(config.method), s.device, s.dtype, config.order)
    return attention, ModelSpec(s.vocab, config.seq_len, s.d_model, s.layers, s.heads, s.mlp)


def failed_record(plan: QualityPlan, config: Configuration, registry: Registry, message: str,
                  started_at: datetime) -> QualityRecord:
    """An `error` record for a configuration whose training never reported back (its process died)."""
    attention, model = _attention(plan, config, registry)
    try:
        provenance = attention.method.provenance(attention.case(model, plan.settings.batch(config.seq_len)))
    except Exception:  # the record of a death must be stored whatever the method's provenance does
        provenance = ""
    return make_record(plan, config, registry, "error", message=message, provenance=provenance,
                       started_at=started_at)


def train_configuration(plan: QualityPlan, config: Configuration, registry: Registry) -> QualityRecord:
    s = plan.settings
    attention, model = _attention(plan, config, registry)
    task = TaskSpec(s.task, config.seq_len, s.vocab, s.items)
    spec = TrainSpec(steps=s.steps, batch=s.batch(config.seq_len), lr=config.lr, seed=config.seed,
                     eval_sequences=s.eval_sequences)
    started = utcnow()
    case = attention.case(model, spec.batch)
    provenance = attention.method.provenance(case)
    reason = attention.method.unsupported_reason(case)
    if reason is not None:  # e.g. a method whose backward this build refuses: said, not raised mid-run
        return make_record(plan, config, registry, "unsupported", message=reason, provenance=provenance,
                           started_at=started)
    try:
        result = train(task, model, attention, spec)
    except torch.cuda.OutOfMemoryError as exc:
        return make_record(plan, config, registry, "oom", message=str(exc).splitlines()[0], provenance=provenance,
                           started_at=started)
    except Exception as exc:  # one configuration's failure must not end the others
        return make_record(plan, config, registry, "error", message=f"{type(exc).__name__}: {exc}".splitlines()[0],
                           provenance=provenance, started_at=started)
    finally:
        if s.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return make_record(plan, config, registry, "ok", provenance=provenance, accuracy=result.score.accuracy,
                       scored=result.score.total, by_distance=result.score.buckets(), final_loss=result.final_loss,
                       train_seconds=result.seconds, started_at=started)
