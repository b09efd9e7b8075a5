"""The same event-timed sweep measured R times in one invocation: per configuration, every run's
median and the spread (max - min over the smallest), to study run-to-run repeatability under a
timing setting, e.g. how long a rotation the GPU's power cap holds back is sampled.

    python3 benchmarks/repeat_runs.py OUT_DIR [--lengths 16k] [--repeats 4] [--held-back-min-time 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from methodology import clock_during

from tbench.harness import provenance
from tbench.harness.plan import Preset, RunRequest, plan_run
from tbench.harness.runner import Runner
from tbench.methods.catalog import load_registry
from tbench.results.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=".")
    parser.add_argument("--lengths", default="16k")
    parser.add_argument("--methods", default="sdpa-cudnn,flash2")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--held-back-min-time", type=float, default=3.0)
    args = parser.parse_args()
    store = Store(f"sqlite:///{Path(args.out) / 'repeat.db'}")
    registry = load_registry()
    request = RunRequest(preset=Preset.HEADLINE, device="cuda", timing="events", methods=args.methods,
                         lengths=args.lengths, baseline="flash2", budget=20.0, min_time=1.0,
                         held_back_min_time=args.held_back_min_time)
    plan = plan_run(request, registry)
    ids = []
    for _ in range(args.repeats):
        runner = Runner(store, registry, plan.options, show_progress=False)
        info = provenance.collect("cuda", plan.sweep.as_dict(), argv=["repeat_runs"])
        ids.append(runner.run(plan.sweep, info=info).run_id)
    frames = [store.measurements([i]).set_index("config_key") for i in ids]
    print(f"held-back min time {args.held_back_min_time:g} s, {args.repeats} runs")
    print("| configuration | ms per run (SM MHz) | spread |")
    print("|---|---|---:|")
    for key in frames[0].index:
        rows = [f.loc[key] for f in frames if key in f.index and f.loc[key, "status"] == "ok"]
        if len(rows) < 2:
            continue
        ms = [r["median_ms"] for r in rows]
        cells = ", ".join(f"{r['median_ms']:.4g} ({clock_during(r['device_state'])})" for r in rows)
        print(f"| {key} | {cells} | {100 * (max(ms) - min(ms)) / min(ms):.2f}% |")


if __name__ == "__main__":
    main()
