import pytest

from tbench.core.sweep import Sweep, UsageError, parse_dtypes, parse_ints, parse_lengths
from tbench.methods.catalog import load_registry


def test_length_syntax():
    assert parse_lengths("4k..128k") == [4096, 8192, 16384, 32768, 65536, 131072]
    assert parse_lengths("1k..8k") == [1024, 2048, 4096, 8192]
    assert parse_lengths("4096,6000,8k") == [4096, 6000, 8192]


@pytest.mark.parametrize(("text", "needle"), [("128k..4k", "upwards"), ("4q", "'4q'"), ("0", "at least 1"),
                                              ("3k..8k", "powers of two"), ("", "empty")])
def test_bad_lengths_name_the_value(text, needle):
    with pytest.raises(UsageError, match=needle):
        parse_lengths(text)


def test_bad_orders_and_dtypes():
    with pytest.raises(UsageError, match="orders '0'"):
        parse_ints("0", "orders")
    with pytest.raises(UsageError, match="dtype 'fp8' unknown; allowed: bf16, fp16, fp32"):
        parse_dtypes("fp8")


def test_exact_methods_are_not_repeated_per_order():
    registry = load_registry(plugins=False)
    sweep = Sweep(lengths=[1024, 2048], methods=["full", "tensorized-ref"], orders=[2, 3], heads=[4], kv_heads=[2],
                  head_dims=[64], device="cpu", timing="cpu")
    cases = sweep.cases(registry)
    full = [c for c in cases if c.method == "full"]
    ref = [c for c in cases if c.method == "tensorized-ref"]
    assert len(full) == 2 and all(c.order is None and c.dims is None for c in full)
    assert sorted((c.seq_len, c.order, c.dims) for c in ref) == [
        (1024, 2, (32, 32)), (1024, 3, (8, 8, 16)), (2048, 2, (32, 64)), (2048, 3, (8, 16, 16))]
    assert len({c.key for c in cases}) == len(cases)


def test_validation_errors():
    registry = load_registry(plugins=False)
    with pytest.raises(UsageError, match="method 'nope' unknown"):
        Sweep(lengths=[64], methods=["nope"]).validate(registry)
    with pytest.raises(UsageError, match="heads 6 is not a multiple of kv-heads 4"):
        Sweep(lengths=[64], methods=["full"], heads=[6], kv_heads=[4]).validate(registry)
    with pytest.raises(UsageError, match="fewer than N=200"):
        Sweep(lengths=[200], methods=["full"], orders=[2], dims=(8, 8)).validate(registry)
