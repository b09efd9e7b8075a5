"""Shared test fixtures. Without a GPU, Triton kernels run in Triton's interpreter; the variable
must be set before any kernel is defined, hence at import time here. No test reads or writes the
kernels' tuning record unless it names a folder for it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests tune afresh: no tuning record from an earlier run (or another test) chooses their configs;
# the record's own tests name a folder of their own.
os.environ["TBENCH_TUNING_DIR"] = ""

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SRC = Path(__file__).resolve().parent / "plugin"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test plugin installed for real (wheel built, entry points written) into its own folder,
    which only the processes that put it on sys.path will see."""
    target = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(PLUGIN_SRC)],
        check=True, capture_output=True, text=True,
    )
    return target


@pytest.fixture
def plugin_env(plugin_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_path), env.get("PYTHONPATH", "")) if p)
    env["TBENCH_TEST_PLUGIN"] = "1"
    env.pop("TBENCH_DB", None)
    env["COLUMNS"] = "200"
    return env


@pytest.fixture
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TBENCH_DB", None)
    env["COLUMNS"] = "200"
    return env


def ctrl_c_reaches_child() -> None:
    """Popen's preexec_fn for a child that a test stops with SIGINT: a shell without job control
    starts background commands (a CI step run with `&`, say) with SIGINT ignored, and the child
    would inherit that; a terminal's Ctrl-C reaches a foreground command whose SIGINT is default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real `tbench` console script, in a subprocess."""
    exe = Path(sys.executable).parent / "tbench"
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout)


def measurement_rows(db: Path | str, where: str = "1") -> list[dict]:
    """The measurements of a SQLite store as dicts, in the order they were stored."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM measurements WHERE {where} ORDER BY id")]
    finally:
        con.close()


@pytest.fixture
def planned_launches(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every kernel launch the backward plans (`tensorized_backward.KernelLaunch`), in order."""
    # imported when used, so that the test modules that never run a kernel do not load Triton for it
    from tbench.kernels import tensorized_backward as tb

    launches: list = []
    plan = tb.plan_hop_backward

    def recorded(*args, **kwargs) -> list:
        planned = plan(*args, **kwargs)
        launches.extend(planned)
        return planned

    monkeypatch.setattr(tb, "plan_hop_backward", recorded)
    return launches


@pytest.fixture
def hf_kernels_unshadowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m pytest` puts the repository's root on sys.path, where its kernels/ folder would be
    found as the Hugging Face `kernels` package that transformers imports when one is installed."""
    root = Path(__file__).resolve().parent.parent
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != root])
