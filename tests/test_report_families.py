"""`tbench show` groups a run's rows by method family: within each shape, the families in
FAMILY_ORDER, each with its rows by length, and the family named on every row of the terminal and
Markdown tables."""

from __future__ import annotations

import pytest
from conftest import run_cli

from tbench.analysis.families import FAMILY_ORDER, family_rank
from tbench.analysis.report import formatted_rows, run_markdown
from tbench.core.case import Case
from tbench.core.records import MeasurementRecord, RunInfo, Timing
from tbench.results.store import Store

# (method, family, order m); recorded in an order that is none of the orders asserted below
METHODS = (("sliding-window", "sparse", None), ("simple-gla", "linear", None), ("tensorized-ref", "tensorized", 2),
           ("sdpa-math", "exact", None))
LENGTHS = (512, 256)
FAMILY_OF = {method: family for method, family, _ in METHODS}


@pytest.fixture
def store_path(tmp_path) -> str:
    path = tmp_path / "families.db"
    store = Store(str(path))
    run = store.start_run(RunInfo(command="tbench run --device cpu", device="cpu", environment={"cpu": "Test"}))
    for heads in (4, 2):
        for method, family, order in METHODS:
            for n in LENGTHS:
                dims = {256: (16, 16), 512: (16, 32)}[n] if order else None
                case = Case(method, family, n, 1, heads, 1, 32, "fp32", True, "cpu", order=order, dims=dims,
                            timing="cpu")
                median = n / 256 * (2.0 if family == "exact" else 1.0)
                timing = Timing(median, median * 0.9, median * 1.2, median, 0.0, median * 0.8, [median] * 5)
                store.record(run, MeasurementRecord(case, "ok", timing=timing))
    store.finish_run(run, "finished")
    store.close()
    return str(path)


def test_rows_are_grouped_by_family_within_each_shape(store_path):
    rows = formatted_rows(Store(store_path, readonly=True).measurements(), "sdpa-math", None)
    order = [(r["shape"][1], r["family"], int(r["N"])) for r in rows]
    expected = [(heads, family, n) for heads in (2, 4) for family in ("exact", "tensorized", "linear", "sparse")
                for n in (256, 512)]
    assert order == expected
    assert all(FAMILY_OF[r["method"]] == r["family"] for r in rows)
    # speedups are still analysis.speedup's: sdpa-math takes twice as long as every other method
    assert {r["speedup"] for r in rows if r["family"] != "exact"} == {"2.00x"}


def test_markdown_names_the_family_on_every_row(store_path):
    text = run_markdown(Store(store_path, readonly=True).measurements(), "sdpa-math")
    families = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| family |"):
            assert cells[:3] == ["family", "N", "method"]
        elif line.startswith("| "):
            assert FAMILY_OF[cells[2]] == cells[0]
            families.append(cells[0])
    assert len(families) == 16
    # grouped, in FAMILY_ORDER, in each of the two shapes
    assert families == sorted(families[:8], key=family_rank) * 2
    assert families[:8:2] == ["exact", "tensorized", "linear", "sparse"]


def test_show_groups_by_family_in_the_terminal(store_path, cli_env):
    shown = run_cli(["show", "--db", store_path], cli_env)
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if any(f" {m} " in line for m in FAMILY_OF)
             and "xsdpa-math" not in line]  # not the header
    assert len(lines) == 16
    # each row starts with its family, and the families come in FAMILY_ORDER within each shape
    firsts = [line.strip("│┃| ").split()[0] for line in lines]
    assert all(FAMILY_OF[next(m for m in FAMILY_OF if f" {m} " in line)] == first
               for line, first in zip(lines, firsts, strict=True))
    assert firsts[:8] == [f for f in FAMILY_ORDER[:4] for _ in LENGTHS] == firsts[8:]
    # a rule between families: three in each of the two shapes, and one between the shapes
    assert sum(line.startswith("├") for line in shown.stdout.splitlines()) == 7


def test_family_rank_puts_unknown_families_last():
    assert [family_rank(f) for f in FAMILY_ORDER] == list(range(len(FAMILY_ORDER)))
    assert family_rank("from-a-newer-tbench") == len(FAMILY_ORDER)
