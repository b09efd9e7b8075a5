"""The order in which method families are listed, one rule for the terminal and the dashboard."""

from __future__ import annotations

import pandas as pd

from ..core.case import Family

# Exact attention first (it is the baseline), then tensorized attention, then its sub-quadratic peers.
FAMILY_ORDER: tuple[str, ...] = tuple(f.value for f in Family)


def family_rank(family: object) -> int:
    """Position of a family in FAMILY_ORDER; a family this version does not know (from an imported
    store) comes after the known ones."""
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)  # type: ignore[arg-type]


def sort_by_family(df: pd.DataFrame, then: list[str], first: list[str] | None = None) -> pd.DataFrame:
    """Rows ordered by the columns `first`, then family (FAMILY_ORDER, unknown ones by name), then `then`."""
    keyed = df.assign(_family_rank=[family_rank(f) for f in df["family"]])
    order = [*(first or []), "_family_rank", "family", *then]
    return keyed.sort_values(order, na_position="first", kind="stable").drop(columns="_family_rank")
