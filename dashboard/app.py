"""The tbench leaderboard dashboard, a Streamlit script: `tbench dashboard --db URL`, or
`streamlit run app.py -- --db URL`. It only reads the store."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import hex_to_rgb, qualitative

from tbench.core.case import MODE_NAMES, Mode
from tbench.core.sweep import BEST_EXACT
from tbench.dashboard import data
from tbench.dashboard import quality as quality_data
from tbench.dashboard.compare import compare_runs
from tbench.results.url import masked

VIEWS = ("Leaderboard", "Families", "Speedup curves", "Time and memory", "Crossover", "Order m", "End to end",
         "Quality", "Compare runs", "Run details")
DEFAULT_BASELINE = BEST_EXACT
CACHE_TTL_S = 60  # new runs show up within a minute without a reload
LATEST = "latest"

STATUS_COLOURS = {"ok": "", "oom": "#f8d7da", "timeout": "#f8d7da", "error": "#f8d7da", "wrong": "#f5c2c7",
                  "unsupported": "#fff3cd", "skipped": "#fff3cd", "unchecked": "#ffe5b4"}
VERDICT_COLOURS = {"FASTER": "#d1e7dd", "SLOWER": "#f8d7da", "SAME": "#e9ecef", "UNSURE": "#fff3cd"}


# --- cached reads (keyed by the database URL) -----------------------------------------------------


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Any:
    return data.open_readonly(url)


@st.cache_data(ttl=5, show_spinner=False)
def _state(url: str) -> data.StoreState:
    return data.probe(url, _engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _slices(url: str) -> pd.DataFrame:
    return data.load_slices(_engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _runs(url: str) -> pd.DataFrame:
    return data.load_runs(_engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _slice_runs(url: str, gpu: str, shape: data.Shape) -> list[int]:
    return data.load_slice_runs(_engine(url), gpu, shape)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _slice(url: str, gpu: str, shape: data.Shape, run_id: int | None) -> pd.DataFrame:
    return data.load_slice(_engine(url), gpu, shape, run_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _quality(url: str) -> pd.DataFrame:
    return quality_data.load_quality(_engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _speed(url: str, gpu: str) -> pd.DataFrame:
    return quality_data.load_speed(_engine(url), gpu)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _scoped_gpus(url: str) -> list[str]:
    return data.load_scoped_gpus(_engine(url))


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _scoped(url: str, gpu: str) -> pd.DataFrame:
    return data.load_scoped(_engine(url), gpu)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _run(url: str, run_id: int) -> dict | None:
    return data.load_run(_engine(url), run_id)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False)
def _comparison(url: str, before: int, after: int) -> pd.DataFrame:
    # The only view that reads samples_ms, and only for the two runs compared.
    engine = _engine(url)
    return compare_runs(data.load_run_measurements(engine, before, samples=True),
                        data.load_run_measurements(engine, after, samples=True))


# --- selections that live in the URL --------------------------------------------------------------


def _param(value: object) -> str:
    return value.slug if isinstance(value, data.Shape) else str(value)


def choose(widget: Callable[..., Any], label: str, options: Sequence[Any], key: str, default: Any = None,
           **kwargs: Any) -> Any:
    """A single-choice widget whose value is kept in the query parameter `key`: a link opens the
    same selection, and a value that no longer exists falls back to `default`."""
    options = list(options)
    if not options:
        return None
    if st.session_state.get(key) not in options:
        wanted = st.query_params.get(key)
        match = next((o for o in options if _param(o) == wanted), None)
        st.session_state[key] = match if match is not None else (default if default in options else options[0])
    value = widget(label, options, key=key, **kwargs)
    st.query_params[key] = _param(value)
    return value


def choose_many(widget: Callable[..., Any], label: str, options: Sequence[str], key: str,
                **kwargs: Any) -> list[str]:
    """A multi-choice widget kept in the query parameter `key` (comma-separated; absent = all)."""
    options = list(options)
    current = st.session_state.get(key)
    if not isinstance(current, list) or not set(current) <= set(options):
        wanted = st.query_params.get(key)
        picked = [o for o in options if o in wanted.split(",")] if wanted else []
        st.session_state[key] = picked or options
    value = widget(label, options, key=key, **kwargs)
    if set(value) == set(options):
        st.query_params.pop(key, None)
    else:
        st.query_params[key] = ",".join(value)
    return list(value)


# --- charts ---------------------------------------------------------------------------------------


def colour_map(series: Sequence[str]) -> dict[str, str]:
    palette = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
    return {name: palette[i % len(palette)] for i, name in enumerate(sorted(series))}


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(colour)
    return f"rgba({r},{g},{b},{alpha})"


def _length_axis(fig: go.Figure, lengths: Sequence[int]) -> None:
    ticks = sorted(set(int(n) for n in lengths))
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[data.format_length(n) for n in ticks],
                     title_text="sequence length N (log2 scale)")


def _layout(fig: go.Figure, y_title: str, log_y: bool = True) -> go.Figure:
    fig.update_yaxes(type="log" if log_y else "linear", title_text=y_title)
    fig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend_title_text="method")
    return fig


def speedup_figure(points: pd.DataFrame, baseline: str, colours: dict[str, str]) -> go.Figure:
    fig = go.Figure()
    for series, rows in points[points["status"].isin(data.TIMED_STATUSES)].groupby("series", sort=True):
        rows = rows.sort_values("seq_len")
        rows = rows[rows["speedup"].notna()]
        if rows.empty:
            continue
        colour = colours[series]
        x = list(rows["seq_len"])
        fig.add_trace(go.Scatter(
            x=x + x[::-1], y=list(rows["speedup_hi"]) + list(rows["speedup_lo"])[::-1], fill="toself", mode="lines",
            fillcolor=_rgba(colour, 0.18), line={"width": 0}, hoverinfo="skip", showlegend=False,
            legendgroup=series, name=f"{series} p20–p80"))
        fig.add_trace(go.Scatter(
            x=x, y=rows["speedup"], mode="lines+markers", name=series, legendgroup=series,
            line={"color": colour, "dash": "dash" if series == baseline else "solid"},
            hovertemplate=f"{series}<br>N=%{{x}}<br>speedup %{{y:.2f}}×<extra></extra>"))
    _unchecked_marks(fig, points, "speedup", colours)
    fig.add_hline(y=1.0, line={"color": "grey", "width": 1, "dash": "dot"})
    _length_axis(fig, points["seq_len"])
    return _layout(fig, f"speedup vs {data.baseline_label(baseline)} (×, log scale)")


def _failure_marks(fig: go.Figure, points: pd.DataFrame, column: str, colours: dict[str, str],
                   scale: float = 1.0) -> None:
    """Marks capacity failures (OOM, timeout) at the height of the series' highest ok point, so
    they sit where the curve stops."""
    ok_values = points.loc[points["status"].isin(data.TIMED_STATUSES), column].dropna().astype(float)
    top = float(ok_values.max()) * scale if not ok_values.empty else 1.0
    failed = points[points["status"].isin(data.CAPACITY_FAILURES)]
    for series, rows in failed.groupby("series", sort=True):
        own = points[(points["series"] == series) & (points["status"].isin(data.TIMED_STATUSES))][column].dropna()
        y = float(own.astype(float).max()) * scale if not own.empty else top
        rows = rows.sort_values("seq_len")
        markers = [data.STATUS_MARKERS[s] for s in rows["status"]]
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=[y] * len(rows), mode="markers+text", legendgroup=series, showlegend=False,
            marker={"symbol": "x", "size": 12, "color": colours[series], "line": {"width": 1, "color": "white"}},
            # only the first failure is labelled: the series' later ones would stack their labels
            text=[m if i == 0 else "" for i, m in enumerate(markers)], customdata=markers,
            textposition="top center", name=f"{series} failed",
            hovertemplate=f"{series}<br>N=%{{x}}<br>%{{customdata}}<extra></extra>"))


def _unchecked_marks(fig: go.Figure, points: pd.DataFrame, column: str, colours: dict[str, str]) -> None:
    """Rings around points timed without the correctness gate: plotted like ok ones, but marked."""
    unchecked = points[(points["status"] == "unchecked") & points[column].notna()]
    for series, rows in unchecked.groupby("series", sort=True):
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=rows[column], mode="markers", legendgroup=series, showlegend=False,
            marker={"symbol": "circle-open", "size": 16, "color": colours[series], "line": {"width": 2}},
            name=f"{series} unchecked",
            hovertemplate=f"{series}<br>N=%{{x}}<br>{data.UNCHECKED_TEXT}<extra></extra>"))


def time_figure(points: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    fig = go.Figure()
    for series, rows in points[points["status"].isin(data.TIMED_STATUSES)].groupby("series", sort=True):
        rows = rows.sort_values("seq_len")
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=rows["median_ms"], mode="lines+markers", name=series, legendgroup=series,
            line={"color": colours[series]},
            error_y={"type": "data", "symmetric": False, "array": rows["p80_ms"] - rows["median_ms"],
                     "arrayminus": rows["median_ms"] - rows["p20_ms"], "thickness": 1},
            hovertemplate=f"{series}<br>N=%{{x}}<br>%{{y:.4g}} ms<extra></extra>"))
    _failure_marks(fig, points, "median_ms", colours)
    _unchecked_marks(fig, points, "median_ms", colours)
    _length_axis(fig, points["seq_len"])
    return _layout(fig, "median time (ms, log scale)")


def family_colours(families: Sequence[str]) -> dict[str, str]:
    """One fixed colour per family, so a family keeps its colour whichever families are shown."""
    known = [*data.FAMILY_ORDER, *sorted(set(families) - set(data.FAMILY_ORDER))]
    return {family: qualitative.Set1[i % len(qualitative.Set1)] for i, family in enumerate(known)}


def frontier_figure(best: pd.DataFrame) -> go.Figure:
    """Time against N, one line per family through its best method at each length (data.family_best)."""
    fig = go.Figure()
    colours = family_colours(list(best["family"].unique()))
    for family in dict.fromkeys(best["family"]):
        rows = best[best["family"] == family].sort_values("seq_len")
        labels = [f"{series}" + ("" if status == "ok" else f" ({data.UNCHECKED_TEXT})")
                  for series, status in zip(rows["series"], rows["status"], strict=True)]
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=rows["median_ms"], mode="lines+markers", name=family, legendgroup=family,
            line={"color": colours[family]}, customdata=labels,
            marker={"symbol": ["circle" if s == "ok" else "circle-open" for s in rows["status"]], "size": 9},
            hovertemplate=f"{family}: %{{customdata}}<br>N=%{{x}}<br>%{{y:.4g}} ms<extra></extra>"))
    _length_axis(fig, best["seq_len"])
    _layout(fig, "median time of the family's best method (ms, log scale)")
    fig.update_layout(legend_title_text="family")
    return fig


def memory_figure(points: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    points = points.assign(peak_mib=points["peak_bytes"].astype(float) / 2**20)
    fig = go.Figure()
    timed = points[points["status"].isin(data.TIMED_STATUSES) & points["peak_mib"].notna()]
    for series, rows in timed.groupby("series"):
        rows = rows.sort_values("seq_len")
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=rows["peak_mib"], mode="lines+markers", name=series, legendgroup=series,
            line={"color": colours[series]},
            hovertemplate=f"{series}<br>N=%{{x}}<br>%{{y:,.1f}} MiB<extra></extra>"))
    _failure_marks(fig, points, "peak_mib", colours)
    _length_axis(fig, points["seq_len"])
    return _layout(fig, "peak memory beyond the inputs (MiB, log scale)")


def order_figure(rows: pd.DataFrame, column: str, y_title: str) -> go.Figure:
    fig = go.Figure()
    palette = qualitative.Plotly
    lengths = sorted(rows["seq_len"].unique())
    for i, n in enumerate(lengths):
        for method, group in rows[rows["seq_len"] == n].groupby("method", sort=True):
            group = group[group[column].notna()].sort_values("order_m")
            if group.empty:
                continue
            name = data.format_length(n) + ("" if rows["method"].nunique() == 1 else f" {method}")
            fig.add_trace(go.Scatter(
                x=group["order_m"].astype(int), y=group[column], mode="lines+markers", name=name,
                line={"color": palette[i % len(palette)]}, text=group["dims"],
                hovertemplate=f"N={data.format_length(n)} m=%{{x}} (%{{text}})<br>%{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title_text="order m", dtick=1)
    fig = _layout(fig, y_title)
    fig.update_layout(legend_title_text="length N")
    return fig


def scoped_time_figure(rows: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    """Time of the layer (or of the K-layer model) against N, one line per method and order."""
    fig = go.Figure()
    for series, group in rows.groupby("series", sort=True):
        group = group.sort_values("seq_len")
        fig.add_trace(go.Scatter(
            x=group["seq_len"], y=group["ms"], mode="lines+markers", name=series, legendgroup=series,
            line={"color": colours[series]}, hovertemplate=f"{series}<br>N=%{{x}}<br>%{{y:.4g}} ms<extra></extra>"))
    _length_axis(fig, rows["seq_len"])
    layers = int(rows["layers"].max())
    what = "one layer" if (rows["scope"] == "layer").all() else f"the model, {layers} layer{'s' * (layers != 1)}"
    return _layout(fig, f"time of {what} (ms, log scale)")


def end_to_end_speedup_figure(rows: pd.DataFrame, references: Sequence[str], colours: dict[str, str]) -> go.Figure:
    """Speedup over each reference (solid: the first, dashed: the next) against N, with the paper's
    headline as a horizontal mark."""
    fig = go.Figure()
    for i, reference in enumerate(references):
        column = f"x{reference}"
        for series, group in rows[rows["method"] != reference].groupby("series", sort=True):
            group = group[group[column].notna()].sort_values("seq_len")
            if group.empty:
                continue
            fig.add_trace(go.Scatter(
                x=group["seq_len"], y=group[column], mode="lines+markers", name=f"{series} vs {reference}",
                legendgroup=series, line={"color": colours[series], "dash": "solid" if i == 0 else "dash"},
                hovertemplate=f"{series} vs {reference}<br>N=%{{x}}<br>%{{y:.2f}}×<extra></extra>"))
    fig.add_hline(y=1.0, line={"color": "grey", "width": 1, "dash": "dot"})
    fig.add_hline(y=data.PAPER_SPEEDUP, line={"color": "#b02a37", "width": 1.5, "dash": "dashdot"},
                  annotation_text=f"{data.PAPER_LABEL}<br><sup>{data.PAPER_BASIS}</sup>",
                  annotation_position="top left", annotation_font_color="#b02a37")
    _length_axis(fig, [*rows["seq_len"], data.PAPER_LENGTH])
    reference_text = " and ".join(references) or "no reference"
    return _layout(fig, f"speedup vs {reference_text} (×, log scale)")


def scoped_memory_figure(rows: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    rows = rows.assign(peak_gib=rows["peak_bytes"].astype(float) / 2**30)
    fig = go.Figure()
    for series, group in rows[rows["peak_gib"].notna()].groupby("series", sort=True):
        group = group.sort_values("seq_len")
        fig.add_trace(go.Scatter(
            x=group["seq_len"], y=group["peak_gib"], mode="lines+markers", name=series, legendgroup=series,
            line={"color": colours[series]}, hovertemplate=f"{series}<br>N=%{{x}}<br>%{{y:.3g}} GiB<extra></extra>"))
    _length_axis(fig, rows["seq_len"])
    return _layout(fig, "peak memory (GiB, log scale)")


def ranking_figure(table: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    """Median time (dot) and p20–p80 (whiskers) of each configuration at one length, in leaderboard
    order; a dot plot because bars on a log axis would start at an arbitrary value. Failures are
    named where a dot would be."""
    series = [data.series_label(m, o) for m, o in zip(table["method"], table["order_m"], strict=True)]
    labels = [f"{s} {d}" if isinstance(d, str) and d else s for s, d in zip(series, table["dims"], strict=True)]
    table = table.assign(label=labels, series=series)
    ok = table[table["status"].isin(data.TIMED_STATUSES)]
    fig = go.Figure(go.Scatter(
        x=ok["median_ms"], y=ok["label"], mode="markers", showlegend=False,
        marker={"size": 12, "color": [colours[s] for s in ok["series"]]},
        error_x={"type": "data", "symmetric": False, "array": ok["p80_ms"] - ok["median_ms"],
                 "arrayminus": ok["median_ms"] - ok["p20_ms"]},
        hovertemplate="%{y}<br>%{x:.4g} ms<extra></extra>"))
    failed = table[~table["status"].isin(data.TIMED_STATUSES)]
    if not failed.empty:
        left = float(ok["median_ms"].min()) if not ok.empty else 1.0
        fig.add_trace(go.Scatter(
            x=[left] * len(failed), y=failed["label"], mode="text", showlegend=False,
            text=[data.status_text(s) for s in failed["status"]], textposition="middle right",
            textfont={"color": "#b02a37"}, hoverinfo="skip"))
    fig.update_yaxes(categoryorder="array", categoryarray=list(table["label"])[::-1], title_text="")
    fig.update_xaxes(type="log", title_text="median time (ms, log scale)")
    fig.update_layout(height=max(220, 30 * len(table) + 80), margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def _style_status(table: pd.DataFrame) -> Any:
    markers = {data.status_text(s): c for s, c in STATUS_COLOURS.items()}

    def colour_row(row: pd.Series) -> list[str]:
        colour = markers.get(str(row["status"]), "")
        return [f"background-color: {colour}" if colour else "" for _ in row]

    return table.style.apply(colour_row, axis=1)


# --- views ----------------------------------------------------------------------------------------


def show_empty(url: str, state: data.StoreState) -> None:
    st.title("tbench leaderboard")
    if state.kind == "invalid":
        st.error(f"Cannot show `{url}`: {state.message}.")
        return
    st.info(f"Nothing to show yet: {state.message} (`{url}`). Fill it with a benchmark run, then reload "
            "this page.")
    st.code(f"tbench run --db {url}\n\n# without a GPU, a small sweep on the CPU:\n"
            f"tbench run --device cpu --lengths 256,512 --db {url}", language="bash")


def leaderboard_view(df: pd.DataFrame, baseline: str | None, colours: dict[str, str]) -> None:
    lengths = sorted(df["seq_len"].unique())
    base_ok = df[data.baseline_rows(df, baseline) & df["status"].isin(data.TIMED_STATUSES)]["seq_len"]
    default = int(base_ok.max()) if not base_ok.empty else int(lengths[-1])
    n = choose(st.sidebar.select_slider, "Length N (leaderboard)", [int(x) for x in lengths], "n",
               default=default, format_func=data.format_length)
    table = data.leaderboard(df, n, baseline)
    ok = int((table["status"].isin(data.TIMED_STATUSES)).sum())
    shown = data.format_leaderboard(table, baseline)
    st.subheader(f"Leaderboard at N = {data.format_length(n)}")
    st.caption(f"{ok} of {len(table)} configurations ran; ranked by median time (fastest first). A failed "
               "configuration shows its status in every metric. Fidelity: relative L2 deviation from exact "
               "attention. Memory: peak beyond the inputs, and in total. Roofline: the device's floor for the "
               "configuration, max(minimum bytes / copy bandwidth, FLOPs / matmul rate) with both measured at the "
               "start of its run, as a share of its median time, and which floor binds."
               + (" × fwd: a training pass's time over the same configuration's forward in the same run."
                  if "× fwd" in shown.columns else ""))
    st.dataframe(_style_status(shown), hide_index=True, width="stretch")
    st.plotly_chart(ranking_figure(table, colours), key="ranking")


def families_view(df: pd.DataFrame, baseline: str | None) -> None:
    st.subheader("Best method of each family")
    best = data.family_best(df, baseline)
    if best.empty:
        st.info("No method has a timed measurement on this GPU and shape.")
        return
    st.caption("At each length, the fastest configuration of each family (ok or unchecked rows, by median "
               "time). The frontier: one line per family through those times, log-log; hover a point for "
               "the method. An open marker is a time measured without the correctness gate.")
    st.plotly_chart(frontier_figure(best), key="frontier")
    st.dataframe(data.format_family_best(best, baseline), hide_index=True, width="stretch")


def speedup_view(points: pd.DataFrame, baseline: str | None, colours: dict[str, str]) -> None:
    st.subheader("Speedup against sequence length")
    if baseline is None:
        st.warning("No baseline has an ok measurement on this GPU and shape, so there are no speedups.")
        return
    st.caption(f"Speedup = {data.baseline_label(baseline)}'s median / method median at the same length; the band "
               "spans the method's "
               "own p20–p80 times. Above the dotted line the method is faster than the baseline.")
    st.plotly_chart(speedup_figure(points, baseline, colours), key="speedup")


def time_memory_view(points: pd.DataFrame, colours: dict[str, str]) -> None:
    st.subheader("Time and memory against sequence length")
    st.caption("Error bars: p20–p80. ✕ marks a length where the configuration ran out of memory (OOM), was "
               "skipped because it would not fit, or timed out; it is drawn at the height where its curve stops.")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(time_figure(points, colours), key="time")
    with right:
        st.plotly_chart(memory_figure(points, colours), key="memory")


def crossover_view(df: pd.DataFrame, baseline: str | None) -> None:
    st.subheader("Crossover: where each method starts beating the baseline")
    if baseline is None:
        st.warning("No baseline has an ok measurement on this GPU and shape, so there is no crossover.")
        return
    table = data.crossover_table(df, baseline)
    st.caption(f"Efficiency length: the shortest N from which the method stays faster than "
               f"{data.baseline_label(baseline)}, "
               "interpolated between the measured lengths (log of the time ratio, linear in log2 N). A "
               "length where the baseline ran out of memory (or was skipped as too big, or timed out) counts as "
               "a win, one where the method did as a loss.")
    if table.empty:
        st.info("Only the baseline was measured here.")
        return
    shown = table.drop(columns=["series", "kind", "length"]).assign(
        m=[("" if pd.isna(m) else str(int(m))) for m in table["m"]])
    st.dataframe(shown, hide_index=True, width="stretch")


def order_view(df: pd.DataFrame, baseline: str | None) -> None:
    st.subheader("Tensorized attention against its order m")
    rows = data.order_table(df, baseline)
    if rows.empty:
        st.info("No tensorized method was measured on this GPU and shape.")
        return
    ok = rows[rows["status"].isin(data.TIMED_STATUSES)]
    left, right = st.columns(2)
    with left:
        st.plotly_chart(order_figure(ok, "median_ms", "median time (ms, log scale)"), key="order_time")
    with right:
        st.plotly_chart(order_figure(rows, "fidelity_rel_l2", "fidelity: rel. L2 deviation from exact (log)"),
                        key="order_fidelity")
    shown = pd.DataFrame({
        "method": rows["method"], "family": rows["family"], "N": rows["seq_len"].map(data.format_length),
        "m": rows["order_m"].astype(int), "dims": rows["dims"],
        "status": [data.status_text(s, t) for s, t in zip(rows["status"], rows["throttled"], strict=True)],
        "median ms": [data.fmt_number(v, ".4g") if s in data.TIMED_STATUSES else data.status_text(s)
                      for v, s in zip(rows["median_ms"], rows["status"], strict=True)],
        f"speedup vs {data.baseline_label(baseline)}": [
            data.fmt_number(v, ".2f", "no baseline") + ("×" if not pd.isna(v) else "")
            if s in data.TIMED_STATUSES else data.status_text(s)
            for v, s in zip(rows["speedup"], rows["status"], strict=True)],
        "fidelity (rel L2)": [data.fmt_number(v, ".2e") for v in rows["fidelity_rel_l2"]],
    })
    st.dataframe(_style_status(shown), hide_index=True, width="stretch")


def accuracy_figure(table: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    fig = go.Figure()
    for series, rows in table[table["seeds"] > 0].groupby("series", sort=True):
        rows = rows.sort_values("seq_len")
        fig.add_trace(go.Scatter(
            x=rows["seq_len"], y=rows["mean"], mode="lines+markers", name=series,
            line={"color": colours[series]},
            error_y={"type": "data", "symmetric": False, "array": rows["max"] - rows["mean"],
                     "arrayminus": rows["mean"] - rows["min"]},
            hovertemplate=f"{series}<br>N=%{{x}}<br>accuracy %{{y:.3f}}<extra></extra>"))
    _length_axis(fig, table["seq_len"])
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, "held-out accuracy (mean over seeds; bars: min–max)", log_y=False)


def speed_quality_figure(points: pd.DataFrame, colours: dict[str, str]) -> go.Figure:
    fig = go.Figure()
    for _, row in points.iterrows():
        fig.add_trace(go.Scatter(
            x=[row["median_ms"]], y=[row["mean"]], mode="markers", name=row["series"],
            hovertemplate=f"{row['series']}<br>%{{x:.4g}} ms<br>accuracy %{{y:.3f}}<extra></extra>",
            marker={"size": 12, "color": colours.get(row["series"])},
            error_y={"type": "data", "array": [row["std"]]}))
    fig.update_xaxes(type="log", title_text="median forward time (ms, log scale)")
    fig.update_yaxes(range=[-0.02, 1.08])  # the markers at 0 and 1 whole
    return _layout(fig, "MQAR accuracy (mean over seeds ± std)", log_y=False)


def quality_view(url: str, shown: str) -> None:
    st.title("tbench quality")
    df = _quality(url)
    if df.empty:
        st.info("No quality results yet. Train the small recall models with `tbench quality`, then reload.")
        st.code(f"tbench quality --preset default --db {shown}\n\n# without a GPU, a tiny run on the CPU:\n"
                f"tbench quality --device cpu --preset tiny --db {shown}", language="bash")
        return
    gpu = choose(st.sidebar.selectbox, "Device (quality)", list(dict.fromkeys(df["gpu"])), "qgpu")
    df = df[df["gpu"] == gpu]
    tasks = sorted(df["task"].unique())
    task = choose(st.sidebar.selectbox, "Task", tasks, "task", default="mqar")
    table = quality_data.accuracy_by_length(df, task)
    st.subheader(f"{task} accuracy against sequence length · {gpu}")
    st.caption("Held-out accuracy at the scored positions of a small model trained with each attention "
               "method; for each seed the best learning rate of the sweep, then the mean over seeds (bars: "
               "the lowest and highest seed).")
    if not (table["seeds"] > 0).any():
        st.info("No configuration of this task trained successfully.")
    else:
        colours = colour_map(table["series"].unique())
        st.plotly_chart(accuracy_figure(table, colours), key="quality_accuracy")
    if not table.empty:
        shown = pd.DataFrame({"method": table["series"], "N": table["seq_len"].map(data.format_length),
                              **{label: table[column].map(lambda v: data.fmt_number(v, ".3f"))
                                 for label, column in (("accuracy (mean)", "mean"), ("std", "std"), ("min", "min"),
                                                       ("max", "max"))},
                              "seeds": table["seeds"], "failed": table["failed"],
                              "unsupported": table["unsupported"]})
        st.dataframe(shown, hide_index=True, width="stretch")
        distances = quality_data.distance_table(df, task)
        if not distances.empty:
            st.markdown("**Accuracy by distance** from the query to the token it recalls (buckets [d, 2d))")
            pivot = distances.pivot_table(index=["series", "seq_len"], columns="distance", values="accuracy")
            pivot.columns = [f"d ≥ {c}" for c in pivot.columns]
            st.dataframe(pivot.map("{:.2f}".format).reset_index(), hide_index=True, width="stretch")
    st.subheader("Speed against quality")
    lengths = sorted(int(n) for n in table[table["seeds"] > 0]["seq_len"].unique()) if task == "mqar" else []
    chosen = quality_data.chart_length(table) if task == "mqar" else None
    if lengths:
        chosen = choose(st.sidebar.selectbox, "MQAR length (speed-quality chart)", lengths, "qlen", default=chosen,
                        format_func=data.format_length)
    speed_len, quality_len, points = quality_data.speed_quality(df, _speed(url, gpu), "mqar", chosen)
    if points.empty:
        st.info(f"No method has both an MQAR accuracy and a forward timing on {gpu}; run `tbench run` on the "
                "same device to draw this chart.")
        return
    st.caption(f"One point per method (and order m): median forward time at N = {data.format_length(speed_len)} "
               f"(the largest length timed on {gpu}) against MQAR accuracy at N = {data.format_length(quality_len)} "
               "(by default the longest length some method solves, mean accuracy >= "
               f"{quality_data.SOLVED:g}; the sidebar picks another).")
    st.plotly_chart(speed_quality_figure(points, colour_map(points["series"])), key="speed_quality")


NO_OPERATOR_TEXT = ("This store has no operator measurements (op scope, tbench's protocol): the leaderboard and "
                    "the other per-shape views compare the attention alone. Its layer, model and paper-protocol "
                    "rows are in the End to end view.")
NO_SCOPED_TEXT = ("This store has no layer or model measurements: the end-to-end view needs a run with "
                  "`--scope layer` or `--scope model` (README, \"End to end\").")


def end_to_end_view(url: str) -> None:
    st.subheader("End to end: a layer or a model around each attention method")
    gpus = _scoped_gpus(url)
    if not gpus:
        st.info(NO_SCOPED_TEXT)
        st.code(f"tbench run --scope layer --preset llama3-8b --batch 5 --db {url}\n\n# without a GPU:\n"
                f"tbench run --device cpu --scope layer --preset tiny --db {url}", language="bash")
        return
    gpu = choose(st.sidebar.selectbox, "GPU", gpus, "gpu")
    frame = _scoped(url, gpu)
    run_ids = [str(r) for r in data.scoped_runs(frame)]
    chosen = choose_many(st.sidebar.multiselect, "Runs", run_ids, "runs", format_func=lambda r: f"run {r}",
                         help="A configuration measured by several of these runs shows its newest measurement.")
    table = data.end_to_end_rows(data.newest_measurements(frame, [int(r) for r in chosen]))
    if table.empty:
        st.info("The chosen runs have no timed layer or model measurement.")
        return
    model = choose(st.sidebar.selectbox, "Model", sorted(table["model"].unique()), "model")
    table = table[table["model"] == model]
    scope = choose(st.sidebar.selectbox, "Scope", sorted(table["scope"].unique()), "scope", default="layer")
    table = table[table["scope"] == scope]
    batches = sorted(int(b) for b in table["batch"].unique())
    batch = choose(st.sidebar.selectbox, "Batch", batches, "batch", default=5)
    protocol = choose(st.sidebar.selectbox, "Protocol", sorted(table[table["batch"] == batch]["protocol"].unique()),
                      "protocol", default="tbench",
                      help="tbench: median of adaptive samples; paper: the mean of 50 forward passes")
    rows = data.end_to_end_slice(table, model, scope, batch, protocol)
    references = data.end_to_end_references(rows)
    layers = int(rows["layers"].max())
    st.markdown(f"**{model}**, {scope} scope" + (f" ({layers} layers timed)" if scope == "model" else "")
                + f", batch {batch}, protocol {protocol} · {gpu} · runs {', '.join(chosen)}")
    colours = colour_map(rows["series"].unique())
    left, right = st.columns(2)
    with left:
        st.plotly_chart(scoped_time_figure(rows, colours), key="e2e_time")
    with right:
        st.plotly_chart(scoped_memory_figure(rows, colours), key="e2e_memory")
    st.caption(f"Speedup = {' or '.join(references)} time / method time on the same shape, scope and protocol "
               f"(solid: over {references[0] if references else 'none'}"
               + (f", dashed: over {references[1]}" if len(references) > 1 else "") + "). The red line is the "
               f"paper's headline, {data.PAPER_SPEEDUP:g}× at 128k: the whole Llama-8B model against "
               "FlashAttention-2 on the paper's GPU, which Figure 5 does not name; tbench's rows are this GPU's "
               "(docs/paper-figure5.md).")
    st.plotly_chart(end_to_end_speedup_figure(rows, references, colours), key="e2e_speedup")
    st.caption("Attention share: the op-scope time of the same method and attention shape over the time per "
               "layer, the most a faster attention can save (Amdahl). 'no op row' where the runs chosen have "
               "no op-scope measurement of it.")
    st.dataframe(data.format_end_to_end(rows), hide_index=True, width="stretch")


def compare_view(url: str, runs: pd.DataFrame) -> None:
    st.subheader("Compare two runs")
    labels = {int(r["id"]): data.run_label(r) for _, r in runs.iterrows()}
    ids = list(labels)
    if len(ids) < 2:
        st.info("The store has one run; a comparison needs two.")
        return
    before = choose(st.sidebar.selectbox, "Before (reference run)", ids, "before", default=ids[1],
                    format_func=labels.get)
    after = choose(st.sidebar.selectbox, "After (candidate run)", ids, "after", default=ids[0],
                   format_func=labels.get)
    table = _comparison(url, before, after)
    counts = table["verdict"].value_counts()
    verdicts = ("FASTER", "SLOWER", "SAME", "UNSURE")
    cols = st.columns(len(verdicts) + 1)
    for col, verdict in zip(cols, verdicts, strict=False):
        col.metric(verdict, int(counts.get(verdict, 0)))
    cols[-1].metric("not comparable", int(len(table) - counts.reindex(list(verdicts)).fillna(0).sum()))
    st.caption("Matched on the configuration key. Ratio = after / before median. The rule is `tbench gate`'s: "
               "FASTER / SLOWER when the median moved by more than 5% and by at least 20 us, and the samples "
               "show it (one-sided p < 0.01 from block medians, allowing 2% run-to-run drift per run); "
               "UNSURE when the median moved but the samples do not show it; otherwise SAME.")
    shown = pd.DataFrame({
        "method": table["method"], "family": table["family"],
        "m": [("" if pd.isna(m) else str(int(m))) for m in table["order_m"]],
        "dims": table["dims"].fillna(""), "N": table["seq_len"].map(data.format_length),
        "scope": data.scope_texts(table),
        "shape": [f"{d} {'causal' if c else 'full'} B{b} H{h} KV{k} D{hd}" for d, c, b, h, k, hd in
                  zip(table["dtype"], table["causal"], table["batch"], table["heads"], table["kv_heads"],
                      table["head_dim"], strict=True)],
        "before ms": [data.fmt_number(v, ".4g", str(s)) for v, s in zip(table["median before ms"],
                                                                 table["status before"], strict=True)],
        "after ms": [data.fmt_number(v, ".4g", str(s)) for v, s in zip(table["median after ms"],
                                                                table["status after"], strict=True)],
        "ratio": [data.fmt_number(v, ".3f", "—") for v in table["ratio"]],
        "verdict": table["verdict"],
    })
    if set(shown["scope"]) <= {"op"}:  # operator runs alone read as before scopes existed
        shown = shown.drop(columns="scope")

    def colour_row(row: pd.Series) -> list[str]:
        colour = VERDICT_COLOURS.get(str(row["verdict"]), "#fff3cd")
        return [f"background-color: {colour}"] * len(row)

    st.dataframe(shown.style.apply(colour_row, axis=1), hide_index=True, width="stretch")


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if isinstance(value, datetime) else "—"


def run_details_view(url: str, runs: pd.DataFrame) -> None:
    st.subheader("Run details")
    labels = {int(r["id"]): data.run_label(r) for _, r in runs.iterrows()}
    run_id = choose(st.sidebar.selectbox, "Run", list(labels), "details", format_func=labels.get)
    run = _run(url, run_id)
    if run is None:
        st.error(f"Run {run_id} is gone from the store.")
        return
    facts = {
        "GPU": data.gpu_label(run["gpu_name"]) + (f" × {run['gpu_count']}" if run.get("gpu_count") else ""),
        "device": run["device"], "host": run["host"], "status": run["status"],
        "started (UTC)": _when(run["started_at"]), "finished (UTC)": _when(run["finished_at"]),
        "driver": run["driver"] or "—", "CUDA": run["cuda"] or "—", "torch": run["torch_version"] or "—",
        "triton": run["triton_version"] or "—", "python": run["python_version"] or "—",
        "platform": run["platform"] or "—", "tbench": run["tbench_version"] or "—",
        "git commit": run["git_commit"] or "—",
        "measurements": ", ".join(f"{n} {s}" for s, n in sorted(run["status_counts"].items())) or "none",
    }
    if set(run["scope_counts"]) - {"op"}:  # a layer, model or paper-protocol run says what it times
        facts["scope"] = ", ".join(f"{n} {s}" for s, n in sorted(run["scope_counts"].items()))
    st.dataframe(pd.DataFrame({"": list(facts), "value": list(facts.values())}), hide_index=True,
                 width="stretch", height=35 * (len(facts) + 1) + 3)
    st.markdown("**Command line**")
    st.code(run["command"] or "—", language="bash")
    left, right = st.columns(2)
    with left:
        st.markdown("**Environment** (CPU, measured peaks, clocks)")
        st.json(run["environment"] or {}, expanded=True)
    with right:
        st.markdown("**Sweep** (as asked)")
        st.json(run["sweep"] or {}, expanded=False)


# --- the page -------------------------------------------------------------------------------------


def slice_selection(url: str) -> tuple[str, data.Shape, int | None]:
    """GPU, shape and run from the sidebar (the store has measurements, so each has options)."""
    slices = _slices(url)
    gpus = list(dict.fromkeys(slices["gpu"]))
    gpu = choose(st.sidebar.selectbox, "GPU", gpus, "gpu")
    slices = slices[slices["gpu"] == gpu]
    modes = sorted({s.mode for s in slices["shape"]},
                   key=lambda m: (MODE_NAMES.index(m) if m in MODE_NAMES else len(MODE_NAMES), m))
    if len(modes) > 1:  # the pass timed: forward unless asked otherwise
        mode = choose(st.sidebar.selectbox, "Mode", modes, "mode", default="fwd",
                      help="fwd: the forward pass; bwd: the backward alone; fwd_bwd: both, as a training step")
        slices = slices[[s.mode == mode for s in slices["shape"]]]
    shapes = list(slices["shape"])
    counts = dict(zip(slices["shape"], slices["n"], strict=True))
    shape = choose(st.sidebar.selectbox, "Shape", shapes, "shape",
                   format_func=lambda s: f"{s.label} · {counts[s]} rows")
    run_ids = _slice_runs(url, gpu, shape)
    run = choose(st.sidebar.selectbox, "Runs", [LATEST, *run_ids], "run",
                 format_func=lambda r: "newest measurement of each configuration" if r == LATEST else f"run {r}",
                 help="Over all runs, each configuration shows its newest measurement; or pick one run.")
    return gpu, shape, None if run == LATEST else int(run)


def baseline_selection(df: pd.DataFrame) -> tuple[str | None, str]:
    fallback = data.pick_baseline(df, DEFAULT_BASELINE)
    baseline = choose(st.sidebar.selectbox, "Baseline", data.baseline_candidates(df), "baseline",
                      default=fallback.method,
                      format_func=lambda name: f"{name} (fastest exact on each shape)" if name == BEST_EXACT else name,
                      help="Speedups are relative to this method; by default the fastest exact method measured "
                           "on each shape.")
    if baseline is None:
        return None, fallback.note
    if baseline == fallback.method:
        return baseline, fallback.note
    return baseline, f"Speedups are against **{baseline}**."


def main(db_url: str) -> None:
    st.set_page_config(page_title="tbench leaderboard", layout="wide")
    st.sidebar.title("tbench")
    shown = masked(db_url)  # the password never reaches the page
    st.sidebar.caption(f"store: `{shown}` (read-only)")
    if st.sidebar.button("Reload data", help="Read the store again now instead of waiting for the cache"):
        st.cache_data.clear()
    view = choose(st.sidebar.radio, "View", VIEWS, "view")
    try:
        state = _state(db_url)
    except data.DashboardError as exc:
        state = data.StoreState("invalid", str(exc))
    if view == "Quality" and state.kind in ("ok", "empty"):  # a store may hold quality results alone
        quality_view(db_url, shown)
        return
    if state.kind != "ok":
        show_empty(shown, state)
        return

    if view == "End to end":
        st.title("tbench end to end")
        end_to_end_view(db_url)
        return

    if view in ("Compare runs", "Run details"):
        st.title("tbench runs")
        runs = _runs(db_url)
        (compare_view if view == "Compare runs" else run_details_view)(db_url, runs)
        return

    if _slices(db_url).empty:
        st.title("tbench leaderboard")
        st.info(NO_OPERATOR_TEXT)
        return
    gpu, shape, run_id = slice_selection(db_url)
    df = _slice(db_url, gpu, shape, run_id)
    if shape.mode != Mode.FWD.value:
        forward = _slice(db_url, gpu, replace(shape, mode=Mode.FWD.value), run_id)
        df = data.with_over_forward(df, forward, shape.mode)
    methods = choose_many(st.sidebar.multiselect, "Methods", sorted(df["method"].unique()), "methods")
    df = df[df["method"].isin(methods)]
    st.title(f"tbench leaderboard · {gpu}")
    used = sorted(int(r) for r in df["run_id"].unique())
    source = (f"run {run_id}" if run_id is not None else "newest measurement of each configuration, from "
              + ("run " if len(used) == 1 else "runs ") + ", ".join(map(str, used)))
    st.markdown(f"**{shape.label}** · {source}")
    if df.empty:
        st.info("No measurement matches the selected methods.")
        return
    baseline, note = baseline_selection(df)
    st.markdown(note)
    points = data.curve_points(data.with_speedup(df, baseline))
    colours = colour_map(points["series"].unique())
    if view == "Leaderboard":
        leaderboard_view(df, baseline, colours)
    elif view == "Families":
        families_view(df, baseline)
    elif view == "Speedup curves":
        speedup_view(points, baseline, colours)
    elif view == "Time and memory":
        time_memory_view(points, colours)
    elif view == "Crossover":
        crossover_view(df, baseline)
    elif view == "Order m":
        order_view(df, baseline)


def _db_from_argv() -> str:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db", default=None)
    args, _ = parser.parse_known_args()
    # empty: $TBENCH_DB or ./tbench.db, resolved where the URL is opened
    return str(args.db or "")


if __name__ == "__main__":
    main(_db_from_argv())

