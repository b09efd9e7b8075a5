"""Schema migrations (Alembic), configured in code so no alembic.ini has to ship or be found.

The store calls `prepare` on every open: a fresh database is migrated to head, an older one is
upgraded, one made before migrations existed is stamped at the revision matching its schema
version, and one from a newer tbench is refused.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from .models import SCHEMA_VERSION

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"

# The revision each pre-Alembic schema version corresponds to, for stamping old databases.
BASELINE_REVISIONS = {1: "0001"}

# Any constant will do: it only has to be the same for every tbench that migrates a database.
_PG_LOCK_KEY = 0x7462656E6368  # "tbench"


class MigrationRefused(Exception):
    """The database cannot be brought to this tbench's schema; the message says why."""


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(conn: Connection) -> set[str]:
    return set(MigrationContext.configure(conn).get_current_heads())


def needs_work(conn: Connection) -> bool:
    """True unless the database is exactly at head (cheap, read-only: the common case)."""
    return current_revisions(conn) != head_revisions()


def _refuse_unknown(current: set[str], heads: set[str], where: str) -> None:
    """A revision this tbench does not know was made by a newer one: refuse rather than guess."""
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    for rev in current:
        if rev not in known:
            raise MigrationRefused(
                f"database '{where}' has schema revision {rev}, newer than this tbench supports "
                f"({', '.join(sorted(heads))}); upgrade tbench to read it"
            )


def check_readable(conn: Connection, *, where: str) -> None:
    """For read-only opens, which cannot migrate: a database made before migrations at a schema
    this tbench reads as is can be read; any other one not at head is refused with the fix."""
    current = current_revisions(conn)
    heads = head_revisions()
    _refuse_unknown(current, heads, where)
    if not current:
        version = _legacy_schema_version(conn)
        if version is None:
            raise MigrationRefused(f"'{where}' is not a tbench database (no schema version)")
        if version not in BASELINE_REVISIONS:
            raise MigrationRefused(
                f"database '{where}' has schema version {version}, newer than this tbench "
                f"supports ({SCHEMA_VERSION}); upgrade tbench to read it"
            )
        if {BASELINE_REVISIONS[version]} == heads:
            return
    raise MigrationRefused(f"database '{where}' has an older schema; migrate it with `tbench db upgrade --db ...` "
                           "(this command only reads)")


def lock(conn: Connection) -> None:
    """Serialise migrations between processes that open the same database at once, so that
    only the first creates the tables and the rest find them made."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # pysqlite opens its transaction lazily, at the first INSERT, so DDL would run outside it;
        # an explicit BEGIN IMMEDIATE takes the write lock now and holds it to the commit.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def prepare(conn: Connection, *, create: bool, where: str) -> None:
    """Bring the database on `conn` (inside a transaction, after `lock`) to head."""
    heads = head_revisions()
    current = current_revisions(conn)
    _refuse_unknown(current, heads, where)
    if current == heads:
        return
    cfg = alembic_config(conn)
    if not current:
        version = _legacy_schema_version(conn)
        if version is not None:
            if version not in BASELINE_REVISIONS:
                raise MigrationRefused(
                    f"database '{where}' has schema version {version}, newer than this tbench "
                    f"supports ({SCHEMA_VERSION}); upgrade tbench to read it"
                )
            command.stamp(cfg, BASELINE_REVISIONS[version])
        elif not create:
            raise MigrationRefused(f"'{where}' is not a tbench database (no schema version)")
    command.upgrade(cfg, "head")


def _legacy_schema_version(conn: Connection) -> int | None:
    """The schema version of a database made before migrations existed, or None if it has no
    tbench tables at all."""
    if not inspect(conn).has_table("tbench_meta"):
        return None
    value = conn.execute(text("SELECT value FROM tbench_meta WHERE key = 'schema_version'")).scalar()
    if value is None:
        raise MigrationRefused("database has a tbench_meta table but no schema version; it was not "
                               "written by tbench, or not completely")
    return int(value)
