"""The end-to-end table: speedups over FlashAttention-2/3 at layer scope, and Amdahl's attention share."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tbench.analysis.endtoend import end_to_end


def _row(method: str, ms: float, scope: str = "layer", n: int = 4096, **over) -> dict:
    row = dict(method=method, order_m=2 if method == "tensorized" else None, dims="64x64" if method == "tensorized"
               else "", seq_len=n, batch=5, heads=32, kv_heads=8, head_dim=128, dtype="bf16", causal=True,
               device="cuda", timing_mode="events", mode="fwd", scope=scope, model="" if scope == "op" else
               "llama3-8b", layers=0 if scope == "op" else 1, protocol="tbench", status="ok", median_ms=ms,
               mean_ms=ms * 1.1, peak_bytes=2**30, device_state={})
    return {**row, **over}


def test_speedups_share_and_the_papers_mean():
    df = pd.DataFrame([_row("flash2", 100.0), _row("flash3", 80.0), _row("tensorized", 10.0),
                       _row("tensorized", 2.0, scope="op"), _row("tensorized", 3.0, scope="op", n=8192)])
    table = end_to_end(df).set_index("method")
    assert table.loc["tensorized", "xflash2"] == 10.0 and table.loc["tensorized", "xflash3"] == 8.0
    assert table.loc["tensorized", "attention_share"] == 0.2  # the op row at the same N, not the 8k one
    assert math.isnan(table.loc["flash2", "attention_share"])  # no op row of flash2 in the frame
    paper = end_to_end(pd.DataFrame([_row("flash2", 100.0, protocol="paper")]))
    assert paper.loc[0, "ms"] == pytest.approx(110.0)  # the paper's protocol reports the mean of its passes


def test_without_flash_the_usual_baseline_order_is_used_and_failed_rows_never_count():
    df = pd.DataFrame([_row("sdpa-cudnn", 50.0), _row("tensorized", 10.0), _row("flash2", 1.0, status="oom")])
    table = end_to_end(df)
    assert "xflash2" not in table and list(table["xsdpa-cudnn"]) == [1.0, 5.0]
    assert end_to_end(pd.DataFrame([_row("tensorized", 1.0, scope="op")])).empty
