"""The `tbench` command line (Typer + Rich)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .core.device import device_kind
from .core.folding import FoldingError
from .core.sweep import BEST_EXACT

app = typer.Typer(
    help="Benchmark long-sequence attention kernels: tensorized attention against exact attention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Written to a pipe or a file, Rich would cut every table to 80 columns (method names end in '…');
# there a line may be as long as its content. A terminal, or $COLUMNS, keeps its own width.
PIPE_WIDTH = 1000


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(stderr=stderr, width=PIPE_WIDTH)


out = _console()
err = _console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"tbench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", help="Print the version and exit",
                                                callback=_print_version, is_eager=True)] = False) -> None:
    """Benchmark long-sequence attention kernels: tensorized attention against exact attention."""

DbOption = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite path [default: $TBENCH_DB or "
                                              "./tbench.db]", show_default=False)]


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]tbench: error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def friendly_errors(fn: F) -> F:
    """Bad input and store problems end as one line and exit code 2, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .core.errors import UsageError
        from .results.store import StoreError

        try:
            return fn(*args, **kwargs)
        except (UsageError, StoreError, FoldingError) as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- run ------------------------------------------------------------------------------------------


@app.command()
@friendly_errors
def run(
    preset: Annotated[str | None, typer.Option(help="Named defaults: headline (4k..128k, H=32, H_kv=8, D=128, "
                                               "bf16), quick (a first look: 4k..16k, fewer samples) or cpu "
                                               "(512..2k, H=4, H_kv=2, D=64, fp32); or a model shape for "
                                               "--scope layer/model: tiny (CPU), llama3-8b, llama2-7b, "
                                               "mistral-7b, openllama-3b; options given win "
                                               "[default: headline on a GPU, cpu without]",
                                               show_default=False)] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Shorthand for --preset quick")] = False,
    lengths: Annotated[str | None, typer.Option(help="Sequence lengths: 4k..128k (powers of two), or a list "
                                                "4096,6000,8k [default: the preset's]", show_default=False)] = None,
    orders: Annotated[str | None, typer.Option(help="Orders m for tensorized methods, e.g. 2,3 [default: 2,3]",
                                               show_default=False)] = None,
    batch: Annotated[str | None, typer.Option(help="Batch sizes, e.g. 1,5 [default: 1]", show_default=False)] = None,
    heads: Annotated[str | None, typer.Option(help="Query heads [default: the preset's]", show_default=False)] = None,
    kv_heads: Annotated[str | None, typer.Option("--kv-heads", help="Key/value heads (GQA) [default: the "
                                                 "preset's]", show_default=False)] = None,
    head_dim: Annotated[str | None, typer.Option("--head-dim", help="Head dims [default: the preset's]",
                                                 show_default=False)] = None,
    dtype: Annotated[str | None, typer.Option(help="bf16, fp16, fp32 or a list [default: the preset's]",
                                              show_default=False)] = None,
    causal: Annotated[bool | None, typer.Option("--causal/--no-causal", help="Causal masking [default: causal]",
                                                show_default=False)] = None,
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods [default: all available]",
                                                show_default=False)] = None,
    baseline: Annotated[str | None, typer.Option(help="Method for speedups, or 'best': the fastest exact method "
                                                 "on each shape [default: best when the sweep has an exact "
                                                 "method]", show_default=False)] = None,
    dims: Annotated[str | None, typer.Option(help="Explicit folding dims for tensorized methods, e.g. 256x512 "
                                             "(needs a single --orders)", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:N or cpu [default: cuda if present]",
                                               show_default=False)] = None,
    devices: Annotated[str | None, typer.Option(help="Shard the sweep over local GPUs: all, or indices 0,1,... "
                                                "(one worker per GPU)", show_default=False)] = None,
    timing: Annotated[str | None, typer.Option(help="GPU: events (CUDA events, L2 flushed) or graph (CUDA graph "
                                               "replay); CPU: cpu", show_default=False)] = None,
    modes: Annotated[str | None, typer.Option(help="Passes to time: fwd (forward), bwd (backward alone, from a "
                                              "forward run outside the timed region), fwd_bwd (both), or a list "
                                              "[default: fwd]", show_default=False)] = None,
    scope: Annotated[str | None, typer.Option(help="What is timed: op (the attention alone), layer (one decoder "
                                              "layer of the --preset model) or model (its embedding and "
                                              "--layers layers) [default: op]", show_default=False)] = None,
    layers: Annotated[int | None, typer.Option(help="--scope model: decoder layers timed; the model's depth is "
                                               "estimated from them [default: the model's depth]",
                                               show_default=False)] = None,
    protocol: Annotated[str | None, typer.Option(help="tbench (adaptive sampling) or paper (the mean of 50 "
                                                 "forward passes after a warm-up) [default: tbench]",
                                                 show_default=False)] = None,
    target_rse: Annotated[float | None, typer.Option("--target-rse", help="Stop sampling at this relative "
                                                     "standard error of the median [default: 0.005; quick: 0.02]",
                                                     show_default=False)] = None,
    min_samples: Annotated[int | None, typer.Option("--min-samples", help="[default: 10; quick: 5]",
                                                    show_default=False)] = None,
    min_time: Annotated[float | None, typer.Option("--min-time", help="Seconds of sampling per measurement at "
                                                   "least, spread over the interleaved rounds [default: 1 "
                                                   "headline, 0.2 quick, 0.1 cpu]", show_default=False)] = None,
    budget: Annotated[float | None, typer.Option(help="Seconds of sampling per measurement at most "
                                                 "[default: 10 headline, 2 quick and cpu]",
                                                 show_default=False)] = None,
    timeout: Annotated[float, typer.Option(help="Seconds without progress before a configuration counts as "
                                           "hung")] = 300.0,
    cool_to: Annotated[float | None, typer.Option("--cool-to", help="GPU: before timing each shape, wait up to 60 s "
                                                  "until the GPU is no warmer than this (deg C)",
                                                  show_default=False)] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Correctness gate before timing")] = True,
    isolate: Annotated[bool, typer.Option("--isolate/--no-isolate", help="Measure in a worker subprocess")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs")] = 0,
    resume: Annotated[str | None, typer.Option(help="Measure only what run RUN (an id, or 'latest') lacks",
                                               show_default=False)] = None,
    shard: Annotated[str | None, typer.Option(help="Measure only part i of n of the sweep, e.g. 2/4 (with "
                                              "--run-key, so that the parts fill one run)", show_default=False)] = None,
    run_key: Annotated[str | None, typer.Option("--run-key", help="Join the run named KEY (a UUID, or any text such "
                                                "as a job id), creating it if needed", show_default=False)] = None,
    db: DbOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
) -> None:
    """Sweep sequence lengths, orders, shapes and methods; store every measurement."""
    from .analysis.report import run_table
    from .core.sweep import Sweep, UsageError
    from .harness import provenance
    from .harness.plan import Preset, RunRequest, parse_preset, plan_run
    from .harness.runner import Runner
    from .methods.catalog import load_registry
    from .results.store import Store

    if quick and preset not in (None, Preset.QUICK):
        raise UsageError(f"--quick is --preset quick; it cannot go with --preset {preset}")
    request = RunRequest(
        preset=Preset.QUICK if quick else parse_preset(preset) if preset else None, lengths=lengths, orders=orders,
        batch=batch, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype, causal=causal,
        methods=methods, baseline=baseline, dims=dims, device=device, devices=devices, timing=timing,
        modes=modes, scope=scope, layers=layers, protocol=protocol, target_rse=target_rse,
        min_samples=min_samples, min_time=min_time, budget=budget, cool_to=cool_to,
        timeout=timeout, check=check, isolate=isolate, seed=seed, shard=shard, run_key=run_key)
    started = time.monotonic()
    registry = load_registry()
    previous = None
    if resume is not None:
        store = Store(db)
        previous = store.get_run(None if resume == "latest" else _parse_run_id(resume))
    plan = plan_run(request, registry, resumed=Sweep.from_dict(previous.sweep) if previous else None)
    sweep = plan.sweep
    if plan.left_out:  # never drop a method silently
        err.print(f"Preset {plan.preset} measures {', '.join(sweep.methods)}; also available here: "
                  f"{', '.join(plan.left_out)} (add them with --methods)", markup=False, highlight=False)
    if previous is None:
        asked = [*sweep.methods, sweep.baseline] if methods is not None else [sweep.baseline]
        _check_available(registry, [name for name in asked if name != BEST_EXACT], sweep.device)
        store = Store(db)  # only once the request is known to be good: a refused run leaves no file behind
    runner = Runner(store, registry, plan.options, console=err, show_progress=not quiet)
    if previous is not None:
        err.print(f"Resuming run {previous.id} on {store.url}", markup=False, highlight=False)
        outcome = runner.run(sweep, resume_run_id=previous.id, devices=plan.devices, shard=plan.shard)
    else:
        info = provenance.collect(sweep.device, sweep.as_dict())
        if plan.devices:
            info.environment["devices"] = plan.devices
        if plan.run_uuid is not None:
            info.uuid = plan.run_uuid
            run_id, created = store.join_run(info)
            joined = store.get_run(run_id)
            if Sweep.from_dict(joined.sweep) != sweep:
                raise UsageError(f"run key '{run_key}' names run {run_id}, whose sweep differs from this one")
            if not created:
                err.print(f"Joining run {run_id} ({run_key}) on {store.url}", markup=False, highlight=False)
            outcome = runner.run(sweep, resume_run_id=run_id, devices=plan.devices, shard=plan.shard)
        else:
            outcome = runner.run(sweep, info=info, devices=plan.devices, shard=plan.shard)
    run_row = store.get_run(outcome.run_id)
    df = store.measurements([outcome.run_id])
    out.print(run_table(df, sweep.baseline, title=f"run {outcome.run_id} ({outcome.status})",
                        peaks=(run_row.environment or {}).get("peaks"), wide=out.width >= 150))
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.counts.items()))
    took = _duration(time.monotonic() - started)
    err.print(f"Run {outcome.run_id} {outcome.status}: {counts or 'nothing to measure'} in {took}; stored in "
              f"{store.url}", markup=False, highlight=False)
    if outcome.status == "partial":
        err.print("The run still lacks configurations of other shards; it is finished when every shard has run.")
    if outcome.status == "interrupted":
        how = f" ({outcome.message})" if outcome.message else ""
        err.print(f"Interrupted{how}. Continue with: tbench run --resume {outcome.run_id}")
        raise typer.Exit(128 + (outcome.signal or 2))  # the shell's code for death by that signal
    if outcome.status == "failed":
        fail(f"{outcome.message}; fix it, then continue with: tbench run --resume {outcome.run_id}", code=1)


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def _check_available(registry: Any, names: list[str], device: str) -> None:
    """Methods asked for by name must run here; a sweep of rows that all say 'unavailable' helps no one."""
    from .core.errors import UsageError

    missing = {}
    for name in dict.fromkeys(names):
        availability = registry.get(name).availability(device_kind(device))
        if not availability.available:
            missing[name] = availability.reason
    if missing:
        why = "; ".join(f"{name}: {reason}" for name, reason in missing.items())
        raise UsageError(f"unavailable on {device}: {why} (see `tbench list --device {device}`)")


def _parse_run_id(text: str) -> int:
    from .core.errors import UsageError

    if not text.isdigit():
        raise UsageError(f"run '{text}' is not a run id (a positive integer) or 'latest'")
    return int(text)


def _parse_quality_run_id(text: str) -> int:
    from .core.errors import UsageError

    if not text.isdigit():
        raise UsageError(f"quality run '{text}' is not a quality run id (a positive integer) or 'latest'")
    return int(text)


# --- list, runs, show -----------------------------------------------------------------------------


@app.command("list")
@friendly_errors
def list_methods(
    device: Annotated[str | None, typer.Option(help="Device to check availability on [default: cuda if present]",
                                               show_default=False)] = None,
) -> None:
    """Methods, whether they are available here (and why not), and what runs."""
    from .methods.catalog import load_registry

    registry = load_registry()
    device = device or _default_device()
    table = Table(title=Text(f"tbench methods (availability on {device})"), header_style="bold")
    for column in ("method", "family", "available", "provenance / reason", "supports"):
        table.add_column(column)
    for method in registry:
        availability = method.availability(device_kind(device))
        mark = "[green]yes[/green]" if availability.available else "[red]no[/red]"
        detail = availability.provenance if availability.available else availability.reason
        supports = [",".join(sorted(method.dtypes)),
                    "causal" if method.causal else "", "non-causal" if method.noncausal else "",
                    "GQA" if method.gqa else "no GQA",
                    "D=" + ",".join(map(str, sorted(method.head_dims))) if method.head_dims and
                    len(method.head_dims) < 6 else "any D" if method.head_dims is None else "D<=256",
                    f"m=1..{method.max_order}" if method.is_tensorized else ""]
        # reasons carry brackets (pip extras such as 'tbench[xformers]') that Rich would read as markup
        table.add_row(Text(method.name), method.family, mark, escape(detail), " ".join(s for s in supports if s))
    out.print(table)
    for problem in registry.plugin_errors:
        err.print(f"[yellow]plugin not loaded:[/yellow] {escape(problem.entry_point)}: {escape(problem.message)}")


@app.command()
@friendly_errors
def runs(db: DbOption = None) -> None:
    """Past runs in the store."""
    from .results.store import Store

    store = Store(db, readonly=True)
    table = Table(title=Text(f"runs in {store.url}"), header_style="bold")
    for column in ("id", "started (UTC)", "status", "device", "ok / all", "command"):
        table.add_column(column)
    for r in store.runs():
        # everything read from the store is shown as written, never read as console markup
        table.add_row(str(r.id), f"{r.started_at:%Y-%m-%d %H:%M}", Text(r.status), Text(r.gpu_name or r.device),
                      f"{r.ok} / {r.measurements}", Text(r.command))
    out.print(table)


@app.command()
@friendly_errors
def show(
    run_id: Annotated[str | None, typer.Argument(metavar="[RUN]", help="Run id [default: latest]",
                                                 show_default=False)] = None,
    baseline: Annotated[str | None, typer.Option(help="Method for speedups, or 'best': the fastest exact method "
                                                 "on each shape [default: the run's]",
                                                 show_default=False)] = None,
    markdown: Annotated[str | None, typer.Option(help="Also write the table as Markdown to this file",
                                                 show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """A run's results with speedups over the baseline."""
    from .analysis.report import run_markdown, run_table
    from .analysis.speedup import pick_baseline
    from .results.store import Store

    store = Store(db, readonly=True)
    run_row = store.get_run(None if run_id in (None, "latest") else _parse_run_id(run_id))
    asked = baseline
    baseline = asked or (run_row.sweep or {}).get("baseline")
    device = run_row.gpu_name or f"CPU ({(run_row.environment or {}).get('cpu', '?')})"
    started = f"{run_row.started_at:%Y-%m-%d %H:%M}"
    out.print(f"[bold]Run {run_row.id}[/bold] ({escape(run_row.status)}) on {escape(device)}, started {started} UTC\n"
              f"  {escape(run_row.command)}\n  " + escape(
                  f"torch {run_row.torch_version}, triton {run_row.triton_version}, CUDA {run_row.cuda}, "
                  f"driver {run_row.driver}, tbench {run_row.tbench_version} "
                  f"({run_row.git_commit or 'no git commit'})"), highlight=False)
    df = store.measurements([run_row.id])
    if df.empty:
        out.print("This run has no measurements yet.")
        return
    measured = sorted(set(df["method"]))
    if asked is not None and asked != BEST_EXACT and asked not in measured:
        fail(f"baseline '{asked}' is not a method of run {run_row.id}; allowed: {BEST_EXACT} (the fastest exact "
             f"method on each shape) or one of its methods: {', '.join(measured)}")
    if asked is None:  # the run's baseline failed everywhere (or it named none): the fastest exact method
        baseline = pick_baseline(df, baseline).method
    peaks = (run_row.environment or {}).get("peaks")
    out.print(run_table(df, baseline, title=f"run {run_row.id}", peaks=peaks, wide=out.width >= 150))
    _show_depth_check(store, df)
    if markdown:
        try:
            with open(markdown, "w") as f:
                f.write(run_markdown(df, baseline, peaks))
        except OSError as exc:
            fail(f"cannot write markdown file '{markdown}': {exc.strerror}")


def _show_depth_check(store: object, df: object) -> None:
    """Where the run timed model scope: its depth estimates against full-depth runs of the same
    configurations anywhere in the store (or its full-depth runs against estimates made elsewhere)."""
    from .analysis.endtoend import DEPTH_KEY, depth_check
    from .analysis.report import depth_table

    ours = df[df["scope"] == "model"]  # type: ignore[index]
    if ours.empty:
        return
    everything = store.measurements()  # type: ignore[attr-defined]
    model_rows = everything[everything["scope"] == "model"]
    configs = ours[DEPTH_KEY].drop_duplicates()
    check = depth_check(model_rows.merge(configs, on=DEPTH_KEY, how="inner"))
    if not check.empty:
        out.print(depth_table(check))


@app.command()
@friendly_errors
def dashboard(
    db: DbOption = None,
    port: Annotated[int | None, typer.Option(help="Port [default: a free one]", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface")] = "127.0.0.1",
) -> None:
    """Start the Streamlit leaderboard dashboard on the store (read-only)."""
    from .dashboard.launch import launch
    from .results.url import DatabaseUrl

    raise typer.Exit(launch(DatabaseUrl.resolve(db), port, host=host))


# --- quality --------------------------------------------------------------------------------------


@app.command()
@friendly_errors
def quality(
    preset: Annotated[str | None, typer.Option(help="tiny (the CPU, well under a minute: MQAR at 32 and 48 tokens, "
                                               "tensorized-ref and sdpa-math) or default (one GPU: MQAR at 256, "
                                               "1024, 4096 x tensorized m=2,3,4, tensorized-ref, an exact method, "
                                               "simple-gla, gla x 3 seeds x 1 learning rate, 600 steps) "
                                               "[default: tiny]", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(help="cuda, cuda:N or cpu [default: cuda if present]",
                                               show_default=False)] = None,
    task: Annotated[str | None, typer.Option(help="mqar, needle or copy [default: mqar]", show_default=False)] = None,
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods [default: the preset's that are "
                                                "available]", show_default=False)] = None,
    orders: Annotated[str | None, typer.Option(help="Orders m for tensorized methods, e.g. 2,3,4 [default: the "
                                               "preset's]", show_default=False)] = None,
    lengths: Annotated[str | None, typer.Option(help="Sequence lengths, e.g. 256,1024,4096 (others are padded "
                                                "to the fold) [default: the preset's]", show_default=False)] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds, e.g. 0,1,2 [default: the preset's]",
                                              show_default=False)] = None,
    lrs: Annotated[str | None, typer.Option(help="Learning rates, e.g. 1e-3,3e-3 [default: the preset's]",
                                            show_default=False)] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps per model [default: the preset's]",
                                              show_default=False)] = None,
    items: Annotated[int | None, typer.Option(help="Items per sequence: key-value pairs (mqar), content tokens "
                                              "(copy) [default: the preset's]", show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option(help="Models trained at once, each in its own worker process on "
                                             "the device [default: 4 on a GPU, 1 on the CPU]",
                                             show_default=False)] = None,
    resume: Annotated[str | None, typer.Option(metavar="RUN", help="Train only the configurations quality run "
                                               "RUN (an id or 'latest') has no result for, with its settings, and "
                                               "add them to it", show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """Train small models with each attention method on synthetic recall tasks; store held-out accuracy."""
    import pandas as pd

    from .analysis.quality import accuracy_table
    from .core.device import parse_device
    from .core.errors import UsageError
    from .harness import provenance
    from .methods.catalog import load_registry
    from .quality.plan import QualityPlan, QualityRequest, plan_quality
    from .quality.pool import default_jobs
    from .quality.reachability import plan_reachable_shares
    from .quality.runner import resume_plan, run_quality, train_into_run
    from .results.quality import quality_results, quality_run_id
    from .results.store import Store

    started = time.monotonic()
    if jobs is not None and jobs < 1:
        raise UsageError(f"jobs {jobs} must be at least 1")
    registry = load_registry()
    plan: QualityPlan
    if resume is not None:
        given = {"--preset": preset, "--device": device, "--task": task, "--methods": methods, "--orders": orders,
                 "--lengths": lengths, "--seeds": seeds, "--lrs": lrs, "--steps": steps, "--items": items}
        clash = [name for name, value in given.items() if value is not None]
        if clash:
            raise UsageError(f"--resume trains with the run's own settings; drop {', '.join(clash)}")
        asked = None if resume == "latest" else _parse_quality_run_id(resume)
        store = Store(db)
        run_id = quality_run_id(store, asked)
        plan, configs = resume_plan(store, run_id)
        device = plan.settings.device
        if device_kind(device) == "cuda" and _default_device() == "cpu":
            raise UsageError(f"quality run {run_id} trained on '{device}', but torch sees no CUDA GPU here")
        for name in dict.fromkeys(c.method for c in configs):
            if name not in registry:
                raise UsageError(f"quality run {run_id} trains method '{name}', which is not registered here")
            if not (a := registry.get(name).availability(device_kind(device))).available:
                raise UsageError(f"quality run {run_id} trains method '{name}', unavailable on {device}: {a.reason}")
        err.print(f"Resuming quality run {run_id}: {len(configs)} of {len(plan.configurations)} configurations "
                  "left to train", markup=False, highlight=False)
    else:
        device = parse_device(device) if device is not None else _default_device()
        if device_kind(device) == "cuda" and _default_device() == "cpu":
            raise UsageError(f"device '{device}' asked for, but torch sees no CUDA GPU here")
        available = {m.name: (None if (a := m.availability(device_kind(device))).available else a.reason)
                     for m in registry}
        request = QualityRequest(preset=preset or "tiny", device=device, task=task, methods=methods, orders=orders,
                                 lengths=lengths, seeds=seeds, lrs=lrs, steps=steps, items=items)
        plan = plan_quality(request, registry, available)
        configs = plan.configurations
        for line in plan.left_out:
            err.print(f"Left out (unavailable on {device}): {line}", markup=False, highlight=False)
        store = Store(db)
    total = len(configs)

    def report(i: int, rec: Any) -> None:
        shown = f"accuracy {rec.accuracy:.3f}" if rec.status == "ok" else f"{rec.status}: {rec.message}"
        err.print(f"[{i + 1}/{total}] {rec.config_key}: {shown}", markup=False, highlight=False)

    workers = jobs or default_jobs(device)
    if resume is not None:
        outcome = train_into_run(plan, configs, registry, store, run_id, on_result=report, jobs=workers)
    else:
        info = provenance.collect(device, {"kind": "quality", "preset": preset or "tiny", **plan.settings.as_dict()})
        outcome = run_quality(plan, registry, store, info, on_result=report, jobs=workers)
    table = accuracy_table(quality_results(store, [outcome.run_id]))
    reach = plan_reachable_shares(plan.settings, plan.configurations)
    view = Table(title=Text(f"quality run {outcome.run_id}: {plan.settings.task} accuracy on held-out sequences "
                            "(best learning rate per seed; mean ± std over seeds)"), header_style="bold",
                 caption=Text("reachable: the share of the scored positions that can reach every token their "
                              "answer needs under the method's causal fold (-: not a folded method)"))
    for column in ("method", "N", "accuracy", "min", "max", "seeds", "failed", "unsupported", "reachable"):
        view.add_column(column)
    for _, row in table.iterrows():
        trained = row["seeds"] > 0
        order = None if pd.isna(row["order_m"]) else int(row["order_m"])
        share = reach.get((row["method"], order, int(row["seq_len"])))
        view.add_row(Text(row["series"]), str(row["seq_len"]),
                     f"{row['mean']:.3f} ± {row['std']:.3f}" if trained else "-",
                     f"{row['min']:.3f}" if trained else "-", f"{row['max']:.3f}" if trained else "-",
                     str(row["seeds"]), str(row["failed"]), str(row["unsupported"]),
                     f"{share:.3f}" if share is not None else "-")
    out.print(view)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(outcome.counts.items()))
    err.print(f"Quality run {outcome.run_id} {outcome.status}: {counts or 'nothing to train'} in "
              f"{_duration(time.monotonic() - started)} (wall time); stored in {store.url}",
              markup=False, highlight=False)


db_app = typer.Typer(help="The results database: schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
@friendly_errors
def db_upgrade(db: DbOption = None) -> None:
    """Create the database or migrate it to this tbench's schema (opening a store does this too)."""
    from .results import migrate
    from .results.models import SCHEMA_VERSION
    from .results.store import Store

    store = Store(db, create=True)
    with store.engine.connect() as conn:
        revisions = ", ".join(sorted(migrate.current_revisions(conn)))
    store.close()
    out.print(f"{store.url}: at revision {revisions} (schema version {SCHEMA_VERSION})", highlight=False,
              soft_wrap=True)


# --- gate, baseline, export, import ---------------------------------------------------------------

BaselinesDirOption = Annotated[str | None, typer.Option(
    "--baselines-dir", help="Folder of named baselines [default: $TBENCH_BASELINES_DIR or results/baselines]",
    show_default=False)]


def _interop_errors(fn: F) -> F:
    """Gate and file problems end as one line and exit code 2, like every other bad input."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .analysis.gate import GateError
        from .results.bundle import BundleError
        from .results.pytest_benchmark import PytestBenchmarkError

        try:
            return fn(*args, **kwargs)
        except (GateError, BundleError, PytestBenchmarkError) as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def _write_text(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as exc:
        fail(f"cannot write '{path}': {exc.strerror}")


@app.command()
@friendly_errors
@_interop_errors
def gate(
    baseline: Annotated[str, typer.Option(help="Run id, 'latest', bundle or baseline file, or baseline name",
                                          show_default=False)],
    candidate: Annotated[str, typer.Option(help="Run id, 'latest', bundle or baseline file, or baseline name",
                                           show_default=False)],
    threshold: Annotated[float, typer.Option(help="Relative change of the median that counts (0.05 = 5%)")] = 0.05,
    min_delta_us: Annotated[float, typer.Option("--min-delta-us", help="Absolute change of the median that "
                                                "counts, in microseconds")] = 20.0,
    alpha: Annotated[float, typer.Option(help="Family-wise significance level (Holm over the configurations)")]
    = 0.01,
    run_noise: Annotated[float | None, typer.Option("--run-noise", help="Relative standard deviation of a whole "
                                                    "run's level, allowed on each side (0.02 = 2%) [default: 2% "
                                                    "on a GPU, 5% when a side ran on a CPU]",
                                                    show_default=False)] = None,
    allow_cross_device: Annotated[bool, typer.Option("--allow-cross-device", help="Compare runs from different "
                                                     "GPU models")] = False,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Configurations missing or failing in "
                                                "the candidate do not fail the gate (wrong results still do)")]
    = False,
    allow_unchecked: Annotated[bool, typer.Option("--allow-unchecked", help="Compare candidate configurations "
                                                  "timed with --no-check (unchecked) instead of failing them")]
    = False,
    markdown: Annotated[str | None, typer.Option(help="Write the verdicts as Markdown here (e.g. "
                                                 "$GITHUB_STEP_SUMMARY)", show_default=False)] = None,
    json_out: Annotated[str | None, typer.Option("--json", help="Write the verdicts as JSON here",
                                                 show_default=False)] = None,
    show_all: Annotated[bool, typer.Option("--all/--changes", help="List every configuration, or only "
                                           "changes")] = True,
    baselines_dir: BaselinesDirOption = None,
    db: DbOption = None,
) -> None:
    """Gate a candidate against a baseline: exit 0 pass, 1 regression (SLOWER or FAIL), 2 bad input."""
    import json

    from .analysis.baselines import baselines_dir as resolve_dir
    from .analysis.baselines import load_side
    from .analysis.gate import GateSettings
    from .analysis.gate import gate as run_gate
    from .analysis.gate_report import gate_json, gate_markdown, gate_table, summary_line

    settings = GateSettings(threshold=threshold, alpha=alpha, min_delta_us=min_delta_us, run_noise=run_noise,
                            allow_cross_device=allow_cross_device, allow_missing=allow_missing,
                            allow_unchecked=allow_unchecked)
    directory = resolve_dir(baselines_dir)
    report = run_gate(load_side(baseline, db, directory), load_side(candidate, db, directory), settings)
    out.print(gate_table(report, show_same=show_all))
    if markdown:
        _write_text(markdown, gate_markdown(report))
    if json_out:
        _write_text(json_out, json.dumps(gate_json(report), indent=1) + "\n")
    style = "bold green" if report.passed else "bold red"
    err.print(f"[{style}]{escape(summary_line(report))}[/{style}]", highlight=False)
    for v in report.failures:
        err.print(f"  {v.verdict} {v.key}: {v.reason}", highlight=False, markup=False)
    if not report.passed:
        raise typer.Exit(1)


baseline_app = typer.Typer(help="Named baselines for `tbench gate`, saved as JSON files to commit.",
                           no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("save")
@friendly_errors
@_interop_errors
def baseline_save(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="Run id or 'latest'")],
    name: Annotated[str, typer.Option(help="Baseline name, e.g. h100 (the file is <name>.json)",
                                      show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing baseline of that name")] = False,
    baselines_dir: BaselinesDirOption = None,
    db: DbOption = None,
) -> None:
    """Save a run as a named baseline (results/baselines/<name>.json) with its provenance."""
    import shlex

    from .analysis.baselines import baseline_from_run, check_name, run_as_model, save_baseline
    from .analysis.baselines import baselines_dir as resolve_dir
    from .results.store import Store

    check_name(name)
    rid, run = run_as_model(Store(db, readonly=True), None if run_id == "latest" else _parse_run_id(run_id))
    saved_by = shlex.join(["tbench", *sys.argv[1:]])
    path = save_baseline(baseline_from_run(run, name, saved_by), resolve_dir(baselines_dir), force)
    ok = sum(m.status == "ok" for m in run.measurements)
    err.print(f"Saved run {rid} ({ok} ok of {len(run.measurements)} configurations, "
              f"{run.gpu_name or 'CPU'}) as baseline '{name}': {path}", highlight=False, markup=False)


@app.command("export")
@friendly_errors
@_interop_errors
def export_runs(
    out_file: Annotated[str, typer.Option("--out", help="File to write (gzip-compressed if the name ends in "
                                          ".gz)", show_default=False)],
    run_ids: Annotated[list[str] | None, typer.Argument(metavar="RUN", help="Run ids, or 'latest'",
                                                        show_default=False)] = None,
    quality: Annotated[str | None, typer.Option(
        "--quality", metavar="IDS", help="Quality runs to put in the bundle too: comma-separated ids, or 'latest'",
        show_default=False)] = None,
    fmt: Annotated[str, typer.Option("--format", help="bundle (tbench, for import) or pytest-benchmark")]
    = "bundle",
    db: DbOption = None,
) -> None:
    """Export runs (and quality runs) as a tbench bundle, or one run as pytest-benchmark JSON."""
    from .core.errors import UsageError
    from .results.bundle import export_bundle, write_bundle, write_json
    from .results.pytest_benchmark import export_pytest_benchmark
    from .results.quality import quality_run_id
    from .results.store import Store

    if fmt not in ("bundle", "pytest-benchmark"):
        raise UsageError(f"format '{fmt}' unknown; allowed: bundle, pytest-benchmark")
    if not run_ids and quality is None:
        raise UsageError("nothing to export: give run ids, or quality run ids with --quality")
    if quality is not None and fmt != "bundle":
        raise UsageError("--quality needs --format bundle; pytest-benchmark files hold timings only")
    quality_parts = [] if quality is None else [part.strip() for part in quality.split(",")]
    quality_asked = [None if q == "latest" else _parse_quality_run_id(q) for q in quality_parts]
    store = Store(db, readonly=True)
    ids = [store.get_run(None if r == "latest" else _parse_run_id(r)).id for r in run_ids or []]
    quality_ids = [quality_run_id(store, q) for q in quality_asked]
    if fmt == "bundle":
        bundle = export_bundle(store, ids, quality_ids)
        write_bundle(bundle, out_file)
        parts = []
        if bundle.runs or not bundle.quality_runs:
            parts.append(f"{len(bundle.runs)} run(s), {sum(len(r.measurements) for r in bundle.runs)} measurements")
        if bundle.quality_runs:
            parts.append(f"{len(bundle.quality_runs)} quality run(s), "
                         f"{sum(len(r.results) for r in bundle.quality_runs)} results")
        err.print(f"Exported {' and '.join(parts)}, to {out_file}", markup=False)
    else:
        if len(ids) != 1:
            raise UsageError("--format pytest-benchmark holds one run per file; export one run at a time")
        data = export_pytest_benchmark(store, ids[0])
        write_json(data, out_file)
        err.print(f"Exported run {ids[0]}, {len(data['benchmarks'])} benchmarks, to {out_file}", markup=False)


@app.command("import")
@friendly_errors
@_interop_errors
def import_files(
    files: Annotated[list[str], typer.Argument(metavar="FILE...", help="Bundle or pytest-benchmark JSON "
                                                                      "files, plain or gzip-compressed")],
    fmt: Annotated[str, typer.Option("--format", help="auto, bundle or pytest-benchmark")] = "auto",
    db: DbOption = None,
) -> None:
    """Import runs (and quality runs) from files, all in one transaction; runs already in the store are skipped."""
    from .core.errors import UsageError
    from .results.bundle import BundleError, import_runs, parse_bundle, read_json
    from .results.pytest_benchmark import looks_like_pytest_benchmark, parse_pytest_benchmark
    from .results.store import Store

    if fmt not in ("auto", "bundle", "pytest-benchmark"):
        raise UsageError(f"format '{fmt}' unknown; allowed: auto, bundle, pytest-benchmark")
    runs, sources = [], {}
    quality_runs, quality_sources = [], {}
    for path in files:
        data = read_json(path)
        is_bundle = isinstance(data, dict) and "format" in data
        if fmt == "bundle" or (fmt == "auto" and is_bundle):
            bundle = parse_bundle(data, path)
            found = bundle.runs
            for quality_run in bundle.quality_runs:
                if quality_run.uuid not in quality_sources:
                    quality_runs.append(quality_run)
                    quality_sources[quality_run.uuid] = path
        elif fmt == "pytest-benchmark" or looks_like_pytest_benchmark(data):
            found = [parse_pytest_benchmark(data, path)]
        else:
            raise BundleError(f"'{path}' is neither a tbench bundle nor pytest-benchmark JSON")
        for run in found:
            if run.uuid not in sources:  # the same run in two files is imported once
                runs.append(run)
                sources[run.uuid] = path
    store = Store(db)
    result = import_runs(store, runs, quality_runs)
    for uuid, rid in result.imported:
        err.print(f"Imported run {rid} ({uuid}) from {sources[uuid]}", highlight=False, markup=False)
    for uuid in result.skipped:
        err.print(f"Skipped run {uuid} from {sources[uuid]}: already in {store.url}", highlight=False, markup=False)
    for uuid, rid in result.quality_imported:
        err.print(f"Imported quality run {rid} ({uuid}) from {quality_sources[uuid]}", highlight=False,
                  markup=False)
    for uuid in result.quality_skipped:
        err.print(f"Skipped quality run {uuid} from {quality_sources[uuid]}: already in {store.url}",
                  highlight=False, markup=False)
    if runs or not quality_runs:
        err.print(f"{len(result.imported)} run(s) imported, {len(result.skipped)} already present", markup=False,
                  highlight=False)
    if quality_runs:
        err.print(f"{len(result.quality_imported)} quality run(s) imported, {len(result.quality_skipped)} already "
                  "present", markup=False, highlight=False)


def main() -> None:
    app(prog_name="tbench")


if __name__ == "__main__":
    sys.exit(main())
