"""Checks of the timing method on a GPU, written for docs/methodology-log.md.

1. Repeatability: the same sweep measured twice in one invocation; per configuration the
   difference of the two medians.
2. Independence: tbench's median for sdpa-cudnn at 128k against `triton.testing.do_bench`
   (which also flushes the L2 before each sample) on the same inputs, in the same process.
3. Timing modes: CUDA events against CUDA-graph replay for the tensorized methods.

Usage: python benchmarks/methodology.py OUT_DIR [--cool-to C] [--lengths 4k,16k,64k,128k]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import triton

from tbench.core.case import Case
from tbench.core.sweep import parse_lengths
from tbench.harness import provenance
from tbench.harness.plan import Preset, RunRequest, plan_run
from tbench.harness.runner import Runner
from tbench.kernels.tensors import make_inputs
from tbench.methods.catalog import load_registry
from tbench.results.store import Store


def sweep_runs(store: Store, registry, timing: str, methods: list[str], lengths: list[int], repeats: int,
               cool_to: float | None = None, min_time: float = 1.0, spin_up: float = 2.0) -> list[int]:
    """The headline shape (tbench run's GPU default), timed with these knobs, `repeats` times."""
    request = RunRequest(preset=Preset.HEADLINE, device="cuda", timing=timing, methods=",".join(methods),
                         lengths=",".join(map(str, lengths)), baseline="flash2", budget=5.0, cool_to=cool_to,
                         min_time=min_time, spin_up=spin_up)
    plan = plan_run(request, registry)
    ids = []
    for _ in range(repeats):
        runner = Runner(store, registry, plan.options, show_progress=False)
        info = provenance.collect("cuda", plan.sweep.as_dict(), argv=["methodology"])
        ids.append(runner.run(plan.sweep, info=info).run_id)
    return ids


def clock_during(state: object) -> str:
    state = json.loads(state) if isinstance(state, str) else state
    during = (state or {}).get("sm_clock_mhz_during_samples") or {}
    return f"{during['mean']:.0f}" if "mean" in during else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=".")
    parser.add_argument("--cool-to", type=float, default=None, help="tbench run --cool-to for every sweep")
    parser.add_argument("--lengths", default="4k,16k,64k,128k")
    parser.add_argument("--min-time", type=float, default=1.0, help="tbench run --min-time for every sweep")
    parser.add_argument("--spin-up", type=float, default=2.0, help="seconds a fresh worker keeps the GPU busy")
    args = parser.parse_args()
    out = Path(args.out)
    store = Store(f"sqlite:///{out / 'methodology.db'}")
    registry = load_registry()
    lengths = parse_lengths(args.lengths)
    methods = ["sdpa-cudnn", "flash2", "tensorized", "tensorized-ref"]
    knobs = dict(cool_to=args.cool_to, min_time=args.min_time, spin_up=args.spin_up)
    first, second = sweep_runs(store, registry, "events", methods, lengths, repeats=2, **knobs)
    [graph] = sweep_runs(store, registry, "graph", ["tensorized", "tensorized-ref"], lengths, repeats=1, **knobs)

    a, b, g = (store.measurements([i]).set_index("config_key") for i in (first, second, graph))
    lines = ["## Repeatability (same sweep twice in one invocation)", "",
             "| configuration | run A ms | run B ms | difference | SM MHz A / B (mean during samples) |",
             "|---|---:|---:|---:|---:|"]
    for key in a.index:
        if a.loc[key, "status"] == "ok" and key in b.index and b.loc[key, "status"] == "ok":
            ma, mb = a.loc[key, "median_ms"], b.loc[key, "median_ms"]
            clocks = f"{clock_during(a.loc[key, 'device_state'])} / {clock_during(b.loc[key, 'device_state'])}"
            lines.append(f"| {key} | {ma:.4g} | {mb:.4g} | {100 * (mb - ma) / ma:+.2f}% | {clocks} |")

    lines += ["", "## Events against CUDA-graph replay", "", "| configuration | events ms | graph ms | difference |",
              "|---|---:|---:|---:|"]
    for key in g.index:
        events_key = key.rsplit("|", 1)[0] + "|events"
        if g.loc[key, "status"] == "ok" and events_key in a.index:
            me, mg = a.loc[events_key, "median_ms"], g.loc[key, "median_ms"]
            lines.append(f"| {events_key.rsplit('|', 1)[0]} | {me:.4g} | {mg:.4g} | {100 * (mg - me) / me:+.2f}% |")

    # independent measurement of sdpa-cudnn at 128k with do_bench
    method = registry.get("sdpa-cudnn")
    case = Case("sdpa-cudnn", "exact", 131072, 1, 32, 8, 128, "bf16", True, "cuda")
    q, k, v = method.prepared(*make_inputs(case, 0), case)
    call = method.bound(case)
    with torch.no_grad():
        independent = triton.testing.do_bench(lambda: call(q, k, v, case), warmup=500, rep=5000,
                                              return_mode="median")
    key = case.key
    ours = [a.loc[key, "median_ms"], b.loc[key, "median_ms"]]
    lines += ["", "## sdpa-cudnn at 128k: tbench against triton.testing.do_bench", "",
              "| measurement | median ms | vs do_bench |", "|---|---:|---:|",
              f"| triton.testing.do_bench (warmup 500 ms, rep 5000 ms) | {independent:.4g} | |"]
    for name, value in zip(("tbench run A", "tbench run B"), ours, strict=True):
        lines.append(f"| {name} | {value:.4g} | {100 * (value - independent) / independent:+.2f}% |")
    text = "\n".join(lines)
    (out / "methodology.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
