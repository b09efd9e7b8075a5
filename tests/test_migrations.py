"""Alembic migrations: applied on open, explicit with `tbench db upgrade`, matching the models, and
run on SQLite and PostgreSQL alike; databases from before migrations are stamped, not re-made."""

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from backends import BACKENDS, execute, fresh_url, table_names
from conftest import run_cli
from pg import pg_server_url, pg_url  # noqa: F401  (fixtures)
from sqlalchemy import create_engine

from tbench.core.records import RunInfo
from tbench.results import migrate
from tbench.results.models import SCHEMA_VERSION, Base, Meta, Run
from tbench.results.store import Store, StoreError

TABLES = {"tbench_meta", "runs", "measurements", "alembic_version", "quality_runs", "quality_results"}


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    return fresh_url(request, tmp_path)


def schema_diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def test_open_applies_migrations_matching_the_models(url):
    Store(url).close()
    assert table_names(url) == TABLES
    assert {r[0] for r in execute(url, "SELECT version_num FROM alembic_version")} == migrate.head_revisions()
    assert execute(url, "SELECT value FROM tbench_meta") == [(str(SCHEMA_VERSION),)]
    # the hand-written migrations build exactly what the ORM models describe
    assert schema_diff(url) == []


def test_migrations_downgrade_and_upgrade(url):
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "base")
    assert table_names(url) == {"alembic_version"}
    with engine.begin() as conn:
        command.upgrade(migrate.alembic_config(conn), "head")
    engine.dispose()
    assert table_names(url) == TABLES
    assert schema_diff(url) == []


def test_pre_migration_database_is_stamped_not_recreated(url):
    # a database as tbench made it before migrations: create_all and a schema_version row
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(Meta.__table__.insert().values(key="schema_version", value="1"))
        conn.execute(Run.__table__.insert().values(uuid="u-1", status="finished", started_at=RunInfo("", "").started_at,
                                                   command="old", host="", device="cpu", gpu_count=0,
                                                   torch_version="", python_version="", platform="",
                                                   tbench_version="", sweep={}, environment={}))
    engine.dispose()
    assert "alembic_version" not in table_names(url)

    store = Store(url)
    assert [r.uuid for r in store.runs()] == ["u-1"]  # the old data survived
    assert store.start_run(RunInfo(command="new", device="cpu")) > 0
    store.close()
    assert {r[0] for r in execute(url, "SELECT version_num FROM alembic_version")} == migrate.head_revisions()
    assert execute(url, "SELECT count(*) FROM tbench_meta") == [(1,)]


def test_pre_migration_database_from_newer_tbench_is_refused(url):
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(Meta.__table__.insert().values(key="schema_version", value=str(SCHEMA_VERSION + 1)))
    engine.dispose()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this tbench"):
        Store(url)
    assert "alembic_version" not in table_names(url)


def test_foreign_tables_without_schema_version_are_refused(url):
    engine = create_engine(url)
    Meta.__table__.create(engine)
    engine.dispose()
    with pytest.raises(StoreError, match="no schema version"):
        Store(url)


def test_cli_db_upgrade(url, cli_env):
    result = run_cli(["db", "upgrade", "--db", url], cli_env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"at revision {', '.join(sorted(migrate.head_revisions()))}" in result.stdout
    assert table_names(url) == TABLES
    # again: nothing to do, same answer
    again = run_cli(["db", "upgrade", "--db", url], cli_env, timeout=120)
    assert again.returncode == 0 and again.stdout == result.stdout

    execute(url, "UPDATE alembic_version SET version_num = 'f00dface'")
    refused = run_cli(["db", "upgrade", "--db", url], cli_env, timeout=120)
    assert refused.returncode == 2
    assert "schema revision f00dface, newer than this tbench" in refused.stderr
    assert "Traceback" not in refused.stderr
