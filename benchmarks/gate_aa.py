"""The regression gate on a GPU: an A/A of the headline tensorized sweep, then the same sweep with a
known slowdown injected into `tensorized`, all in one invocation and one store.

Runs 1 and 2 measure the unchanged kernel; run 3 measures `tensorized` doing its work plus the same
kernel again on a slice of the query heads (`--slowdown` of them, rounded to whole heads, against
one key head): real extra kernel work inside the timed call, under the method's own name, so the
gate matches its configurations with the baseline's. `tbench gate --baseline 1 --candidate 2` must
pass and `--candidate 3` must find every configuration slower.

    python3 benchmarks/gate_aa.py OUT_DIR [--lengths 4k..128k] [--timing graph] [--slowdown 0.1] [--modes fwd_bwd]

In training modes the extra heads' output joins the result's autograd graph (the result itself is
left as it is), so their backward runs too; those modes are timed with CUDA events by default, as
the committed training baseline was (results/baselines/h100-fwd_bwd.json); `--timing graph` replays
them too (docs/methodology.md, "Training passes").

The runs are made in this process (no worker isolation): an isolated worker would rebuild the
registry from the installed methods and lose the injected one.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from tbench.core.case import Case
from tbench.harness import provenance
from tbench.harness.plan import Preset, RunRequest, plan_run
from tbench.harness.runner import Runner
from tbench.methods.catalog import load_registry
from tbench.methods.registry import Call, Method, Registry
from tbench.results.store import Store

METHOD = "tensorized"


class _Joined(torch.autograd.Function):
    """`out` unchanged, with `extra` in its autograd graph: the backward of `out` runs extra's
    backward too (with a zero gradient), and nothing else is computed."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        ctx.extra_shape, ctx.extra_dtype = extra.shape, extra.dtype
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, torch.zeros(ctx.extra_shape, dtype=ctx.extra_dtype, device=grad.device)


def slowed(method: Method, fraction: float) -> Method:
    """`method` plus a second call of the same kernel on round(fraction * H) query heads."""

    def bind(case: Case) -> Call:
        heads = max(1, round(fraction * case.heads))
        extra_case = dataclasses.replace(case, heads=heads, kv_heads=1)
        full, extra = method.bound(case), method.bound(extra_case)

        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
            out = full(q, k, v, case)
            more = extra(q[:, :heads], k[:, :1], v[:, :1], extra_case)
            return _Joined.apply(out, more) if case.mode.needs_backward else out

        return call

    return dataclasses.replace(method, bind=bind,
                               description=f"{method.description} (+{fraction:.0%} of its heads again)")


def with_method(registry: Registry, replacement: Method) -> Registry:
    out = Registry()
    for item in registry:
        out.add(replacement if item.name == replacement.name else item)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=".")
    parser.add_argument("--lengths", default="4k..128k")
    parser.add_argument("--timing", default=None,
                        help="events or graph [default: graph in fwd mode, events with a backward]")
    parser.add_argument("--slowdown", type=float, default=0.10)
    parser.add_argument("--modes", default="fwd")
    args = parser.parse_args()
    store = Store(f"sqlite:///{Path(args.out) / 'gate-aa.db'}")
    registry = load_registry()
    injected = with_method(registry, slowed(registry.get(METHOD), args.slowdown))
    timing = args.timing or ("graph" if args.modes == "fwd" else "events")
    request = RunRequest(preset=Preset.HEADLINE, device="cuda", timing=timing, methods=METHOD,
                         lengths=args.lengths, baseline=METHOD, isolate=False, modes=args.modes)
    plan = plan_run(request, registry)
    for label, reg in (("A", registry), ("A again", registry), (f"+{args.slowdown:.0%} heads", injected)):
        runner = Runner(store, reg, plan.options, show_progress=False)
        info = provenance.collect("cuda", plan.sweep.as_dict(), argv=["gate_aa", label])
        result = runner.run(plan.sweep, info=info)
        print(f"run {result.run_id}: {label}", flush=True)


if __name__ == "__main__":
    main()
