"""What the dashboard shows, without Streamlit: read-only store queries and the pandas logic behind
each view (leaderboard, speedups, crossover lengths, order m, end to end). Every function here is pure or only
reads the database, so it can be tested on a plain SQLite file."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
from sqlalchemy import Engine, and_, create_engine, func, inspect, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

from ..analysis.endtoend import end_to_end
from ..analysis.families import FAMILY_ORDER as FAMILY_ORDER
from ..analysis.families import sort_by_family
from ..analysis.host import host_bound_ms, host_bound_text
from ..analysis.over_forward import over_forward
from ..analysis.roofline import Bound, Roofline, roofline_text, with_roofline
from ..analysis.speedup import BaselineChoice as BaselineChoice
from ..analysis.speedup import baseline_candidates as baseline_candidates
from ..analysis.speedup import baseline_label as baseline_label
from ..analysis.speedup import baseline_rows as baseline_rows
from ..analysis.speedup import ok_methods as ok_methods
from ..analysis.speedup import pick_baseline as pick_baseline
from ..analysis.speedup import with_speedup

# Speedups and the baseline choice are the terminal report's too; the views use them from here.
from ..core.case import TIMED_STATUSES, Mode, Scope, TimingProtocol
from ..results.models import SCHEMA_VERSION, Measurement, Meta, Run
from ..results.store import readonly_sqlite_url
from ..results.url import DatabaseUrl, DatabaseUrlError

CPU_LABEL = "CPU"

# How a non-ok status reads in every metric cell of its row; a blank or a zero would look like data.
STATUS_MARKERS = {
    "oom": "OOM",
    "unsupported": "unsupported",
    "wrong": "WRONG",
    "skipped": "skipped",
    "error": "error",
    "timeout": "timeout",
}

# Statuses whose rows carry a timing: ranked and plotted. `unchecked` rows (timed without the
# correctness gate) rank like ok ones but are marked wherever they appear.
UNCHECKED_TEXT = "unchecked (correctness not verified)"

# Statuses that say the method cannot handle the length at all, as opposed to not applying to the
# shape or being broken: 'skipped' is the runner's pre-flight verdict that the configuration would
# not fit in free memory. The crossover counts them as a loss for the method or a win against the
# baseline, and the curves mark them.
CAPACITY_FAILURES = ("oom", "skipped", "timeout")

# Everything the curve and table views need; samples_ms is left out because it dwarfs the rest.
SLICE_COLUMNS = (
    "id", "run_id", "config_key", "method", "family", "seq_len", "order_m", "dims", "status", "message",
    "provenance", "median_ms", "p20_ms", "p80_ms", "n_samples", "peak_bytes", "total_peak_bytes", "tflops",
    "tbps", "check_error", "fidelity_rel_l2", "fidelity_max_abs", "throttled", "scope", "protocol",
)
COMPARE_COLUMNS = (
    "config_key", "method", "family", "seq_len", "order_m", "dims", "batch", "heads", "kv_heads", "head_dim",
    "dtype", "causal", "scope", "model", "layers", "protocol", "status", "median_ms", "p20_ms", "p80_ms",
)


class DashboardError(Exception):
    """A store the dashboard cannot show; the message is one line for the page."""


# --- opening the store read-only ------------------------------------------------------------------


def database(url: str | DatabaseUrl) -> DatabaseUrl:
    """The store's URL, parsed once; str() of it hides the password."""
    if isinstance(url, DatabaseUrl):
        return url
    try:
        return DatabaseUrl.resolve(url)
    except DatabaseUrlError as exc:
        raise DashboardError(str(exc)) from None


def readonly_url(url: str | DatabaseUrl) -> URL:
    """The same database, opened so that no statement can write to it. SQLite gets a read-only URI
    (which also never creates a missing file); other backends rely on read-only transactions."""
    db = database(url)
    if db.sqlite_file is None:
        return db.url
    return readonly_sqlite_url(db.url)


def sqlite_path(url: str | DatabaseUrl) -> Path | None:
    """The file behind a SQLite URL, or None for other backends and in-memory databases."""
    try:
        db = database(url)
    except DashboardError:
        return None
    if db.sqlite_file is None:
        return None
    name = str(db.url.database)
    if name.startswith("file:"):
        return Path(unquote(name[len("file:"):].split("?")[0]))
    return db.sqlite_file.expanduser()


def open_readonly(url: str | DatabaseUrl) -> Engine:
    db = database(url)
    try:
        options = {}
        if db.backend == "postgresql":
            options["execution_options"] = {"postgresql_readonly": True}
        return create_engine(readonly_url(db), **options)
    except (NoSuchModuleError, ImportError) as exc:
        raise DashboardError(f"'{db}' needs a database driver that is not installed: {exc}") from None


@dataclass(frozen=True)
class StoreState:
    """What the dashboard found at the URL: 'ok', 'missing' (no file), 'empty' (no measurements)
    or 'invalid' (not readable as a tbench store)."""

    kind: str
    message: str = ""


def probe(url: str | DatabaseUrl, engine: Engine) -> StoreState:
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return StoreState("missing", f"no database file at {path}")
    try:
        tables = set(inspect(engine).get_table_names())
        if not {"runs", "measurements", Meta.__tablename__} <= tables:
            return StoreState("invalid" if tables else "empty",
                              "not a tbench database (tables runs and measurements are missing)" if tables
                              else "the database has no tables yet")
        with engine.connect() as conn:
            version = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
            if version is not None and int(version) > SCHEMA_VERSION:
                return StoreState("invalid", f"schema version {version} is newer than this tbench reads "
                                             f"({SCHEMA_VERSION}); upgrade tbench")
            count = conn.execute(select(func.count()).select_from(Measurement)).scalar() or 0
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).splitlines()[0]
        return StoreState("invalid", f"cannot read the database: {reason}")
    return StoreState("ok") if count else StoreState("empty", "the database has no measurements yet")


# --- what can be chosen ---------------------------------------------------------------------------


def gpu_label(gpu_name: object) -> str:
    return str(gpu_name) if isinstance(gpu_name, str) and gpu_name else CPU_LABEL


@dataclass(frozen=True)
class Shape:
    """A leaderboard compares methods on one input shape, measured with one timing mode, timing one
    pass (mode: fwd, bwd or fwd_bwd)."""

    dtype: str
    causal: bool
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    timing: str
    mode: str = "fwd"

    @property
    def slug(self) -> str:
        """Compact and URL-safe, for query parameters (forward slugs as before modes existed)."""
        mode = "" if self.mode == "fwd" else f".{self.mode}"
        return (f"{self.dtype}.{'causal' if self.causal else 'full'}.B{self.batch}.H{self.heads}"
                f".KV{self.kv_heads}.D{self.head_dim}.{self.timing}{mode}")

    @classmethod
    def from_slug(cls, slug: str) -> Shape | None:
        parts = slug.split(".")
        if len(parts) not in (7, 8) or parts[1] not in ("causal", "full"):
            return None
        try:
            numbers = [int(p[n:]) for p, n in zip(parts[2:6], (1, 1, 2, 1), strict=True)]
        except ValueError:
            return None
        return cls(parts[0], parts[1] == "causal", *numbers, timing=parts[6],
                   mode=parts[7] if len(parts) == 8 else "fwd")

    @property
    def label(self) -> str:
        causal = "causal" if self.causal else "non-causal"
        mode = "" if self.mode == "fwd" else f", {self.mode}"
        return (f"{self.dtype} {causal} B={self.batch} H={self.heads} H_kv={self.kv_heads} D={self.head_dim}"
                f" ({self.timing} timing{mode})")


def _gpu_filter(gpu: str):  # type: ignore[no-untyped-def]
    return Run.gpu_name.is_(None) if gpu == CPU_LABEL else Run.gpu_name == gpu


def _operator_filter():  # type: ignore[no-untyped-def]
    """The rows the per-shape views compare: the attention operator alone, timed by tbench's own
    sampling. A layer or a model around the same attention shape takes ten times as long, and the
    paper's protocol reports another statistic; those rows belong to the End to end view."""
    return and_(Measurement.scope == Scope.OP.value, Measurement.protocol == TimingProtocol.TBENCH.value)


def _shape_filter(shape: Shape):  # type: ignore[no-untyped-def]
    return and_(_operator_filter(), Measurement.dtype == shape.dtype, Measurement.causal == shape.causal,
                Measurement.batch == shape.batch, Measurement.heads == shape.heads,
                Measurement.kv_heads == shape.kv_heads, Measurement.head_dim == shape.head_dim,
                Measurement.timing_mode == shape.timing, Measurement.mode == shape.mode)


def load_slices(engine: Engine) -> pd.DataFrame:
    """One row per (GPU, shape) of the operator rows in the store (op scope, tbench's protocol) with
    its measurement count, most measured first."""
    m = Measurement
    stmt = (select(Run.gpu_name, m.dtype, m.causal, m.batch, m.heads, m.kv_heads, m.head_dim, m.timing_mode,
                   func.count().label("n"), m.mode)
            .join(Run, Run.id == m.run_id).where(_operator_filter())
            .group_by(Run.gpu_name, m.dtype, m.causal, m.batch, m.heads, m.kv_heads, m.head_dim, m.timing_mode,
                      m.mode))
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    records = [{"gpu": gpu_label(r[0]),
                "shape": Shape(r[1], bool(r[2]), int(r[3]), int(r[4]), int(r[5]), int(r[6]), r[7], mode=r[9]),
                "n": int(r[8])} for r in rows]
    df = pd.DataFrame(records, columns=["gpu", "shape", "n"])
    # Two CPU runs from different hosts share the CPU label: merge their counts.
    df = df.groupby(["gpu", "shape"], as_index=False, sort=False)["n"].sum()
    return df.sort_values(["n", "gpu"], ascending=[False, True], kind="stable").reset_index(drop=True)


def scope_text(scope: object, model: object = "", layers: object = 0, protocol: object = "tbench") -> str:
    """What a row times, for views that list rows of several scopes: 'op', 'layer llama3-8b',
    'model llama3-8b ×4 layers', with ', paper protocol' where the paper's protocol took the samples."""
    scope = str(scope) if isinstance(scope, str) and scope else Scope.OP.value
    if scope == Scope.OP.value:
        text = scope
    elif scope == Scope.LAYER.value:
        text = f"{scope} {model}"
    else:
        count = int(layers) if layers is not None and not pd.isna(layers) else 0  # type: ignore[arg-type]
        text = f"{scope} {model} ×{count} layer{'' if count == 1 else 's'}"
    return text if protocol in (None, "", TimingProtocol.TBENCH.value) else f"{text}, {protocol} protocol"


def scope_texts(frame: pd.DataFrame) -> list[str]:
    """scope_text of each row of a frame with scope, model, layers and protocol columns."""
    columns = ("scope", "model", "layers", "protocol")
    return [scope_text(*values) for values in zip(*(frame[c] for c in columns), strict=True)]


def load_runs(engine: Engine) -> pd.DataFrame:
    """All runs, newest first, with their measurement counts and what they time (`scopes`: the
    scope_text of their rows, joined; empty for a run without measurements)."""
    counts = (select(Measurement.run_id, func.count().label("measurements"))
              .group_by(Measurement.run_id).subquery())
    stmt = (select(Run.id, Run.status, Run.started_at, Run.device, Run.gpu_name, Run.command,
                   func.coalesce(counts.c.measurements, 0).label("measurements"))
            .outerjoin(counts, counts.c.run_id == Run.id).order_by(Run.id.desc()))
    m = Measurement
    scoped = select(m.run_id, m.scope, m.model, m.layers, m.protocol).distinct()
    with engine.connect() as conn:
        df = pd.DataFrame(conn.execute(stmt).mappings().all(),
                          columns=["id", "status", "started_at", "device", "gpu_name", "command", "measurements"])
        scopes = _frame(conn.execute(scoped).all(), ["run_id", "scope", "model", "layers", "protocol"])
    scopes["text"] = scope_texts(scopes) if not scopes.empty else pd.Series(dtype=str)
    by_run = {int(run): ", ".join(sorted(set(texts))) for run, texts in scopes.groupby("run_id")["text"]}
    df["gpu"] = df["gpu_name"].map(gpu_label)
    df["scopes"] = [by_run.get(int(r), "") for r in df["id"]]
    return df


def run_label(run: pd.Series | dict) -> str:
    started = run["started_at"]
    when = f"{started:%Y-%m-%d %H:%M}" if started is not None and not pd.isna(started) else "?"
    label = f"run {run['id']} · {gpu_label(run['gpu_name'])} · {when} · {run['measurements']} rows"
    # An operator run reads as before; a layer, model or paper-protocol run says so.
    scopes = run.get("scopes") or ""
    return label if scopes in ("", Scope.OP.value) else f"{label} · {scopes}"


def load_run(engine: Engine, run_id: int) -> dict | None:
    """Every provenance column of one run (environment and sweep as dicts)."""
    with engine.connect() as conn:
        row = conn.execute(select(Run.__table__).where(Run.id == run_id)).mappings().first()
        if row is None:
            return None
        statuses = conn.execute(select(Measurement.status, func.count()).where(Measurement.run_id == run_id)
                                .group_by(Measurement.status)).all()
        m = Measurement
        scopes = conn.execute(select(m.scope, m.model, m.layers, m.protocol, func.count())
                              .where(m.run_id == run_id).group_by(m.scope, m.model, m.layers, m.protocol)).all()
    run = dict(row)
    run["status_counts"] = {status: int(n) for status, n in statuses}
    # what the rows time, with their counts: {'op': 6, 'layer llama3-8b': 6}
    run["scope_counts"] = {scope_text(*r[:4]): int(r[4]) for r in scopes}
    return run


def _frame(rows: Sequence[Sequence[object]], columns: list[str]) -> pd.DataFrame:
    # Plain tuples: pandas would read a result row's `dtype` column as the row's array dtype.
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def load_slice_runs(engine: Engine, gpu: str, shape: Shape) -> list[int]:
    """Ids of the runs with measurements on this GPU and shape, newest first."""
    stmt = (select(Measurement.run_id).join(Run, Run.id == Measurement.run_id)
            .where(_gpu_filter(gpu), _shape_filter(shape)).distinct().order_by(Measurement.run_id.desc()))
    with engine.connect() as conn:
        return [int(r) for r in conn.execute(stmt).scalars()]


def load_slice(engine: Engine, gpu: str, shape: Shape, run_id: int | None = None) -> pd.DataFrame:
    """The measurements of one GPU and shape: of one run, or (run_id None) the newest measurement of
    each configuration over all runs."""
    m = Measurement
    # the host's issue time per call, for the host-bound mark; rows from before it was stored have none
    columns = [*(getattr(m, c) for c in SLICE_COLUMNS), m.device_state["host_ms"].as_float().label("host_ms")]
    where = and_(_gpu_filter(gpu), _shape_filter(shape))
    stmt = select(*columns).join(Run, Run.id == m.run_id).where(where)
    if run_id is not None:
        stmt = stmt.where(m.run_id == run_id)
    else:
        # Grouping in SQL keeps a store with many repeated runs from shipping every old row to pandas.
        newest = (select(m.config_key, func.max(m.run_id).label("run_id"))
                  .join(Run, Run.id == m.run_id).where(where).group_by(m.config_key).subquery())
        stmt = stmt.join(newest, and_(m.config_key == newest.c.config_key, m.run_id == newest.c.run_id))
    with engine.connect() as conn:
        df = _frame(conn.execute(stmt.order_by(m.id)).all(), [*SLICE_COLUMNS, "host_ms"])
    if df.empty:
        return df.assign(roofline=pd.Series(dtype=float), bound=pd.Series(dtype=str))
    peaks = load_peaks(engine, sorted({int(r) for r in df["run_id"]}))
    df = with_roofline(df.assign(dtype=shape.dtype), peaks).drop(columns="dtype")
    return df.astype({"order_m": "Int64", "seq_len": "int64"})


def load_peaks(engine: Engine, run_ids: Sequence[int]) -> dict[int, dict]:
    """The device peaks each run measured at its start (copy bandwidth, matmul rate), by run id;
    a run without them is left out."""
    with engine.connect() as conn:
        rows = conn.execute(select(Run.id, Run.environment).where(Run.id.in_(list(run_ids)))).all()
    return {int(run): env["peaks"] for run, env in rows if isinstance(env, dict) and env.get("peaks")}


def load_run_measurements(engine: Engine, run_id: int, samples: bool = True) -> pd.DataFrame:
    """One run's measurements for comparing runs; samples_ms (decoded lists) only if asked for."""
    m = Measurement
    names = [*COMPARE_COLUMNS, "samples_ms"] if samples else list(COMPARE_COLUMNS)
    stmt = select(*[getattr(m, c) for c in names]).where(m.run_id == run_id).order_by(m.id)
    with engine.connect() as conn:
        return _frame(conn.execute(stmt).all(), names)


# --- series and speedups --------------------------------------------------------------------------


def series_label(method: str, order_m: object) -> str:
    """One curve per method and order m: 'tensorized m=2', 'flash2'."""
    return method if order_m is None or pd.isna(order_m) else f"{method} m={int(order_m)}"  # type: ignore[arg-type]


def format_length(n: float) -> str:
    """4096 -> '4k', 1536 -> '1.5k', 1048576 -> '1M', 300 -> '300'."""
    if n >= 2**20 and n % 2**18 == 0:
        return f"{n / 2**20:g}M"
    if n >= 1024 and n % 256 == 0:
        return f"{n / 1024:g}k"
    return f"{n:,.0f}"


def curve_points(df: pd.DataFrame) -> pd.DataFrame:
    """One point per series and length. Where a method was measured with several foldings at one
    length, the curve follows the fastest ok one; a failure shows only where nothing succeeded."""
    if df.empty:
        return df.assign(series=pd.Series(dtype=str))
    out = df.assign(series=[series_label(m, o) for m, o in zip(df["method"], df["order_m"], strict=True)],
                    _failed=(~df["status"].isin(TIMED_STATUSES)).astype(int))
    out = out.sort_values(["series", "seq_len", "_failed", "median_ms"], na_position="last", kind="stable")
    return out.drop_duplicates(["series", "seq_len"]).drop(columns="_failed").reset_index(drop=True)


# --- leaderboard ----------------------------------------------------------------------------------


def leaderboard(df: pd.DataFrame, seq_len: int, baseline: str | None) -> pd.DataFrame:
    """Every configuration at one length: ok rows ranked by median time (rank 1 = fastest), then
    the failures, with their status kept."""
    rows = with_speedup(df, baseline)
    rows = rows[rows["seq_len"] == seq_len].copy()
    ok = rows["status"].isin(TIMED_STATUSES)
    rows["_failed"] = (~ok).astype(int)
    rows = rows.sort_values(["_failed", "median_ms", "method", "order_m"], na_position="last", kind="stable")
    rows = rows.drop(columns="_failed").reset_index(drop=True)
    ranks = rows["status"].isin(TIMED_STATUSES).cumsum()
    rows["rank"] = ranks.where(rows["status"].isin(TIMED_STATUSES)).astype("Int64")
    return rows


def with_over_forward(df: pd.DataFrame, forward: pd.DataFrame, mode: str) -> pd.DataFrame:
    """A training slice (`mode` bwd or fwd_bwd) with `over_fwd`: each row's time over the forward
    of the same configuration in the same run (`forward`: the slice of the same GPU and shape in
    fwd mode), NaN where that run did not time it. Within one run only, so that the ratio never
    spans two machines or two versions of the code."""
    rows = pd.concat([df.assign(mode=mode), forward.assign(mode=Mode.FWD.value)], ignore_index=True)
    ratio = over_forward(rows, within=("run_id",))
    return df.assign(over_fwd=ratio.iloc[:len(df)].to_numpy())


def fmt_number(value: object, spec: str, missing: str = "n/a") -> str:
    if value is None or pd.isna(value):  # type: ignore[arg-type]
        return missing
    return format(float(value), spec)  # type: ignore[arg-type]


def _mib(value: object) -> str:
    if value is None or pd.isna(value):  # type: ignore[arg-type]
        return "n/a"
    mib = float(value) / 2**20  # type: ignore[arg-type]
    return f"{mib:,.0f}" if mib >= 100 else f"{mib:.3g}"


LEADERBOARD_METRICS = ("median ms", "p20–p80 ms", "speedup", "TFLOP/s", "TB/s", "roofline", "peak MiB",
                       "total MiB", "fidelity (rel L2)")


def status_text(status: str, throttled: object = None, host_bound: float | None = None) -> str:
    """A row's status; a timed row also says where its clocks were limited, and where the host took
    longer to issue its call than the GPU to run it (`host_bound`: that time, analysis/host.py)."""
    if status in TIMED_STATUSES:
        text = "ok" if status == "ok" else UNCHECKED_TEXT
        text = f"{text} (clocks limited)" if throttled is True else text
        return text if host_bound is None else f"{text} ({host_bound_text(host_bound)})"
    return STATUS_MARKERS.get(status, status)


def _roofline_cell(share: object, bound: object) -> str:
    """'63% flops' where the run measured its device's peaks, else 'n/a'."""
    if share is None or pd.isna(share) or not bound:  # type: ignore[arg-type]
        return "n/a"
    return roofline_text(Roofline(float(share), Bound(str(bound))))  # type: ignore[arg-type]


def format_leaderboard(table: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """The leaderboard as text cells. A failed configuration carries its status marker in every
    metric column; 'n/a' means the metric was not measured for an ok row; 'no baseline' means the
    baseline has no ok measurement at this length."""
    records = []
    for row in table.itertuples(index=False):
        ok = row.status in TIMED_STATUSES
        marker = status_text(row.status)
        host_bound = host_bound_ms(getattr(row, "host_ms", None), row.median_ms)
        metric = (lambda text, _ok=ok, _marker=marker: text if _ok else _marker)  # noqa: E731
        if ok and row.method == row.baseline_method and row.median_ms == row.baseline_ms:
            # the row that sets the baseline time (a baseline at several orders m has one; the
            # fastest exact method may be another method at each length)
            speedup = "1.00× (baseline)"
        elif ok and pd.isna(row.baseline_ms):
            speedup = "no baseline"
        else:
            speedup = fmt_number(row.speedup, ".2f") + "×"
        records.append({
            "rank": "" if pd.isna(row.rank) else f"#{row.rank}",
            "method": row.method,
            "family": row.family,
            "m": "" if pd.isna(row.order_m) else str(int(row.order_m)),
            "dims": row.dims or "",
            "status": status_text(row.status, row.throttled, host_bound),
            "median ms": metric(fmt_number(row.median_ms, ".4g")),
            "p20–p80 ms": metric(f"{fmt_number(row.p20_ms, '.4g')}–{fmt_number(row.p80_ms, '.4g')}"),
            "speedup": metric(speedup),
            "× fwd": metric(fmt_number(getattr(row, "over_fwd", None), ".2f") + "×"),
            "TFLOP/s": metric(fmt_number(row.tflops, ".3g")),
            "TB/s": metric(fmt_number(row.tbps, ".3g")),
            "roofline": metric(_roofline_cell(row.roofline, row.bound)),
            "peak MiB": metric(_mib(row.peak_bytes)),
            "total MiB": metric(_mib(row.total_peak_bytes)),
            # Fidelity is measured before timing, so a row that failed later can still have it.
            "fidelity (rel L2)": fmt_number(row.fidelity_rel_l2, ".2e", missing=marker if not ok else "n/a"),
            "provenance": row.provenance or "",
            "message": row.message or "",
            "run": int(row.run_id),
        })
    metrics = list(LEADERBOARD_METRICS)
    if "over_fwd" in table.columns and table["over_fwd"].notna().any():
        metrics.insert(metrics.index("speedup"), "× fwd")  # a training slice whose runs timed the forward too
    columns = ["rank", "method", "family", "m", "dims", "status", *metrics, "provenance", "message", "run"]
    return pd.DataFrame(records, columns=columns)


# --- families -------------------------------------------------------------------------------------


def family_best(df: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """The best method of each family at each length: of the family's timed rows (ok or unchecked)
    at that length, the one with the lowest median; a tie goes to the method and order listed first.
    Families in FAMILY_ORDER, then by length. A family with no timed row at a length has no row
    there. Speedups over `baseline` as everywhere else (analysis.speedup)."""
    rows = with_speedup(df, baseline)
    rows = rows[rows["status"].isin(TIMED_STATUSES) & rows["median_ms"].notna()]
    rows = rows.sort_values(["median_ms", "method", "order_m"], na_position="last", kind="stable")
    best = rows.drop_duplicates(["family", "seq_len"])
    best = sort_by_family(best, then=["seq_len"]).reset_index(drop=True)
    return best.assign(series=[series_label(m, o) for m, o in zip(best["method"], best["order_m"], strict=True)])


def format_family_best(table: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """family_best as text cells, one row per family and length."""
    records = []
    for row in table.itertuples(index=False):
        speedup = "no baseline" if pd.isna(row.speedup) else fmt_number(row.speedup, ".2f") + "×"
        records.append({
            "family": row.family,
            "N": format_length(int(row.seq_len)),
            "best method": row.method,
            "m": "" if pd.isna(row.order_m) else str(int(row.order_m)),
            "dims": row.dims or "",
            "status": status_text(row.status, row.throttled),
            "median ms": fmt_number(row.median_ms, ".4g"),
            "p20–p80 ms": f"{fmt_number(row.p20_ms, '.4g')}–{fmt_number(row.p80_ms, '.4g')}",
            "speedup": speedup,
            "fidelity (rel L2)": fmt_number(row.fidelity_rel_l2, ".2e"),
            "run": int(row.run_id),
        })
    columns = ["family", "N", "best method", "m", "dims", "status", "median ms", "p20–p80 ms", "speedup",
               "fidelity (rel L2)", "run"]
    return pd.DataFrame(records, columns=columns)


# --- crossover ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crossover:
    """Where a method starts beating the baseline for good. kind: 'crossing' (length interpolated
    between two measured lengths), 'always' (from the shortest measured length), 'never' (still
    slower at the longest one), 'no data' (no length where both can be compared)."""

    kind: str
    length: float | None = None

    @property
    def text(self) -> str:
        if self.kind == "crossing":
            return f"≈ {format_length(round(self.length or 0))}"
        if self.kind == "always":
            return f"always (from the shortest measured, {format_length(self.length or 0)})"
        if self.kind == "never":
            return f"never (slower up to {format_length(self.length or 0)})"
        return "no data"


def efficiency_length(lengths: Sequence[float], ratios: Sequence[float]) -> Crossover:
    """The shortest length from which `ratio` (method time / baseline time) stays below 1.

    Between the last losing and the first winning length of the final winning streak, log(ratio)
    is interpolated linearly in log2(length): times grow roughly as powers of the length, so that
    line is close to straight. A ratio of 0 (the baseline failed) or infinity (the method failed)
    has no logarithm; the crossing is then put at the first winning length."""
    points = sorted((float(n), float(r)) for n, r in zip(lengths, ratios, strict=True) if not math.isnan(r))
    if not points:
        return Crossover("no data")
    if points[-1][1] >= 1:
        return Crossover("never", points[-1][0])
    last_loss = max((i for i, (_, r) in enumerate(points) if r >= 1), default=None)
    if last_loss is None:
        return Crossover("always", points[0][0])
    (n0, r0), (n1, r1) = points[last_loss], points[last_loss + 1]
    if math.isinf(r0) or r1 == 0:
        return Crossover("crossing", n1)
    x0, x1 = math.log2(n0), math.log2(n1)
    t = math.log(r0) / (math.log(r0) - math.log(r1))
    return Crossover("crossing", 2 ** (x0 + t * (x1 - x0)))


def _ratio(method_row: pd.Series | None, base_row: pd.Series | None) -> float:
    """method time / baseline time at one length; capacity failures count as 0 or infinity."""
    method_ok = method_row is not None and method_row["status"] in TIMED_STATUSES
    base_ok = base_row is not None and base_row["status"] in TIMED_STATUSES
    if method_ok and base_ok:
        return float(method_row["median_ms"]) / float(base_row["median_ms"])  # type: ignore[index]
    method_failed = method_row is not None and method_row["status"] in CAPACITY_FAILURES
    base_failed = base_row is not None and base_row["status"] in CAPACITY_FAILURES
    if method_ok and base_failed:
        return 0.0
    if base_ok and method_failed:
        return math.inf
    return math.nan


def _baseline_points(points: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """The baseline's point at each length, indexed by length: its fastest timed row there, else a
    failed one (so that a length where the baseline ran out of memory still counts)."""
    rows = points[baseline_rows(points, baseline)]
    # timed first, then capacity failures (they count as the baseline losing), then other statuses
    rows = rows.assign(_failed=[0 if s in TIMED_STATUSES else 1 if s in CAPACITY_FAILURES else 2
                                for s in rows["status"]])
    rows = rows.sort_values(["seq_len", "_failed", "median_ms"], na_position="last", kind="stable")
    return rows.drop_duplicates("seq_len").drop(columns="_failed").set_index("seq_len")


def crossover_table(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per method and order m: the efficiency length against the baseline, and the speedup at the
    longest length where both were measured."""
    points = curve_points(df)
    base = _baseline_points(points, baseline)
    # every series but the baseline's own (against the fastest exact method: every exact method)
    rivals = ~baseline_rows(points, baseline)
    records = []
    for series, rows in points[rivals].groupby("series", sort=True):
        lengths, ratios = [], []
        for _, row in rows.iterrows():
            n = int(row["seq_len"])
            lengths.append(n)
            ratios.append(_ratio(row, base.loc[n] if n in base.index else None))
        crossing = efficiency_length(lengths, ratios)
        finite = [(n, r) for n, r in zip(lengths, ratios, strict=True) if 0 < r < math.inf]
        longest = max(finite) if finite else None
        first = rows.iloc[0]
        records.append({
            "series": series,
            "method": first["method"],
            "family": first["family"],
            "m": first["order_m"],
            "efficiency length": crossing.text,
            "kind": crossing.kind,
            "length": crossing.length,
            "compared lengths": ", ".join(format_length(n) for n, r in zip(lengths, ratios, strict=True)
                                          if not math.isnan(r)),
            "speedup at longest": f"{1 / longest[1]:.2f}× at {format_length(longest[0])}" if longest else "n/a",
        })
    columns = ["series", "method", "family", "m", "efficiency length", "kind", "length", "compared lengths",
               "speedup at longest"]
    return pd.DataFrame(records, columns=columns)


# --- order m --------------------------------------------------------------------------------------


def order_table(df: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Tensorized rows by length and order m, with speedup and fidelity."""
    rows = with_speedup(df, baseline)
    rows = rows[(rows["family"] == "tensorized") & rows["order_m"].notna()]
    rows = rows.sort_values(["method", "seq_len", "order_m", "median_ms"], kind="stable")
    return rows.reset_index(drop=True)


# --- end to end -----------------------------------------------------------------------------------

# What analysis.endtoend needs of a row, and which run and configuration it is.
SCOPED_COLUMNS = (
    "id", "run_id", "config_key", "method", "family", "order_m", "dims", "seq_len", "batch", "heads", "kv_heads",
    "head_dim", "dtype", "causal", "device", "timing_mode", "mode", "scope", "model", "layers", "protocol",
    "status", "median_ms", "mean_ms", "peak_bytes", "device_state",
)
# The paper's headline (docs/paper-figure5.md): the whole Llama-8B model with tensorized attention
# against the same model with FlashAttention-2, at 128k tokens, batch 5, on the paper's GPU.
PAPER_SPEEDUP = 11.0
PAPER_LENGTH = 131072
PAPER_LABEL = "paper: 11x at 128k (Llama-8B, FA2, batch 5)"
PAPER_BASIS = ("whole model vs FlashAttention-2, on the paper's GPU (Figure 5 does not name it), "
               "mean of 50 forward passes")


def load_scoped_gpus(engine: Engine) -> list[str]:
    """GPUs (or CPU) with layer- or model-scope measurements, most measured first."""
    stmt = (select(Run.gpu_name, func.count().label("n")).join(Measurement, Measurement.run_id == Run.id)
            .where(Measurement.scope != Scope.OP.value).group_by(Run.gpu_name))
    with engine.connect() as conn:
        counts = pd.DataFrame([(gpu_label(g), int(n)) for g, n in conn.execute(stmt).all()], columns=["gpu", "n"])
    counts = counts.groupby("gpu", as_index=False)["n"].sum()
    return list(counts.sort_values(["n", "gpu"], ascending=[False, True], kind="stable")["gpu"])


def load_scoped(engine: Engine, gpu: str) -> pd.DataFrame:
    """On one GPU: every layer- and model-scope row, and the op-scope rows of the same attention
    shapes, which give the attention share. All runs; newest_measurements picks among them."""
    m = Measurement
    columns = [getattr(m, c) for c in SCOPED_COLUMNS]
    scoped = select(*columns).join(Run, Run.id == m.run_id).where(_gpu_filter(gpu), m.scope != Scope.OP.value)
    shape = ("batch", "heads", "kv_heads", "head_dim", "dtype", "causal")
    shapes = (select(*[getattr(m, c) for c in shape]).join(Run, Run.id == m.run_id)
              .where(_gpu_filter(gpu), m.scope != Scope.OP.value).distinct().subquery())
    ops = (select(*columns).join(Run, Run.id == m.run_id)
           .join(shapes, and_(*[getattr(m, c) == shapes.c[c] for c in shape]))
           .where(_gpu_filter(gpu), m.scope == Scope.OP.value))
    with engine.connect() as conn:
        rows = [*conn.execute(scoped.order_by(m.id)).all(), *conn.execute(ops.order_by(m.id)).all()]
    df = _frame(rows, list(SCOPED_COLUMNS))
    return df.astype({"order_m": "Int64", "seq_len": "int64"}) if not df.empty else df


def scoped_runs(frame: pd.DataFrame) -> list[int]:
    """The runs behind a load_scoped frame, newest first."""
    return sorted((int(r) for r in frame["run_id"].unique()), reverse=True) if not frame.empty else []


def newest_measurements(frame: pd.DataFrame, run_ids: Sequence[int]) -> pd.DataFrame:
    """The rows of the given runs; a configuration measured by several of them keeps its newest."""
    rows = frame[frame["run_id"].isin(list(run_ids))]
    return rows.sort_values("run_id", kind="stable").drop_duplicates("config_key", keep="last").reset_index(
        drop=True)


def end_to_end_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """analysis.endtoend.end_to_end on the chosen rows, with each row's curve label."""
    table = end_to_end(frame)
    if table.empty:
        return table
    return table.assign(series=[series_label(m, o) for m, o in zip(table["method"], table["order_m"], strict=True)])


def end_to_end_references(table: pd.DataFrame) -> list[str]:
    """The methods end_to_end measured speedups over (its x<method> columns), in its order."""
    return [c[1:] for c in table.columns if c.startswith("x")]


def end_to_end_slice(table: pd.DataFrame, model: str, scope: str, batch: int, protocol: str) -> pd.DataFrame:
    """One model, scope, batch and protocol of end_to_end_rows."""
    keep = ((table["model"] == model) & (table["scope"] == scope) & (table["batch"] == batch)
            & (table["protocol"] == protocol))
    return table[keep].reset_index(drop=True)


def _gib(value: object) -> str:
    if value is None or pd.isna(value):  # type: ignore[arg-type]
        return "n/a"
    return f"{float(value) / 2**30:.3g}"  # type: ignore[arg-type]


def format_end_to_end(table: pd.DataFrame) -> pd.DataFrame:
    """end_to_end_slice as text cells, by length then method: the time, the speedups, the share of
    the layer's time spent in attention (Amdahl's bound) and the peak memory."""
    references = end_to_end_references(table)
    model_scope = (table["scope"] == Scope.MODEL.value).any()
    records = []
    for row in table.sort_values(["seq_len", "method", "order_m"], kind="stable").to_dict("records"):
        record = {
            "N": format_length(int(row["seq_len"])),
            "method": row["method"],
            "m": "" if pd.isna(row["order_m"]) else str(int(row["order_m"])),
            "dims": row["dims"] or "",
            "ms": fmt_number(row["ms"], ".4g"),
            "ms per layer": fmt_number(row["per_layer_ms"], ".4g"),
            **{f"× {r}": fmt_number(row[f"x{r}"], ".2f", "no " + r) + ("" if pd.isna(row[f"x{r}"]) else "×")
               for r in references},
            "attention share": fmt_number(100 * row["attention_share"], ".1f", "no op row")
            + ("" if pd.isna(row["attention_share"]) else " %"),
            "peak GiB": _gib(row["peak_bytes"]),
        }
        if model_scope:
            estimate = row["full_depth_ms_estimate"]
            record["full depth ms (estimate)"] = fmt_number(estimate, ".4g", "—")
            basis = row["estimate_basis"]
            record["estimate basis"] = basis if isinstance(basis, str) else ""
        records.append(record)
    return pd.DataFrame(records)
