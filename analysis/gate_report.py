"""The gate's verdicts as a Rich table, Markdown (PR comment, $GITHUB_STEP_SUMMARY) and JSON."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from rich.table import Table
from rich.text import Text

from .gate import GateReport, device_label

STYLE = {"FASTER": "green", "SAME": "dim", "SLOWER": "bold red", "UNSURE": "yellow", "FAIL": "bold red",
         "SKIP": "dim"}
ICON = {"FASTER": "🟢", "SAME": "⚪", "SLOWER": "🔴", "UNSURE": "🟡", "FAIL": "❌", "SKIP": "➖"}
ORDER = ["FAIL", "SLOWER", "UNSURE", "FASTER", "SAME", "SKIP"]


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}x"


def _p(x: float | None) -> str:
    return "-" if x is None else (f"{x:.1e}" if x < 1e-3 else f"{x:.3f}")


def summary_line(report: GateReport) -> str:
    counts = report.counts()
    parts = ", ".join(f"{counts[v]} {v}" for v in ORDER if counts.get(v))
    verdict = "PASS" if report.passed else "REGRESSION"
    return f"{verdict}: {parts} ({report.candidate.label} against {report.baseline.label})"


def _rows(report: GateReport) -> list[list[str]]:
    return [[v.verdict, v.key, _f(v.baseline_ms, ".4f") if v.baseline_status == "ok" else (v.baseline_status or "-"),
             _f(v.candidate_ms, ".4f") if v.candidate_status == "ok" else (v.candidate_status or "missing")
             if v.candidate_status != "unchecked" or v.candidate_ms is None
             else f"{v.candidate_ms:.4f} (unchecked)",
             _ratio(v.ratio), _f(v.delta_us, "+.1f"), _p(v.p_value),
             "-" if v.ci_low is None else f"{v.ci_low:.3f}–{v.ci_high:.3f}", v.reason]
            for v in report.verdicts]


HEADERS = ["verdict", "configuration", "baseline ms", "candidate ms", "ratio", "Δ us", "p", "ratio CI", "why"]


def gate_table(report: GateReport, *, show_same: bool = True) -> Table:
    s = report.settings
    # labels, keys and reasons come from stores and files: shown as written, never as console markup
    table = Table(title=Text(f"gate: {report.candidate.label} against {report.baseline.label} "
                             f"({device_label(report.candidate.gpu_name)}; threshold {s.threshold:.0%}, "
                             f"min Δ {s.min_delta_us:g} us, alpha {s.alpha:g} Holm, run noise {s.run_noise:.0%})"),
                  header_style="bold")
    for h in HEADERS:
        table.add_column(h, justify="right" if h in ("baseline ms", "candidate ms", "ratio", "Δ us", "p") else "left")
    for v, row in zip(report.verdicts, _rows(report), strict=True):
        if not show_same and v.verdict in ("SAME", "SKIP"):
            continue
        table.add_row(Text(row[0], style=STYLE[v.verdict]), *(Text(cell) for cell in row[1:]))
    return table


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def gate_markdown(report: GateReport) -> str:
    s = report.settings
    b, c = report.baseline, report.candidate
    lines = [f"## tbench gate: {'✅ pass' if report.passed else '❌ regression'}", "",
             summary_line(report), "",
             f"Baseline **{b.label}** on {device_label(b.gpu_name)} (commit {b.provenance.get('git_commit') or '?'}); "
             f"candidate **{c.label}** on {device_label(c.gpu_name)} (commit {c.provenance.get('git_commit') or '?'}). "
             f"SLOWER needs the median up by more than {s.threshold:.0%} and {s.min_delta_us:g} us, and a one-sided "
             f"p < {s.alpha:g} after Holm's adjustment over the configurations, from block medians with "
             f"{s.run_noise:.0%} run-level noise allowed on each side (docs/gate.md).", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    ranked = sorted(zip(report.verdicts, _rows(report), strict=True), key=lambda vr: ORDER.index(vr[0].verdict))
    for v, row in ranked:
        row = [f"{ICON[v.verdict]} {v.verdict}", f"`{row[1]}`", *row[2:]]
        lines.append("| " + " | ".join(_md_cell(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


def gate_json(report: GateReport) -> dict[str, Any]:
    return {
        "passed": report.passed,
        "summary": summary_line(report),
        "counts": report.counts(),
        "settings": asdict(report.settings),
        "baseline": {"label": report.baseline.label, "gpu_name": report.baseline.gpu_name,
                     "provenance": report.baseline.provenance},
        "candidate": {"label": report.candidate.label, "gpu_name": report.candidate.gpu_name,
                      "provenance": report.candidate.provenance},
        "verdicts": [asdict(v) for v in report.verdicts],
    }
