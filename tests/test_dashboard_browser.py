"""End to end: a real CPU `tbench run` fills a store, `tbench dashboard` serves it, and headless
Chromium (driven by Playwright) loads the page and checks that the table and charts rendered."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli
from optional import require

from tbench.dashboard.launch import free_port

# `tbench dashboard` serves the page with Streamlit; Playwright drives the browser
require("streamlit", "pip install -e .")
require("playwright.sync_api", "pip install -e '.[dev]'")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT_ENV = "TBENCH_SCREENSHOT_DIR"
# With this set to a store (e.g. real GPU results), the published screenshot shows that store.
SCREENSHOT_DB_ENV = "TBENCH_SCREENSHOT_DB"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("browser") / "cpu.db"
    env = {k: v for k, v in os.environ.items() if k != "TBENCH_DB"}
    result = run_cli(["run", "--device", "cpu", "--lengths", "256,512", "--methods", "full,sdpa-math,tensorized-ref",
                      "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--budget", "0.3", "--min-samples", "3",
                      "--quiet", "--db", f"sqlite:///{path}"], env)
    assert result.returncode == 0, result.stderr
    return f"sqlite:///{path}"


def _wait_until_serving(process: subprocess.Popen[str], url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(f"tbench dashboard exited with {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"tbench dashboard did not answer on {url} within {timeout:.0f} s")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(process: subprocess.Popen[str]) -> None:
    """Ends `tbench dashboard` and its streamlit child: it runs in its own session, so its process
    group is exactly what this test started."""
    pgid = process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(pgid):
            break
        os.killpg(pgid, sig)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _group_alive(pgid):
            process.poll()  # reaps our direct child; the streamlit grandchild is reaped by init
            time.sleep(0.1)
    process.wait(timeout=15)
    assert not _group_alive(pgid)


@contextlib.contextmanager
def serving(db_url: str) -> Iterator[str]:
    """`tbench dashboard` on a free port, in its own session; stopped (all of it) on exit."""
    port = free_port()
    exe = Path(sys.executable).parent / "tbench"
    process = subprocess.Popen([str(exe), "dashboard", "--db", db_url, "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, url)
        yield url
    finally:
        _stop(process)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)


@pytest.fixture(scope="module")
def server(store: str) -> Iterator[str]:
    with serving(store) as url:
        yield url


@pytest.fixture
def page(tmp_path: Path):  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1500, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


def _settle(page) -> None:  # type: ignore[no-untyped-def]
    """Waits until Streamlit has finished the script run (no running indicator)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000)


def test_leaderboard_and_charts_render(server, page, tmp_path):
    page.goto(server)
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "tbench leaderboard · CPU" in page.locator('[data-testid="stMain"] h1').first.inner_text()
    body = page.locator('[data-testid="stMain"]').inner_text()
    assert "Speedups are against the fastest exact method on each shape (of full, sdpa-math)." in body
    cells = page.locator('[data-testid="stDataFrame"] table').first.inner_text()
    for text in ("#1", "tensorized-ref", "full", "1.00× (baseline)"):
        assert text in cells
    # the bar chart names every configuration on its axis
    ticks = page.locator(".js-plotly-plot .yaxislayer-above").first.text_content() or ""
    assert "tensorized-ref m=2" in ticks and "sdpa-math" in ticks
    # the selection went into the URL, so the page can be linked
    assert "shape=fp32.causal.B1.H2.KV1.D32.cpu" in page.url and "baseline=best" in page.url

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if not os.environ.get(SCREENSHOT_DB_ENV):
        _publish(shot)


def _publish(shot: Path) -> None:
    target = os.environ.get(SCREENSHOT_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(target) / "dashboard.png")


def test_a_linked_view_opens_with_its_chart(server, page):
    page.goto(f"{server}/?view=Speedup+curves")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    legend = page.locator(".js-plotly-plot .legend").first.text_content() or ""
    for series in ("full", "sdpa-math", "tensorized-ref m=2", "tensorized-ref m=3"):
        assert series in legend
    # one line and one p20-p80 band per series
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() == 8


def test_the_families_view_draws_the_frontier(server, page):
    page.goto(f"{server}/?view=Families")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Best method of each family" in page.locator('[data-testid="stMain"]').inner_text()
    legend = page.locator(".js-plotly-plot .legend").first.text_content() or ""
    assert "exact" in legend and "tensorized" in legend
    # one line per family: the store holds exact and tensorized methods
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() == 2
    assert "tensorized-ref" in page.locator('[data-testid="stDataFrame"] table').first.inner_text()


@pytest.mark.skipif(not os.environ.get(SCREENSHOT_DB_ENV), reason=f"${SCREENSHOT_DB_ENV} names no store to show")
def test_screenshot_of_a_given_store(page, tmp_path):
    page.set_viewport_size({"width": 1500, "height": 1400})  # the table and the chart below it
    with serving(os.environ[SCREENSHOT_DB_ENV]) as url:
        page.goto(url)
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
        page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
        _settle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.locator('[data-testid="stMain"] h1').first.inner_text().startswith("tbench leaderboard · ")
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
    _publish(shot)


@pytest.fixture(scope="module")
def scoped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A store with the H200's layer-scope rows (the committed bundle) and a short CPU quality run."""
    path = tmp_path_factory.mktemp("browser-scoped") / "scoped.db"
    env = {k: v for k, v in os.environ.items() if k != "TBENCH_DB"}
    bundle = Path(__file__).resolve().parent.parent / "docs" / "data" / "h200-e2e-1.json.gz"
    for args in (["import", str(bundle)],
                 ["quality", "--device", "cpu", "--preset", "tiny", "--steps", "20"]):
        result = run_cli([*args, "--db", f"sqlite:///{path}"], env)
        assert result.returncode == 0, result.stderr
    with serving(f"sqlite:///{path}") as url:
        yield url


def test_the_end_to_end_view_draws_the_layer_rows(scoped_server, page):
    page.goto(f"{scoped_server}/?view=End+to+end")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    text = page.locator('[data-testid="stMain"]').inner_text()
    charts = " ".join(page.locator(".js-plotly-plot").all_text_contents())
    assert "paper: 11x at 128k" in charts
    for method in ("flash2", "flash3", "tensorized"):
        assert method in text


def test_the_quality_view_draws_accuracy(scoped_server, page):
    page.goto(f"{scoped_server}/?view=Quality")
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    _settle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    legend = page.locator(".js-plotly-plot .legend").first.text_content() or ""
    assert "tensorized-ref" in legend and "sdpa-math" in legend
