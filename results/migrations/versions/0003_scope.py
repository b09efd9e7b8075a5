"""Schema version 3: measurements.scope (op, layer or model), model (the shape preset), layers and
protocol (tbench or paper); existing rows timed the operator alone with tbench's sampling.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (
    ("scope", sa.String(length=16), "op"),
    ("model", sa.String(length=64), ""),
    ("layers", sa.Integer(), "0"),
    ("protocol", sa.String(length=16), "tbench"),
)


def upgrade() -> None:
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("measurements")}
    with op.batch_alter_table("measurements") as batch:
        for name, kind, default in COLUMNS:
            if name not in existing:
                batch.add_column(sa.Column(name, kind, nullable=False, server_default=default))
    op.execute(sa.text("UPDATE tbench_meta SET value = '3' WHERE key = 'schema_version'"))


def downgrade() -> None:
    with op.batch_alter_table("measurements") as batch:
        for name, _kind, _default in reversed(COLUMNS):
            batch.drop_column(name)
    op.execute(sa.text("UPDATE tbench_meta SET value = '2' WHERE key = 'schema_version'"))
