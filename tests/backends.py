"""The store backends the store tests run on: a SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, text

BACKENDS = ["sqlite", "postgresql"]


def fresh_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database of the backend the test is parametrised with."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


def execute(url: str, sql: str, **params: object) -> list[tuple]:
    """Run SQL on its own connection, as another program sharing the database would."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
