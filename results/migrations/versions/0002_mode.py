"""Schema version 2: measurements.mode, the pass timed (fwd, bwd or fwd_bwd); existing rows are fwd.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made before migrations by a tbench that already had the column is stamped at
    # 0001 and comes through here too: add the column only where it is missing.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("measurements")}
    if "mode" not in columns:
        with op.batch_alter_table("measurements") as batch:
            batch.add_column(sa.Column("mode", sa.String(length=16), nullable=False, server_default="fwd"))
    op.execute(sa.text("UPDATE tbench_meta SET value = '2' WHERE key = 'schema_version'"))


def downgrade() -> None:
    with op.batch_alter_table("measurements") as batch:
        batch.drop_column("mode")
    op.execute(sa.text("UPDATE tbench_meta SET value = '1' WHERE key = 'schema_version'"))
