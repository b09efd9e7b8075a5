import pytest

from tbench.core.folding import FoldingError, auto_dims, hop_axes, parse_dims, resolve_dims


@pytest.mark.parametrize(
    ("n", "m", "dims"),
    [
        (131072, 2, (256, 512)),
        (131072, 3, (32, 64, 64)),
        (4096, 3, (16, 16, 16)),
        (100000, 2, (256, 512)),  # padded to 131072
        (4096, 1, (4096,)),
        (1000, 4, (4, 4, 8, 8)),
        (1, 2, (1, 1)),
    ],
)
def test_auto_dims_follow_the_spec(n: int, m: int, dims: tuple[int, ...]) -> None:
    assert auto_dims(n, m) == dims


def test_explicit_dims_are_validated() -> None:
    assert resolve_dims(100, 3, (3, 5, 7)) == (3, 5, 7)
    with pytest.raises(FoldingError, match="fewer than N=200"):
        resolve_dims(200, 3, (3, 5, 7))
    with pytest.raises(FoldingError, match="order is m=2"):
        resolve_dims(100, 2, (3, 5, 7))
    with pytest.raises(FoldingError, match="positive"):
        resolve_dims(1, 2, (0, 5))


def test_hops_run_innermost_first() -> None:
    assert hop_axes(3) == (2, 1, 0)


def test_parse_dims() -> None:
    assert parse_dims("256x512") == (256, 512)
    with pytest.raises(FoldingError, match="256x512"):
        parse_dims("256*512")
