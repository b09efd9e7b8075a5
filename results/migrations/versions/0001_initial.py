"""The initial schema (schema version 1): tbench_meta, runs, measurements.

Revision ID: 0001
Revises: None
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = op.create_table(
        "tbench_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("gpu_name", sa.String(length=255), nullable=True),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("driver", sa.String(length=64), nullable=True),
        sa.Column("cuda", sa.String(length=64), nullable=True),
        sa.Column("torch_version", sa.String(length=64), nullable=False),
        sa.Column("triton_version", sa.String(length=64), nullable=True),
        sa.Column("python_version", sa.String(length=64), nullable=False),
        sa.Column("platform", sa.String(length=255), nullable=False),
        sa.Column("tbench_version", sa.String(length=64), nullable=False),
        sa.Column("git_commit", sa.String(length=64), nullable=True),
        sa.Column("sweep", sa.JSON(), nullable=False),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("uuid"),
    )
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("config_key", sa.String(length=400), nullable=False),
        sa.Column("method", sa.String(length=128), nullable=False),
        sa.Column("family", sa.String(length=16), nullable=False),
        sa.Column("seq_len", sa.Integer(), nullable=False),
        sa.Column("order_m", sa.Integer(), nullable=True),
        sa.Column("dims", sa.String(length=128), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("heads", sa.Integer(), nullable=False),
        sa.Column("kv_heads", sa.Integer(), nullable=False),
        sa.Column("head_dim", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=8), nullable=False),
        sa.Column("causal", sa.Boolean(), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("device_index", sa.Integer(), nullable=True),
        sa.Column("timing_mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("provenance", sa.Text(), nullable=False),
        sa.Column("median_ms", sa.Float(), nullable=True),
        sa.Column("p20_ms", sa.Float(), nullable=True),
        sa.Column("p80_ms", sa.Float(), nullable=True),
        sa.Column("mean_ms", sa.Float(), nullable=True),
        sa.Column("std_ms", sa.Float(), nullable=True),
        sa.Column("min_ms", sa.Float(), nullable=True),
        sa.Column("rse", sa.Float(), nullable=True),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("samples_ms", sa.JSON(), nullable=True),
        sa.Column("peak_bytes", sa.BigInteger(), nullable=True),
        sa.Column("total_peak_bytes", sa.BigInteger(), nullable=True),
        sa.Column("flops", sa.Float(), nullable=True),
        sa.Column("min_bytes", sa.Float(), nullable=True),
        sa.Column("tflops", sa.Float(), nullable=True),
        sa.Column("tbps", sa.Float(), nullable=True),
        sa.Column("check_error", sa.Float(), nullable=True),
        sa.Column("fidelity_rel_l2", sa.Float(), nullable=True),
        sa.Column("fidelity_max_abs", sa.Float(), nullable=True),
        sa.Column("throttled", sa.Boolean(), nullable=True),
        sa.Column("device_state", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "config_key", name="uq_measurement_config"),
    )
    op.create_index("ix_measurement_shape", "measurements", ["method", "seq_len", "dtype", "causal"])
    op.create_index("ix_measurements_run_id", "measurements", ["run_id"])
    # Older tbench versions (and this one) read the schema version from here, not from Alembic.
    op.bulk_insert(meta, [{"key": "schema_version", "value": "1"}])


def downgrade() -> None:
    op.drop_index("ix_measurements_run_id", table_name="measurements")
    op.drop_index("ix_measurement_shape", table_name="measurements")
    op.drop_table("measurements")
    op.drop_table("runs")
    op.drop_table("tbench_meta")
