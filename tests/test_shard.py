"""Sharding a sweep: the parts partition it exactly, whatever the sweep and the number of parts."""

import random

import pytest

from tbench.core.sweep import Sweep, UsageError
from tbench.harness.shard import parse_shard, shard_cases
from tbench.methods.catalog import load_registry

REGISTRY = load_registry(plugins=False)


def random_sweep(rng: random.Random) -> Sweep:
    lengths = sorted(rng.sample([256, 512, 1024, 2048, 4096, 8192, 16384], rng.randint(1, 5)))
    methods = rng.sample(REGISTRY.names(), rng.randint(1, len(REGISTRY.names())))
    return Sweep(lengths=lengths, methods=methods, orders=sorted(rng.sample([2, 3], rng.randint(1, 2))),
                 batches=rng.sample([1, 2, 4], rng.randint(1, 2)), heads=[8], kv_heads=rng.sample([2, 4, 8], 1),
                 head_dims=[64], dtypes=rng.sample(["fp32", "bf16", "fp16"], rng.randint(1, 2)),
                 causal=rng.sample([True, False], rng.randint(1, 2)), device="cpu", timing="cpu")


@pytest.mark.parametrize("seed", range(40))
def test_shards_partition_the_sweep(seed):
    rng = random.Random(seed)
    cases = random_sweep(rng).cases(REGISTRY)
    assert len({c.key for c in cases}) == len(cases)
    for count in range(1, 6):
        parts = [shard_cases(cases, i, count) for i in range(1, count + 1)]
        keys = [{c.key for c in part} for part in parts]
        assert sum(len(part) for part in parts) == len(cases)  # pairwise disjoint ...
        assert set().union(*keys) == {c.key for c in cases}  # ... and together the whole sweep
        for part in parts:  # each part keeps the sweep's order (shortest first)
            assert part == [c for c in cases if c in set(part)]
        if len(cases) >= count:
            assert all(parts), "a part was left empty while there was work for it"


def test_shards_do_not_depend_on_how_the_sweep_was_written():
    one = Sweep(lengths=[1024, 2048, 4096], methods=["full", "tensorized", "sdpa-math"], dtypes=["fp32", "bf16"],
                device="cpu", timing="cpu").cases(REGISTRY)
    other = Sweep(lengths=[1024, 2048, 4096], methods=["sdpa-math", "full", "tensorized"], dtypes=["bf16", "fp32"],
                  orders=[3, 2], device="cpu", timing="cpu").cases(REGISTRY)
    assert {c.key for c in one} == {c.key for c in other} and one != other
    for i in range(1, 4):
        assert {c.key for c in shard_cases(one, i, 3)} == {c.key for c in shard_cases(other, i, 3)}


def test_a_shape_group_stays_in_one_part():
    cases = Sweep(lengths=[1024, 2048, 4096, 8192], methods=["full", "tensorized", "sdpa-math"],
                  device="cpu", timing="cpu").cases(REGISTRY)
    for i in range(1, 4):
        part = shard_cases(cases, i, 3)
        shapes = {c.shape_key for c in part}
        assert part and all(len([c for c in part if c.shape_key == s]) == 4 for s in shapes)  # 1 + 2 orders + 1


def test_fewer_shapes_than_parts_still_spreads_the_work():
    cases = Sweep(lengths=[1024], methods=["full", "sdpa-math", "tensorized"], device="cpu",
                  timing="cpu").cases(REGISTRY)
    parts = [shard_cases(cases, i, 4) for i in range(1, 5)]
    assert [len(p) for p in parts] == [1, 1, 1, 1]


@pytest.mark.parametrize(("text", "expected"), [("1/1", (1, 1)), ("2/4", (2, 4)), (" 5 / 5 ", (5, 5))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize(("text", "needle"), [
    ("0/4", "between 1 and N"), ("5/4", "between 1 and N"), ("1/0", "between 1 and N"),
    ("x", "not of the form i/N"), ("2/", "not of the form"), ("-1/4", "not of the form"), ("1.5/4", "not of the form"),
])
def test_parse_shard_refuses(text, needle):
    with pytest.raises(UsageError, match=needle) as info:
        parse_shard(text)
    assert "\n" not in str(info.value)


def test_shard_cases_refuses_a_bad_index():
    with pytest.raises(UsageError):
        shard_cases([], 3, 2)
