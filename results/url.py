"""Where the results live: a database URL, parsed once, that prints without its password.

`--db` beats $TBENCH_DB beats ./tbench.db; a bare path means a SQLite file. Everything shown to
the user (tables, footers, error lines, hints) uses the masked form; only the engine sees the
password.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ..core.errors import UsageError

DEFAULT_DB = "sqlite:///tbench.db"
ENV_VAR = "TBENCH_DB"

# user:password@ in text that is not a valid URL, so that even the error about it hides the password
_CREDENTIALS = re.compile(r"(://[^:/@\s]*):[^@\s]*@")


class DatabaseUrlError(UsageError):
    """Text that is not a database URL; the message shows it masked."""


def mask_text(text: str) -> str:
    """'postgresql://u:secret@h/db' -> 'postgresql://u:***@h/db', for text that may not parse."""
    return _CREDENTIALS.sub(r"\1:***@", text)


def masked(text: str) -> str:
    """The display form of URL text from elsewhere (a child's argv, a message)."""
    try:
        return DatabaseUrl.resolve(text).masked
    except DatabaseUrlError:
        return mask_text(text)


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL. str() and `masked` hide the password; `url` keeps it for the engine."""

    url: URL

    @classmethod
    def resolve(cls, text: str | None = None) -> DatabaseUrl:
        """--db beats $TBENCH_DB beats ./tbench.db; a bare path means a SQLite file."""
        text = text or os.environ.get(ENV_VAR) or DEFAULT_DB
        if "://" not in text:
            text = f"sqlite:///{text}"
        try:
            return cls(make_url(text))
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise DatabaseUrlError(f"database URL '{mask_text(text)}' is not a valid SQLAlchemy URL "
                                   "(e.g. sqlite:///tbench.db or postgresql+psycopg://user@host/db)") from None

    @property
    def masked(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def full(self) -> str:
        """With the password: for the engine, or a child process that opens the same database."""
        return self.url.render_as_string(hide_password=False)

    def __str__(self) -> str:
        return self.masked

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    @property
    def sqlite_file(self) -> Path | None:
        """The file behind a SQLite URL as written (maybe a file: URI), or None for other backends
        and in-memory databases."""
        if self.backend != "sqlite" or self.url.database in (None, "", ":memory:"):
            return None
        return Path(self.url.database)
