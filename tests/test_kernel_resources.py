"""The kernels as compiled for a Hopper GPU (benchmarks/kernel_resources.py), on the CPU.

No CPU test runs the compiled kernels, so this is where the GPU-only code paths (TMA boxes, shared
K tiles) must at least compile for sm_90 as a run would launch them, and where the TMA boxes must be
seen to do what they are for: fewer registers than pointer loads, fewer spills in the backward.
The compiler runs in a subprocess because this test session runs the kernels in the interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_resources.py"


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("resources") / "rows.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--orders", "3", "--first", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())["rows"]


def _pick(rows: list[dict], pass_: str, hop: int, loads: str) -> dict:
    found = [r for r in rows if r["pass_"] == pass_ and r["hop"] == hop and r["loads"] == loads]
    assert len(found) == 1, (pass_, hop, loads, found)
    return found[0]


def test_every_hop_compiles_both_ways_for_sm90(rows: list[dict]) -> None:
    # 128k, m = 3 (32 x 64 x 64): three packed hops, forward and backward (the table's tile and the
    # levers backward_tiles.py --levers times), TMA and pointer loads
    passes = ("forward", "backward", "backward, products transposed", "backward, two stages",
              "backward, products transposed, two stages")
    assert {(r["pass_"], r["hop"], r["loads"]) for r in rows} == {
        (p, hop, loads) for p in passes for hop in (1, 2, 3) for loads in ("tma", "pointers")}
    for r in rows:
        assert 0 < r["registers"] <= 255 and r["shared_bytes"] > 0 and r["programs_per_sm"] >= 1, r
        if r["pass_"].startswith("backward"):
            # each lever is its own launch: the stages it names, and its own code
            assert r["config"].endswith("stages=2" if "two stages" in r["pass_"] else "stages=1"), r
    table = {(r["hop"], r["loads"]): r["ptx"] for r in rows if r["pass_"] == "backward"}
    for r in rows:
        if r["pass_"].startswith("backward,"):
            assert r["ptx"] != table[(r["hop"], r["loads"])], r


def test_tma_boxes_take_fewer_registers_and_spill_less(rows: list[dict]) -> None:
    for hop in (1, 2, 3):
        boxed, plain = _pick(rows, "forward", hop, "tma"), _pick(rows, "forward", hop, "pointers")
        assert boxed["config"] == plain["config"]
        assert boxed["registers"] < plain["registers"], (boxed, plain)
    for hop in (1, 2):  # slices of 64: the backward's pointer tiles spill
        boxed, plain = _pick(rows, "backward", hop, "tma"), _pick(rows, "backward", hop, "pointers")
        assert boxed["spill_bytes"] < plain["spill_bytes"], (boxed, plain)


def test_refuses_to_run_in_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--first"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "without TRITON_INTERPRET" in done.stderr


_HEADER = "import triton\nimport triton.language as tl\n\n"
# three versions of one kernel, each in its own module so that all three have the same name
_INLINE = _HEADER + """
@triton.jit
def scale(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    x = tl.load(x_ptr + offs, mask=ok)
    tl.store(y_ptr + offs, x * 2.0 + 1.0, mask=ok)
"""
_HELPER = _HEADER + """
@triton.jit
def _scaled(x, FACTOR: tl.constexpr):
    # the same arithmetic taken out into a helper, on other lines
    return x * FACTOR + 1.0


@triton.jit
def scale(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n

    x = tl.load(x_ptr + offs, mask=ok)
    tl.store(y_ptr + offs, _scaled(x, 2.0), mask=ok)
"""
_CHANGED = _INLINE.replace("x * 2.0", "x * 3.0")
_PROBE = """
import sys

import torch

sys.path[:0] = sys.argv[1:3]
import kernel_resources

x = torch.empty(4096, dtype=torch.float32, device="meta")
for name in ("inline", "helper", "changed"):
    kernel = __import__(name).scale
    print(kernel_resources.compile_launch(kernel, (x, torch.empty_like(x), 4000), {"BLOCK": 256}, 90)[3])
"""


def test_the_ptx_digest_keeps_a_helper_taken_out_and_catches_a_changed_operation(tmp_path: Path) -> None:
    for name, source in (("inline", _INLINE), ("helper", _HELPER), ("changed", _CHANGED), ("probe", _PROBE)):
        (tmp_path / f"{name}.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(tmp_path / "probe.py"), str(SCRIPT.parent), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    inline, helper, changed = done.stdout.split()
    assert inline == helper
    assert changed != inline
