"""The database URL is parsed once and shown only masked: no command prints a password."""

from __future__ import annotations

import pytest
from conftest import run_cli

from tbench.dashboard import data
from tbench.results.store import Store, StoreError
from tbench.results.url import DatabaseUrl, DatabaseUrlError, mask_text, masked

SECRET_URL = "postgresql://user:secret@127.0.0.1:1/x"  # nothing listens on port 1


def test_bare_path_means_sqlite_and_env_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv("TBENCH_DB", raising=False)
    assert DatabaseUrl.resolve(None).full == "sqlite:///tbench.db"
    assert DatabaseUrl.resolve(str(tmp_path / "a.db")).sqlite_file == tmp_path / "a.db"
    monkeypatch.setenv("TBENCH_DB", "other.db")
    assert DatabaseUrl.resolve(None).full == "sqlite:///other.db"
    assert DatabaseUrl.resolve("postgresql+psycopg://u@h/db").sqlite_file is None


def test_masked_form_hides_the_password_and_full_form_keeps_it():
    url = DatabaseUrl.resolve(SECRET_URL)
    assert str(url) == url.masked == "postgresql://user:***@127.0.0.1:1/x"
    assert f"{url}" == url.masked and "secret" not in repr(url.masked)
    assert url.full == SECRET_URL
    assert mask_text("postgresql://u:pw@h:port/x") == "postgresql://u:***@h:port/x"
    assert masked("postgresql://u:pw@h:notaport/x") == "postgresql://u:***@h:notaport/x"


@pytest.mark.parametrize("text", ["postgresql://user:secret@h:notaport/x", "not a url://user:secret@/"])
def test_unparsable_url_error_is_masked(text):
    with pytest.raises(DatabaseUrlError) as caught:
        DatabaseUrl.resolve(text)
    assert "secret" not in str(caught.value) and "not a valid SQLAlchemy URL" in str(caught.value)
    with pytest.raises(StoreError) as store_error:
        Store(text)
    assert "secret" not in str(store_error.value)
    with pytest.raises(data.DashboardError) as dashboard_error:
        data.open_readonly(text)
    assert "secret" not in str(dashboard_error.value)


@pytest.mark.parametrize("args", [
    ["runs"], ["show"], ["show", "1"], ["db", "upgrade"], ["export", "latest", "--out", "x.json"],
    ["run", "--device", "cpu", "--lengths", "64", "--methods", "sdpa-math", "--quiet"],
])
def test_no_command_prints_the_password(args, cli_env):
    result = run_cli([*args, "--db", SECRET_URL], cli_env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "secret" not in result.stdout + result.stderr
    # the error line names the database, masked
    assert "postgresql://user:***@127.0.0.1:1/x" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_port_is_one_masked_line(cli_env):
    result = run_cli(["runs", "--db", "postgresql://user:secret@h:notaport/x"], cli_env)
    assert result.returncode == 2
    assert "secret" not in result.stderr and "user:***@h:notaport" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
