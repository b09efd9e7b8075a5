"""Alembic's entry point. tbench passes an open connection (inside the store's transaction);
run by hand, e.g. to autogenerate a revision, it connects to `sqlalchemy.url` or $TBENCH_DB."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from tbench.results.models import Base
from tbench.results.url import DatabaseUrl


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(DatabaseUrl.resolve(context.config.get_main_option("sqlalchemy.url")).url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("tbench migrations run online only: pass a database, not --sql")
run_online()
