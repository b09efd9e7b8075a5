"""The timing process's steady heap: after the warm-up, a CPU call that allocates and frees large
tensors faults no page; without it, every call faults its tensors in again (the broken case)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tbench.harness import allocator
from tbench.harness.provenance import collect

# A loop like a timed CPU call: a 64 MiB intermediate made, touched and freed each time.
PROBE = """
import json, resource, sys
import torch
from tbench.harness.allocator import keep_heap
kept = keep_heap(sys.argv[1]) if sys.argv[1] != "none" else False
def call():
    x = torch.ones(16 * 2**20)  # 64 MiB, written in full
    return float(x[::4096].sum())
for _ in range(10):  # the heap settles within a few calls (free space left between small blocks)
    call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    call()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"kept": kept, "faults_per_call": faults}))
"""


def _probe(device: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, device], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux") or allocator.glibc() is None, reason="needs glibc")
def test_a_kept_heap_serves_large_tensors_without_page_faults():
    kept = _probe("cpu")
    assert kept["kept"] is True and kept["faults_per_call"] < 50
    # the same loop as the default allocator runs it: 64 MiB from a fresh mapping, 16,384 pages a call
    default = _probe("none")
    assert default["kept"] is False and default["faults_per_call"] > 10_000
    # a CUDA run leaves the C heap alone
    assert _probe("cuda")["kept"] is False


def test_a_cpu_run_records_what_it_did_to_the_heap():
    env = collect("cpu", {}, argv=["tbench", "run"]).environment
    if allocator.glibc() is None:
        assert env["cpu_allocator"].startswith("default")
    else:
        assert env["cpu_allocator"] == "glibc heap kept: mmap and trim thresholds fixed at 1024 MiB"
    assert allocator.describe("cuda") is None
