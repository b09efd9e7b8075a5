"""Folding a length-N sequence into an order-m tensor (docs/spec-tensorized-attention.md, "Folding").

Positions map to coordinates row-major, the last axis innermost and contiguous, so folding a
(B, H, N, D) tensor is a plain reshape of its right-padded version: no data moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class FoldingError(ValueError):
    """Dims that cannot fold the sequence (wrong count, non-positive, product too small)."""


def auto_dims(n: int, m: int) -> tuple[int, ...]:
    """The spec's default dims: powers of two whose exponents split ceil(log2 n) evenly,
    the larger exponents on the inner axes."""
    if n < 1:
        raise FoldingError(f"sequence length {n} must be >= 1")
    if m < 1:
        raise FoldingError(f"order m={m} must be >= 1")
    e = max(0, math.ceil(math.log2(n)))
    base, extra = divmod(e, m)
    # The last `extra` axes (the inner ones) take one more factor of two.
    exponents = [base] * (m - extra) + [base + 1] * extra
    return tuple(2**x for x in exponents)


def resolve_dims(n: int, m: int, dims: Sequence[int] | None = None) -> tuple[int, ...]:
    """Explicit dims if given (validated against n and m), else the spec's auto dims."""
    if dims is None:
        return auto_dims(n, m)
    dims = tuple(int(d) for d in dims)
    if len(dims) != m:
        raise FoldingError(f"dims {format_dims(dims)} have {len(dims)} axes but the order is m={m}")
    if any(d < 1 for d in dims):
        raise FoldingError(f"dims {format_dims(dims)} must all be positive integers")
    if math.prod(dims) < n:
        raise FoldingError(
            f"dims {format_dims(dims)} hold {math.prod(dims)} positions, fewer than N={n}"
        )
    return dims


def padded_length(dims: Sequence[int]) -> int:
    return math.prod(dims)


def hop_axes(m: int) -> tuple[int, ...]:
    """Axis order of the hops (0-based): innermost first, then ever coarser strides."""
    return tuple(range(m - 1, -1, -1))


def format_dims(dims: Sequence[int]) -> str:
    return "x".join(str(d) for d in dims)


def parse_dims(text: str) -> tuple[int, ...]:
    """'256x512' -> (256, 512)."""
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise FoldingError(f"dims '{text}' must look like 256x512 (positive integers joined by x)") from None
    if not dims or any(d < 1 for d in dims):
        raise FoldingError(f"dims '{text}' must look like 256x512 (positive integers joined by x)")
    return dims


def coordinates(position: int, dims: Sequence[int]) -> tuple[int, ...]:
    """The row-major coordinates of a position (the last axis innermost)."""
    coords = []
    for size in reversed(tuple(dims)):
        position, c = divmod(position, size)
        coords.append(c)
    return tuple(reversed(coords))


def causal_reach(n: int, dims: Sequence[int]) -> list[list[bool]]:
    """The spec's causal rule in closed form: reach[p][x] is True where the output at position p
    depends on the input at position x, which is exactly where x's coordinates are <= p's in every
    axis (docs/spec-tensorized-attention.md, "Masks"). Positions past n (padding) are left out."""
    coords = [coordinates(p, dims) for p in range(n)]
    return [[all(a <= b for a, b in zip(coords[x], coords[p], strict=True)) for x in range(n)] for p in range(n)]


def reach_picture(reach: Sequence[Sequence[bool]]) -> str:
    """Rows: output positions; columns: input positions; '#' where the input reaches the output."""
    width = len(str(len(reach) - 1))
    header = " " * (width + 1) + "".join(str(x % 10) for x in range(len(reach)))
    rows = [f"{p:>{width}} " + "".join("#" if r else "." for r in row) for p, row in enumerate(reach)]
    return "\n".join([header, *rows])
