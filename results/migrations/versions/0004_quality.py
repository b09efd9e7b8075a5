"""Schema version 4: the quality track's tables, quality_runs (provenance as in runs) and
quality_results (one trained model each). Touches no other table.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made before migrations by a tbench that already had these tables is stamped at
    # 0001 and comes through here too: create them only where they are missing.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "quality_runs" not in existing:
        op.create_table(
            "quality_runs",
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
    if "quality_results" not in existing:
        op.create_table(
            "quality_results",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("quality_run_id", sa.Integer(), nullable=False),
            sa.Column("config_key", sa.String(length=400), nullable=False),
            sa.Column("task", sa.String(length=16), nullable=False),
            sa.Column("method", sa.String(length=128), nullable=False),
            sa.Column("family", sa.String(length=16), nullable=False),
            sa.Column("order_m", sa.Integer(), nullable=True),
            sa.Column("dims", sa.String(length=128), nullable=False),
            sa.Column("seq_len", sa.Integer(), nullable=False),
            sa.Column("vocab", sa.Integer(), nullable=False),
            sa.Column("items", sa.Integer(), nullable=False),
            sa.Column("d_model", sa.Integer(), nullable=False),
            sa.Column("layers", sa.Integer(), nullable=False),
            sa.Column("heads", sa.Integer(), nullable=False),
            sa.Column("mlp", sa.Boolean(), nullable=False),
            sa.Column("dtype", sa.String(length=8), nullable=False),
            sa.Column("device", sa.String(length=16), nullable=False),
            sa.Column("seed", sa.Integer(), nullable=False),
            sa.Column("lr", sa.Float(), nullable=False),
            sa.Column("steps", sa.Integer(), nullable=False),
            sa.Column("batch", sa.Integer(), nullable=False),
            sa.Column("status", sa.String(length=16), nullable=False),
            sa.Column("message", sa.Text(), nullable=False),
            sa.Column("provenance", sa.Text(), nullable=False),
            sa.Column("accuracy", sa.Float(), nullable=True),
            sa.Column("scored", sa.Integer(), nullable=False),
            sa.Column("by_distance", sa.JSON(), nullable=True),
            sa.Column("final_loss", sa.Float(), nullable=True),
            sa.Column("train_seconds", sa.Float(), nullable=True),
            sa.Column("started_at", sa.DateTime(), nullable=True),
            sa.Column("finished_at", sa.DateTime(), nullable=True),
            sa.ForeignKeyConstraint(["quality_run_id"], ["quality_runs.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("quality_run_id", "config_key", name="uq_quality_config"),
        )
        op.create_index("ix_quality_method", "quality_results", ["task", "method", "seq_len"])
        op.create_index("ix_quality_results_quality_run_id", "quality_results", ["quality_run_id"])
    op.execute(sa.text("UPDATE tbench_meta SET value = '4' WHERE key = 'schema_version'"))


def downgrade() -> None:
    op.drop_index("ix_quality_results_quality_run_id", table_name="quality_results")
    op.drop_index("ix_quality_method", table_name="quality_results")
    op.drop_table("quality_results")
    op.drop_table("quality_runs")
    # the schema version of the revision below this one
    op.execute(sa.text("UPDATE tbench_meta SET value = '3' WHERE key = 'schema_version'"))
