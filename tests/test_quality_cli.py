"""`tbench quality` for real: a subprocess on the CPU writing a real SQLite file; bad values end in
one line and exit code 2."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import run_cli

from tbench.core.folding import resolve_dims
from tbench.quality.reachability import reachable_shares
from tbench.quality.tasks import TaskSpec


def test_tiny_preset_stores_accuracy_rows(tmp_path, cli_env):
    db = tmp_path / "quality.db"
    result = run_cli(["quality", "--device", "cpu", "--preset", "tiny", "--db", str(db)], cli_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "(wall time)" in result.stderr and "4 ok" in result.stderr
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT method, order_m, seq_len, status, accuracy, scored FROM quality_results").fetchall()
        run = con.execute("SELECT status, device, torch_version, command FROM quality_runs").fetchall()
        speed_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    assert {(m, o, n) for m, o, n, *_ in rows} == {("tensorized-ref", 2, 32), ("sdpa-math", None, 32),
                                                   ("tensorized-ref", 2, 48), ("sdpa-math", None, 48)}
    assert all(status == "ok" and 0 <= acc <= 1 and scored > 0 for *_, status, acc, scored in rows)
    assert run[0][:2] == ("finished", "cpu") and run[0][2] and "quality" in run[0][3]
    assert speed_runs == 0  # quality runs never show up among the speed runs
    assert "sdpa-math" in result.stdout and "tensorized-ref m=2" in result.stdout
    # the reachable share of the tensorized rows, as the reachability module gives it for their folds
    cells = {(r[0], r[1]): r[-1] for r in ([c.strip() for c in line.split("│")[1:-1]]
                                           for line in result.stdout.splitlines() if line.startswith("│"))}
    for n in (32, 48):
        dims = resolve_dims(n, 2)
        share = reachable_shares(TaskSpec("mqar", n, 32, 4), [dims])[dims]
        assert cells[("tensorized-ref m=2", str(n))] == f"{share:.3f}" and 0 < share < 1
        assert cells[("sdpa-math", str(n))] == "-"


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "huge"], "preset 'huge' unknown; allowed: tiny, default"),
    (["--lrs", "fast"], "learning rates 'fast' must be numbers"),
    (["--methods", "flash2"], "method 'flash2' is unavailable on cpu"),
    (["--lengths", "4"], "needs sequences of at least 12 tokens"),
    (["--device", "tpu"], "device 'tpu' unknown"),
    (["--items", "12"], "mqar with 12 items needs sequences of at least 36 tokens, not 32"),
])
def test_bad_values_are_one_line_and_exit_2(tmp_path, cli_env, args, message):
    db = tmp_path / "never.db"
    result = run_cli(["quality", "--device", "cpu", *args, "--db", str(db)], cli_env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not db.exists()  # nothing was stored
