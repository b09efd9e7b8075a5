"""The quality track on the CPU: the tasks, the causal reachability of the tensorized operator, a real
training loop that learns MQAR with exact attention (and an untrained model that does not), and a
configuration that fails without losing the others."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tbench.core.errors import UsageError
from tbench.core.folding import causal_reach, coordinates, reach_picture
from tbench.core.records import RunInfo
from tbench.methods.catalog import load_registry
from tbench.methods.registry import Registry, always_available, method
from tbench.quality.model import AttentionSpec, ModelSpec
from tbench.quality.plan import QualityRequest, plan_quality
from tbench.quality.reachability import measured_reach, reachable_share
from tbench.quality.runner import run_quality
from tbench.quality.tasks import IGNORE, Task, TaskBatch, TaskSpec, distance_bucket, generate
from tbench.quality.train import TrainSpec, train
from tbench.results.quality import quality_results
from tbench.results.store import Store


def _mqar(n: int = 64, vocab: int = 32, pairs: int = 6, batch: int = 16, seed: int = 0):
    return generate(TaskSpec("mqar", n, vocab, pairs), batch, torch.Generator().manual_seed(seed))


def test_mqar_pairs_then_queries_with_their_values():
    pairs, vocab = 6, 32
    b = _mqar(pairs=pairs, vocab=vocab)
    keys, values = b.inputs[:, 0 : 2 * pairs : 2], b.inputs[:, 1 : 2 * pairs : 2]
    assert ((keys >= 1) & (keys < vocab // 2)).all() and ((values >= vocab // 2) & (values < vocab)).all()
    assert (b.targets[:, : 2 * pairs] == IGNORE).all()  # the prefix is never scored
    for row in range(b.inputs.shape[0]):
        scored = (b.targets[row] != IGNORE).nonzero().flatten().tolist()
        assert len(scored) == pairs
        for p in scored:
            i = keys[row].tolist().index(int(b.inputs[row, p]))  # the query repeats a key of the prefix
            assert b.targets[row, p] == values[row, i]
            assert b.distance[row, p] == p - 2 * i


def test_mqar_gaps_favour_short_distances_and_seeds_repeat():
    b = _mqar(n=512, pairs=8, batch=64)
    gaps = (b.targets != IGNORE).nonzero()[:, 1] - 16
    assert (gaps < 64).float().mean() > 0.5  # power law: most queries come soon after the pairs
    assert torch.equal(_mqar(seed=3).inputs, _mqar(seed=3).inputs)
    assert not torch.equal(_mqar(seed=3).inputs, _mqar(seed=4).inputs)


def test_needle_and_selective_copy():
    g = torch.Generator().manual_seed(1)
    needle = generate(TaskSpec("needle", 200, 64, 1), 8, g)
    assert ((needle.targets != IGNORE).sum(dim=1) == 1).all() and (needle.targets[:, -1] >= 48).all()
    for row in range(8):
        where = 199 - int(needle.distance[row, -1])
        assert needle.inputs[row, where] == needle.inputs[row, -1]  # the key is where the distance says
        assert needle.inputs[row, where + 1] == needle.targets[row, -1]
    copy = generate(TaskSpec("copy", 40, 16, 5), 8, g)
    for row in range(8):
        content = copy.inputs[row, :35][copy.inputs[row, :35] != 0]
        assert copy.targets[row, 35:].tolist() == content.tolist()  # in order


@pytest.mark.parametrize("spec", [("mqar", 10, 32, 4), ("mqar", 64, 8, 6), ("copy", 5, 16, 3), ("nope", 64, 32, 4)])
def test_bad_task_specs_are_refused(spec):
    with pytest.raises((UsageError, ValueError)):
        TaskSpec(*spec)


def test_distance_buckets():
    assert [distance_bucket(d) for d in (1, 2, 3, 4, 7, 8, 1000)] == [1, 2, 2, 4, 4, 8, 512]


@pytest.mark.parametrize(("n", "dims"), [(16, (4, 4)), (12, (2, 2, 3)), (10, (4, 3))])
def test_measured_reach_is_the_spec_rule(n, dims):
    assert measured_reach(n, dims) == causal_reach(n, dims)


def test_reach_rule_excludes_earlier_tokens_of_later_columns():
    reach = causal_reach(16, (4, 4))
    # (1, 2) = position 6 does not receive from (0, 3) = position 3, though 3 < 6
    assert coordinates(6, (4, 4)) == (1, 2) and not reach[6][3]
    assert reach[6][2] and reach[6][5]
    # the check can fail: exact causal attention (every earlier position) is not the rule
    lower = [[x <= p for x in range(16)] for p in range(16)]
    assert measured_reach(16, (4, 4)) != lower
    assert reach_picture(reach).splitlines()[1 + 7].endswith("########........")


@pytest.mark.parametrize(("n", "dims"), [(64, (8, 8)), (64, (4, 4, 4)), (60, (8, 8))])
def test_reachable_share_counts_queries_that_reach_their_key_and_value(n, dims):
    batch = _mqar(n=n, pairs=6, batch=32, seed=3)
    reach = causal_reach(n, dims)
    rows, cols = (batch.targets != IGNORE).nonzero(as_tuple=True)
    keys = cols - batch.distance[rows, cols]
    by_rule = [reach[p][key] and reach[p][key + 1] for p, key in zip(cols.tolist(), keys.tolist(), strict=True)]
    share = reachable_share(Task.MQAR, batch, dims)
    assert share == pytest.approx(sum(by_rule) / len(by_rule)) and 0 < share < 1
    assert reachable_share(Task.MQAR, batch, (n,)) == 1.0  # exact causal attention reaches everything


def test_reachable_share_needs_the_value_as_well_as_the_key():
    # fold 4x4: key at 0 = (0, 0), its value at 1 = (0, 1), asked at 4 = (1, 0): the key is in reach
    # and the value is not, so the query cannot be answered
    inputs = torch.zeros(1, 16, dtype=torch.long)
    targets = torch.full((1, 16), IGNORE)
    distance = torch.zeros(1, 16, dtype=torch.long)
    targets[0, 4], distance[0, 4] = 7, 4
    assert reachable_share(Task.MQAR, TaskBatch(inputs, targets, distance), (4, 4)) == 0.0
    targets[0, 5], distance[0, 5] = 7, 5  # asked at 5 = (1, 1): both in reach
    assert reachable_share(Task.MQAR, TaskBatch(inputs, targets, distance), (4, 4)) == 0.5
    with pytest.raises(ValueError, match="no scored position"):
        reachable_share(Task.MQAR, TaskBatch(inputs, torch.full((1, 16), IGNORE), distance), (4, 4))


TINY_TASK = TaskSpec("mqar", 32, 32, 4)
TINY_MODEL = ModelSpec(vocab=32, seq_len=32, d_model=64, layers=2, heads=2)


def test_exact_attention_learns_tiny_mqar():
    torch.set_num_threads(2)
    attention = AttentionSpec(load_registry(plugins=False).get("sdpa-math"), "cpu")
    result = train(TINY_TASK, TINY_MODEL, attention, TrainSpec(steps=600, batch=32, lr=5e-3, seed=0))
    assert result.score.total == 256 * 4
    assert result.score.accuracy >= 0.9, result.score.buckets()
    # an untrained model stays near chance (1 in 16 values): the accuracy check can fail
    untrained = train(TINY_TASK, TINY_MODEL, attention, TrainSpec(steps=0, batch=32, lr=5e-3, seed=0))
    assert untrained.score.accuracy < 0.3


def _failing_registry() -> Registry:
    registry = load_registry(plugins=False)

    @method(name="broken", family="exact", description="raises", availability=always_available("test"))
    def broken(q, k, v, case):
        raise RuntimeError("kernel exploded")

    registry.add(broken)
    return registry


def test_a_failing_configuration_does_not_lose_the_others(tmp_path):
    registry = _failing_registry()
    available = {m.name: None for m in registry}
    plan = plan_quality(QualityRequest(preset="tiny", methods="broken,sdpa-math", lengths="32", steps=5),
                        registry, available)
    store = Store(str(tmp_path / "q.db"))
    outcome = run_quality(plan, registry, store, RunInfo(command="test", device="cpu"))
    df = quality_results(store, [outcome.run_id]).set_index("method")
    assert df.loc["broken", "status"] == "error" and "kernel exploded" in df.loc["broken", "message"]
    assert df.loc["sdpa-math", "status"] == "ok" and 0 <= df.loc["sdpa-math", "accuracy"] <= 1
    assert outcome.counts == {"error": 1, "ok": 1}


def test_a_method_that_cannot_train_here_is_stored_unsupported_and_the_run_still_finishes(tmp_path):
    registry = load_registry(plugins=False)
    trained = []
    exact = registry.get("sdpa-math")

    def no_backward(case):
        return "its backward is refused here" if case.mode.needs_backward else None

    def call(q, k, v, case):
        trained.append(case)
        return exact.call(q, k, v, case)

    forward_only = dataclasses.replace(exact, name="forward-only", call=call, unsupported=no_backward)
    registry.add(forward_only)
    plan = plan_quality(QualityRequest(preset="tiny", methods="forward-only,sdpa-math", lengths="32", steps=5),
                        registry, {m.name: None for m in registry})
    store = Store(str(tmp_path / "q.db"))
    outcome = run_quality(plan, registry, store, RunInfo(command="test", device="cpu"))
    df = quality_results(store, [outcome.run_id]).set_index("method")
    assert df.loc["forward-only", "status"] == "unsupported"
    assert df.loc["forward-only", "message"] == "its backward is refused here"
    assert not trained  # refused before training, not raised in it
    assert outcome.status == "finished" and outcome.counts == {"unsupported": 1, "ok": 1}


def test_plan_expands_orders_and_refuses_bad_values():
    registry = load_registry(plugins=False)
    available = {m.name: None for m in registry}
    plan = plan_quality(QualityRequest(preset="tiny", methods="tensorized-ref,sdpa-math", orders="2,3",
                                       lengths="64,100", seeds="0,1", lrs="1e-3"), registry, available)
    keys = [c.key for c in plan.configurations]
    assert len(keys) == len(set(keys)) == 2 * 3 * 2
    assert "tensorized-ref|N100|m2|8x16|seed1|lr0.001" in keys  # 100 does not factor: padded to 8x16
    assert plan.settings.items == 4  # the tiny preset's; --items sets another
    assert plan_quality(QualityRequest(preset="tiny", items=2), registry, available).settings.items == 2
    for bad, match in ((dict(preset="huge"), "preset 'huge' unknown"), (dict(lrs="fast"), "learning rates 'fast'"),
                       (dict(lrs="2"), "between 0 and 1"), (dict(seeds="-1"), "seeds '-1'"),
                       (dict(methods="nope"), "method 'nope' unknown"), (dict(lengths="8"), "at least 12 tokens"),
                       (dict(orders="0"), "orders '0'"), (dict(task="sort"), "task 'sort' unknown"),
                       (dict(items=0), "at least one item, not 0"), (dict(items=11), "at least 33 tokens"),
                       (dict(items=16, lengths="100"), "vocabulary of at least 34 tokens")):
        with pytest.raises(UsageError, match=match):
            plan_quality(dataclasses.replace(QualityRequest(preset="tiny"), **bad), registry, available)
    with pytest.raises(UsageError, match="unavailable on cpu: needs a GPU"):
        plan_quality(QualityRequest(methods="sdpa-math"), registry, {**available, "sdpa-math": "needs a GPU"})


def test_preset_batches_follow_the_token_budget_within_bounds():
    registry = load_registry(plugins=False)
    available = {m.name: None for m in registry}
    tiny = plan_quality(QualityRequest(preset="tiny"), registry, available).settings
    assert [tiny.batch(n) for n in tiny.lengths] == [64, 64]  # 2^15 tokens, capped at 64 sequences
    default = plan_quality(QualityRequest(preset="default"), registry, available)
    s = default.settings
    # 2^18 tokens per step: capped at 256 sequences at N = 256 and 1024, 2^18 / 4096 = 64 at N = 4096
    assert [s.batch(n) for n in s.lengths] == [256, 256, 64]
    assert s.batch(2**20) == 64 and s.batch(16) == 256  # the bounds hold beyond the preset's lengths
    # 8 pairs: exact attention learns them at N = 256 within the steps (docs/quality.md, GPU calibration),
    # and each step scores at least 512 queries (64 sequences at N = 4096)
    assert s.items == 8 and min(s.batch(n) for n in s.lengths) * s.items >= 512
    assert s.lrs == (3e-3,) and s.steps == 600
    assert len(default.configurations) == len(s.lengths) * len(s.methods) * len(s.seeds)
