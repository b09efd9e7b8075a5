"""The store's schema: runs (with provenance) and their measurements. SQLAlchemy 2.0 typed ORM."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Bump when the schema changes; an older tbench refuses to open a newer database.
SCHEMA_VERSION = 4  # 3: the scope axis; 4: the quality tables


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "tbench_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class RunProvenance:
    """The columns a run of either kind keeps about where and how it ran (speed runs in `runs`,
    quality runs in `quality_runs`)."""

    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    command: Mapped[str] = mapped_column(Text, default="")
    host: Mapped[str] = mapped_column(String(255), default="")
    device: Mapped[str] = mapped_column(String(16))
    gpu_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    gpu_count: Mapped[int] = mapped_column(Integer, default=0)
    driver: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cuda: Mapped[str | None] = mapped_column(String(64), nullable=True)
    torch_version: Mapped[str] = mapped_column(String(64), default="")
    triton_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    python_version: Mapped[str] = mapped_column(String(64), default="")
    platform: Mapped[str] = mapped_column(String(255), default="")
    tbench_version: Mapped[str] = mapped_column(String(64), default="")
    git_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    environment: Mapped[dict] = mapped_column(JSON, default=dict)  # measured peaks, CPU, clocks


class Run(RunProvenance, Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep: Mapped[dict] = mapped_column(JSON, default=dict)  # the sweep as asked, for resume

    measurements: Mapped[list[Measurement]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="Measurement.id"
    )


class Measurement(Base):
    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint("run_id", "config_key", name="uq_measurement_config"),
        Index("ix_measurement_shape", "method", "seq_len", "dtype", "causal"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    config_key: Mapped[str] = mapped_column(String(400))

    method: Mapped[str] = mapped_column(String(128))
    family: Mapped[str] = mapped_column(String(16))
    seq_len: Mapped[int] = mapped_column(Integer)
    order_m: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dims: Mapped[str] = mapped_column(String(128), default="")
    batch: Mapped[int] = mapped_column(Integer)
    heads: Mapped[int] = mapped_column(Integer)
    kv_heads: Mapped[int] = mapped_column(Integer)
    head_dim: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(8))
    causal: Mapped[bool] = mapped_column(Boolean)
    device: Mapped[str] = mapped_column(String(16))
    device_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timing_mode: Mapped[str] = mapped_column(String(16), default="events")
    # The pass timed (core.case.Mode): fwd, bwd or fwd_bwd; rows from before modes are fwd.
    mode: Mapped[str] = mapped_column(String(16), default="fwd", server_default="fwd")
    # What was timed around the attention (core.case.Scope): op, layer or model; rows from before
    # scopes are op. Layer and model rows name their model shape preset and the layers timed.
    scope: Mapped[str] = mapped_column(String(16), default="op", server_default="op")
    model: Mapped[str] = mapped_column(String(64), default="", server_default="")
    layers: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # How samples were taken (core.case.TimingProtocol): tbench or paper.
    protocol: Mapped[str] = mapped_column(String(16), default="tbench", server_default="tbench")

    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    provenance: Mapped[str] = mapped_column(Text, default="")

    median_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p20_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p80_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    mean_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    std_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    min_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    rse: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_samples: Mapped[int] = mapped_column(Integer, default=0)
    samples_ms: Mapped[list | None] = mapped_column(JSON, nullable=True)

    peak_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    total_peak_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    flops: Mapped[float | None] = mapped_column(Float, nullable=True)
    min_bytes: Mapped[float | None] = mapped_column(Float, nullable=True)
    tflops: Mapped[float | None] = mapped_column(Float, nullable=True)
    tbps: Mapped[float | None] = mapped_column(Float, nullable=True)

    check_error: Mapped[float | None] = mapped_column(Float, nullable=True)
    fidelity_rel_l2: Mapped[float | None] = mapped_column(Float, nullable=True)
    fidelity_max_abs: Mapped[float | None] = mapped_column(Float, nullable=True)
    throttled: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    device_state: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    run: Mapped[Run] = relationship(back_populates="measurements")


# --- the quality track (tbench quality): trained models' accuracy on synthetic recall tasks ----------


class QualityRun(RunProvenance, Base):
    """One `tbench quality` invocation, with the provenance columns of `runs` (a schema test keeps
    them equal). Kept apart from `runs` so that speed commands (show, gate, resume) never meet a run
    without timings."""

    __tablename__ = "quality_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep: Mapped[dict] = mapped_column(JSON, default=dict)  # the quality sweep as asked

    results: Mapped[list[QualityResult]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="QualityResult.id"
    )


class QualityResult(Base):
    """One trained model: a method (and order) on a task at one length, one seed, one learning rate."""

    __tablename__ = "quality_results"
    __table_args__ = (
        UniqueConstraint("quality_run_id", "config_key", name="uq_quality_config"),
        Index("ix_quality_method", "task", "method", "seq_len"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    quality_run_id: Mapped[int] = mapped_column(ForeignKey("quality_runs.id", ondelete="CASCADE"), index=True)
    config_key: Mapped[str] = mapped_column(String(400))

    task: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(128))
    family: Mapped[str] = mapped_column(String(16))
    order_m: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dims: Mapped[str] = mapped_column(String(128), default="")
    seq_len: Mapped[int] = mapped_column(Integer)
    vocab: Mapped[int] = mapped_column(Integer)
    items: Mapped[int] = mapped_column(Integer)
    d_model: Mapped[int] = mapped_column(Integer)
    layers: Mapped[int] = mapped_column(Integer)
    heads: Mapped[int] = mapped_column(Integer)
    mlp: Mapped[bool] = mapped_column(Boolean)
    dtype: Mapped[str] = mapped_column(String(8))
    device: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(Integer)
    lr: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)

    status: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    provenance: Mapped[str] = mapped_column(Text, default="")

    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # on held-out scored positions
    scored: Mapped[int] = mapped_column(Integer, default=0)  # held-out positions scored
    # {"<bucket lower end>": {"correct": c, "total": t}}: accuracy by distance from query to recalled token
    by_distance: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    final_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)

    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    run: Mapped[QualityRun] = relationship(back_populates="results")
