"""Tables of results for the terminal: the end-of-run summary and `tbench show`."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

SHAPE_COLUMNS = ["seq_len", "batch", "heads", "kv_heads", "head_dim", "dtype", "causal", "device"]


def with_speedups(df: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Adds `speedup` = baseline median / median for ok rows of the same shape."""
    df = df.copy()
    df["speedup"] = float("nan")
    if baseline is None or df.empty:
        return df
    base = df[(df["method"] == baseline) & (df["status"] == "ok")][[*SHAPE_COLUMNS, "median_ms"]]
    base = base.rename(columns={"median_ms": "baseline_ms"}).drop_duplicates(SHAPE_COLUMNS)
    merged = df.merge(base, on=SHAPE_COLUMNS, how="left")
    ok = (merged["status"] == "ok") & merged["baseline_ms"].notna()
    merged["speedup"] = (merged["baseline_ms"].astype(float) / merged["median_ms"].astype(float)).where(ok)
    return merged.drop(columns=["baseline_ms"])


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
                "unsupported": "yellow", "skipped": "yellow"}


def run_table(df: pd.DataFrame, baseline: str | None, title: str, peaks: dict | None = None,
              wide: bool = False) -> Table:
    """One row per configuration, ordered by shape, length and method. `wide` adds the share of
    the device's measured peaks to TFLOP/s and TB/s."""
    df = with_speedups(df, baseline)
    table = Table(title=title, show_lines=False, header_style="bold", caption=(
        f"ms: median; spread: p20-p80 around it; x{baseline}: speedup over {baseline}; "
        "err: relative L2 deviation from exact attention" if baseline else None))
    for name, justify in (("N", "right"), ("method", "left"), ("m", "right"), ("dims", "left"),
                          ("status", "left"), ("ms", "right"), ("spread", "right"),
                          ("TFLOP/s", "right"), ("TB/s", "right"), ("mem", "right"),
                          (f"x{baseline}" if baseline else "speedup", "right"),
                          ("err", "right")):
        table.add_column(name, justify=justify, no_wrap=name in ("N", "ms"))  # type: ignore[arg-type]
    shapes = df[SHAPE_COLUMNS[1:]].drop_duplicates()
    many_shapes = len(shapes) > 1
    order = [*SHAPE_COLUMNS[1:], "seq_len", "family", "method", "order_m"]
    df = df.sort_values(order, na_position="first", kind="stable")
    previous_shape = None
    for row in df.itertuples(index=False):
        shape = tuple(getattr(row, c) for c in SHAPE_COLUMNS[1:])
        if many_shapes and shape != previous_shape:
            b, h, kv, d, dtype, causal, device = shape
            table.add_row(f"[bold]B={b} H={h} H_kv={kv} D={d} {dtype} {'causal' if causal else 'non-causal'}"
                          f" {device}[/bold]", *[""] * 11)
            previous_shape = shape
        status = str(row.status)
        style = STATUS_STYLE.get(status, "")
        if status == "ok":
            status_text = f"[{style}]ok[/{style}]" + (" [yellow](throttled)[/yellow]" if row.throttled else "")
        else:
            message = str(row.message or "")
            status_text = f"[{style}]{status}[/{style}]" + (f": {message[:70]}" if message else "")
        tflops = _num(row.tflops, ".3g")
        tbps = _num(row.tbps, ".3g")
        if wide and peaks and status == "ok":
            if row.tflops and peaks.get("matmul_tflops"):
                tflops += f" ({100 * row.tflops / peaks['matmul_tflops']:.0f}%)"
            if row.tbps and peaks.get("copy_tbps"):
                tbps += f" ({100 * row.tbps / peaks['copy_tbps']:.0f}%)"
        table.add_row(
            str(row.seq_len), str(row.method), "" if pd.isna(row.order_m) else str(int(row.order_m)),
            str(row.dims or ""), status_text, _num(row.median_ms, ".4g"),
            "-" if pd.isna(row.p20_ms) or not row.median_ms else
            f"-{100 * (1 - row.p20_ms / row.median_ms):.1f}/+{100 * (row.p80_ms / row.median_ms - 1):.1f}%",
            tflops, tbps, _bytes(row.peak_bytes),
            "-" if pd.isna(row.speedup) else f"{row.speedup:.2f}x",
            _num(row.fidelity_rel_l2, ".2e"),
        )
    return table
