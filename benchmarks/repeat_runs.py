"""The same event-timed sweep measured R times in one invocation: per configuration, every run's
median and the spread (max - min over the smallest), to study run-to-run repeatability under a
timing setting, e.g. how long a rotation the GPU's power cap holds back is sampled.

    python3 benchmarks/repeat_runs.py OUT_DIR [--lengths 16k] [--repeats 4] [--held-back-min-time 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from methodology import clock_during

from tbench.core.sweep import Sweep, parse_lengths
from tbench.harness import provenance
from tbench.harness.measure import MeasureSettings
from tbench.harness.runner import Runner, RunOptions
from tbench.harness.timing import TimingPolicy
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
    sweep = Sweep(lengths=parse_lengths(args.lengths), methods=args.methods.split(","), device="cuda",
                  timing="events", baseline="flash2")
    policy = TimingPolicy(budget_s=20.0, min_time_s=1.0, held_back_min_time_s=args.held_back_min_time)
    options = RunOptions(settings=MeasureSettings(policy=policy), case_timeout_s=300)
    ids = []
    for _ in range(args.repeats):
        runner = Runner(store, registry, options, show_progress=False)
        info = provenance.collect("cuda", sweep.as_dict(), argv=["repeat_runs"])
        ids.append(runner.run(sweep, info=info).run_id)
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
