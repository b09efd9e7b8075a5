"""Tables of results for the terminal: the end-of-run summary and `tbench show`."""

from __future__ import annotations

import pandas as pd
from rich.table import Table
from rich.text import Text

from ..core.case import MODE_NAMES, TIMED_STATUSES
from ..core.sweep import BEST_EXACT
from .endtoend import DEPTH_TOLERANCE
from .families import sort_by_family
from .host import host_bound_ms, host_bound_text
from .over_forward import over_forward
from .roofline import roofline, roofline_text
from .speedup import with_speedup

SHAPE_COLUMNS = ["seq_len", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal", "device", "scope", "model",
                 "layers", "protocol"]
# Columns of stores from before scopes, and their value there.
SCOPE_DEFAULTS = {"scope": "op", "model": "", "layers": 0, "protocol": "tbench"}


def _bytes(n: object) -> str:
    if n is None or pd.isna(n):
        return "-"
    n = float(n)  # type: ignore[arg-type]
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _num(x: object, fmt: str) -> str:
    return "-" if x is None or pd.isna(x) else format(float(x), fmt)  # type: ignore[arg-type]


STATUS_STYLE = {"ok": "green", "oom": "red", "error": "red", "wrong": "bold red", "timeout": "red",
                "unsupported": "yellow", "skipped": "yellow", "unchecked": "bold yellow"}

TEXT_COLUMNS = ("family", "method", "dims", "mode", "status")
HEADERS = ["family", "N", "method", "m", "dims", "status", "ms", "spread", "TFLOP/s", "TB/s", "roofline", "mem",
           "speedup", "err"]


def _flags(state: object, median_ms: object) -> list[str]:
    """'busy' and 'noisy' marks a run put on rows it could not measure cleanly, and where the host
    took longer to issue the call than the GPU to run it, 'host-bound' (analysis/host.py)."""
    if not isinstance(state, dict):
        return []
    flags = [flag for flag in ("busy", "noisy") if state.get(flag)]
    host_ms = host_bound_ms(state.get("host_ms"), median_ms)
    return flags if host_ms is None else [*flags, host_bound_text(host_ms)]


def formatted_rows(df: pd.DataFrame, baseline: str | None, peaks: dict | None) -> list[dict]:
    """Rows as display strings, grouped by shape, then by family (in FAMILY_ORDER), then ordered by
    length, method, order and mode (fwd, bwd, fwd_bwd: the order a training step runs them)."""
    df = df.assign(**{c: v for c, v in SCOPE_DEFAULTS.items() if c not in df})
    df = with_speedup(df, baseline)
    df = df.assign(over_fwd=over_forward(df))
    then = ["seq_len", "method", "order_m"]
    if "mode" in df:
        df = df.assign(_mode=df["mode"].map({m: i for i, m in enumerate(MODE_NAMES)}))
        then.append("_mode")
    df = sort_by_family(df, first=SHAPE_COLUMNS[1:], then=then)
    rows = []
    for row in df.itertuples(index=False):
        status = str(row.status)
        tflops, tbps = _num(row.tflops, ".3g"), _num(row.tbps, ".3g")
        # the larger of the two shares of the peaks, and which it is (analysis/roofline.py)
        floor = roofline(row.tflops, row.tbps, str(row.dtype), peaks) if status in TIMED_STATUSES else None
        spread = ("-" if pd.isna(row.p20_ms) or not row.median_ms else
                  f"-{100 * (1 - row.p20_ms / row.median_ms):.1f}/+{100 * (row.p80_ms / row.median_ms - 1):.1f}%")
        rows.append({
            "shape": tuple(getattr(row, c) for c in SHAPE_COLUMNS[1:]),
            "status": status, "message": str(row.message or ""), "throttled": bool(row.throttled),
            "flags": _flags(row.device_state, row.median_ms), "baseline_method": row.baseline_method,
            "family": str(row.family), "N": str(row.seq_len), "method": str(row.method),
            "m": "" if pd.isna(row.order_m) else str(int(row.order_m)), "dims": str(row.dims or ""),
            "mode": str(getattr(row, "mode", "fwd")),
            "ms": _num(row.median_ms, ".4g"), "spread": spread,
            "x fwd": "-" if pd.isna(row.over_fwd) else f"{row.over_fwd:.2f}x", "TFLOP/s": tflops, "TB/s": tbps,
            "roofline": roofline_text(floor),
            "mem": _bytes(row.peak_bytes), "speedup": "-" if pd.isna(row.speedup) else f"{row.speedup:.2f}x",
            "err": _num(row.fidelity_rel_l2, ".2e"),
        })
    return rows


def _has_roofline(rows: list[dict]) -> bool:
    """Whether any row has a roofline (its run measured the device's peaks): no column of dashes."""
    return any(r["roofline"] != "-" for r in rows)


def _headers(rows: list[dict], roofline: bool) -> list[str]:
    """HEADERS, with a mode column after dims when the rows time more than one pass (and after the
    spread, each training row's time over its forward's where a forward was measured beside it),
    and the roofline column only if asked for."""
    headers = HEADERS if roofline else [h for h in HEADERS if h != "roofline"]
    if len({r["mode"] for r in rows}) > 1:
        at = headers.index("dims") + 1
        headers = [*headers[:at], "mode", *headers[at:]]
    if any(r["x fwd"] != "-" for r in rows):
        at = headers.index("spread") + 1
        headers = [*headers[:at], "x fwd", *headers[at:]]
    return headers


def _shape_title(shape: tuple) -> str:
    b, h, kv, d, dtype, causal, device, scope, model, layers, protocol = shape
    title = f"B={b} H={h} H_kv={kv} D={d} {dtype} {'causal' if causal else 'non-causal'} {device}"
    if scope != "op":
        title += f", scope {scope}: {model}, {layers} layer{'s' if layers != 1 else ''}"
    if protocol != "tbench":
        title += f", protocol {protocol}"
    return title


def run_table(df: pd.DataFrame, baseline: str | None, title: str, peaks: dict | None = None,
              wide: bool = False) -> Table:
    """One row per configuration. `wide` adds the roofline: the share of the floor the device's
    measured peaks set, and which floor binds."""
    rows = formatted_rows(df, baseline, peaks)
    # the roofline needs the run's measured peaks; a narrow terminal keeps its width for the rest
    with_roofline = wide and _has_roofline(rows)
    # Method names, messages and titles come from the store or from imported files: they are
    # shown as written (Text), never read as console markup.
    table = Table(title=Text(title), show_lines=False, header_style="bold", caption=Text(
        f"ms: median; spread: p20-p80 around it; {_forward_legend(rows)}{_speedup_legend(rows, baseline)}; "
        "err: relative L2 deviation from exact attention"
        + ("; roofline: the device's floor for the row (max of minimum bytes / measured copy bandwidth and "
           "FLOPs / measured matmul rate) as a share of its time, and which floor binds" if with_roofline else ""))
        if baseline else None)
    headers = _headers(rows, with_roofline)
    for name in headers:
        label = (f"x{baseline}" if baseline else "speedup") if name == "speedup" else name
        table.add_column(Text(label), justify="left" if name in TEXT_COLUMNS else "right",
                         no_wrap=name in ("N", "ms"))
    many_shapes = len({r["shape"] for r in rows}) > 1 or any(r["shape"][7] != "op" for r in rows)
    previous, family = None, None
    for r in rows:
        if many_shapes and r["shape"] != previous:
            if previous is not None:
                table.add_section()
            table.add_row(Text(_shape_title(r["shape"]), style="bold"), *[""] * (len(headers) - 1))
            previous, family = r["shape"], r["family"]
        elif r["family"] != family:
            if family is not None:
                table.add_section()  # a rule between families
            family = r["family"]
        status = Text(r["status"], style=STATUS_STYLE.get(r["status"], ""))
        if r["status"] == "ok" and r["throttled"]:
            status.append(" (clocks limited)", style="yellow")
        if r["status"] == "ok" and r["flags"]:
            status.append(f" ({', '.join(r['flags'])})", style="yellow")
        elif r["status"] != "ok" and r["message"]:
            status.append(f": {r['message'][:70]}")
        table.add_row(*[status if h == "status" else Text(r[h]) for h in headers])
    return table


def _forward_legend(rows: list[dict]) -> str:
    """The x fwd column's legend, where the table has one."""
    if all(r["x fwd"] == "-" for r in rows):
        return ""
    return "x fwd: a training row's time over the same method's forward on the same inputs; "


def _speedup_legend(rows: list[dict], baseline: str | None) -> str:
    """What the speedup column is against; for the fastest exact method, which methods that was."""
    if baseline != BEST_EXACT:
        return f"x{baseline}: speedup over {baseline}"
    fastest = {r["baseline_method"] for r in rows if isinstance(r["baseline_method"], str)}
    return (f"x{baseline}: speedup over the fastest exact method measured on the same shape "
            f"({', '.join(sorted(fastest)) or 'none here'})")


def run_markdown(df: pd.DataFrame, baseline: str | None, peaks: dict | None = None) -> str:
    """The same table as Markdown, for docs and PR comments."""
    rows = formatted_rows(df, baseline, peaks)
    columns = _headers(rows, _has_roofline(rows))
    headers = [f"x{baseline}" if h == "speedup" and baseline else h for h in columns]
    lines = [f"{_speedup_legend(rows, baseline)}.", ""] if baseline == BEST_EXACT else []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        lines += [f"**{_shape_title(shape)}**", "", "| " + " | ".join(headers) + " |",
                  "|" + "|".join("---:" if h not in TEXT_COLUMNS else "---" for h in columns) + "|"]
        for r in (r for r in rows if r["shape"] == shape):
            status = r["status"] + (" (clocks limited)" if r["status"] == "ok" and r["throttled"] else "")
            status += f" ({', '.join(r['flags'])})" if r["status"] == "ok" and r["flags"] else ""
            if r["status"] != "ok" and r["message"]:
                status += ": " + r["message"].replace("|", "/")
            lines.append("| " + " | ".join(status if h == "status" else r[h] for h in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def depth_table(check: pd.DataFrame) -> Table:
    """analysis.endtoend.depth_check as a table: the K-layer estimate against the measured depth."""
    caption = f"ratio: estimate / measured; holds: within {100 * DEPTH_TOLERANCE:g} % of the measured time"
    table = Table(title=Text("model depth: the estimate from K layers against a full-depth run"), header_style="bold",
                  caption=Text(caption))
    headers = ["model", "mode", "protocol", "B", "N", "method", "m", "K", "depth", "estimate ms", "measured ms",
               "ratio", "holds"]
    for name in headers:
        table.add_column(Text(name), justify="left" if name in ("model", "mode", "protocol", "method", "holds")
                         else "right")
    for row in check.itertuples(index=False):
        holds = Text("yes", style="green") if row.holds else Text("no", style="bold red")
        table.add_row(*[Text(str(v)) for v in (
            row.model, row.mode, row.protocol, row.batch, row.seq_len, row.method,
            "" if pd.isna(row.order_m) else int(row.order_m), row.layers_timed, row.depth)],
            Text(_num(row.estimate_ms, ".4g")), Text(_num(row.measured_ms, ".4g")), Text(_num(row.ratio, ".3f")),
            holds)
    return table
