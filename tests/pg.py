"""A throwaway PostgreSQL server for the store tests: Debian's binaries, a temporary data folder,
trust authentication on loopback, stopped at the end of the session.

Test modules import the fixtures from here. Without PostgreSQL binaries, or without the psycopg
driver (the `postgres` extra), the tests that use them skip with the reason, except under CI
(CI=true), where a missing server or driver is a failure.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

_databases = itertools.count()


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root, so root hands the server to the postgres user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def _run(args: list[str], log: Path | None = None) -> None:
    proc = subprocess.run(_as_server_user(args), capture_output=True, text=True, timeout=120)
    if proc.returncode:
        detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}\n{detail}")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must test the store on PostgreSQL: {reason}")
    pytest.skip(reason)


def _psycopg() -> ModuleType:
    """The driver, imported only once the tests that need it are about to run."""
    try:
        import psycopg
    except ImportError:
        _unavailable("the PostgreSQL driver psycopg is not installed; install tbench's postgres extra "
                     "(pip install -e \".[postgres]\")")
    return psycopg


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of database `tbench` on a PostgreSQL server started for this test session."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        _unavailable("no PostgreSQL server binaries (initdb, pg_ctl) found; install Debian's postgresql package")
    psycopg = _psycopg()

    root = Path(tempfile.mkdtemp(prefix="tbench-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    try:
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--locale=C", "--no-sync"])
        # fsync off: a test server's data may be lost on a crash, and it starts and writes faster.
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"],
             log)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE tbench")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/tbench"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                            "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    psycopg = _psycopg()

    name = f"t{os.getpid()}_{next(_databases)}"
    admin = pg_server_url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield pg_server_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
