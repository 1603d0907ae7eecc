"""Unit tests for forge_ray.learner.minibatch (the PPO mini-batch schedule) and the learner's
epochs / mini_batches config keys."""
import math

import pytest

from forge_ray.config import ConfigError, load_job
from forge_ray.learner.group import shard_balanced
from forge_ray.learner.minibatch import assign_groups, num_minibatches, schedule


def _batch(sizes: list[int]) -> list[tuple[str, int, int]]:
    """(group id, item number, loss tokens) per trajectory; group g has sizes[g] trajectories."""
    return [(f"task{g}#0", i, 10 + 7 * g + 3 * i) for g, n in enumerate(sizes) for i in range(n)]


def _per_rank(batch: list[tuple[str, int, int]], ranks: int) -> list[list[tuple[str, int]]]:
    """Shard the batch the way LearnerGroup does (groups end up spread over ranks)."""
    shards = shard_balanced([((g, i), None, n) for g, i, n in batch], ranks)
    return [[(box[0], dict(((g, i), n) for g, i, n in batch)[box]) for box, _ in shard] for shard in shards]


def test_assign_groups_is_deterministic_balanced_and_moves_with_step():
    ids = [f"g{i}" for i in range(10)]
    a = assign_groups(ids, 3, step=5, epoch=0)
    assert a == assign_groups(list(reversed(ids)) + ids, 3, step=5, epoch=0)  # only the set matters
    assert sorted(a) == sorted(ids) and set(a.values()) == {0, 1, 2}
    sizes = sorted(list(a.values()).count(j) for j in range(3))
    assert sizes == [3, 3, 4]
    others = [assign_groups(ids, 3, step=s, epoch=e) for s, e in ((6, 0), (5, 1), (7, 3))]
    assert any(o != a for o in others)  # reshuffled per step and per epoch


def test_num_minibatches_never_empty():
    assert num_minibatches(5, 2) == 2
    assert num_minibatches(1, 4) == 1  # fewer groups than mini-batches: one group per step
    assert num_minibatches(0, 3) == 1  # an empty batch still takes its step
    assert assign_groups(["only"], 4, 0, 0) == {"only": 0}


@pytest.mark.parametrize("ranks,k,epochs,micro", [(1, 1, 1, 4), (2, 2, 2, 2), (3, 4, 3, 1), (2, 3, 1, 16)])
def test_schedule_keeps_groups_whole_and_covers_each_item_once_per_epoch(ranks, k, epochs, micro):
    batch = _batch([4, 1, 3, 2, 4, 1, 2])
    per_rank = _per_rank(batch, ranks)
    plans = [schedule(per_rank, r, k, epochs, step=11, micro_batch=micro) for r in range(ranks)]
    steps = epochs * min(k, 7)
    assert all(len(p) == steps for p in plans)
    for parts in zip(*plans):  # step by step: what every rank agrees on
        assert len({(p.epoch, p.index, p.tokens, p.micro_steps) for p in parts}) == 1
        groups = [per_rank[r][i][0] for r, p in enumerate(parts) for i in p.items]
        members = [x for x in batch if x[0] in set(groups)]
        assert len(groups) == len(members)  # every trajectory of each of its groups, on whichever rank
        assert parts[0].tokens == sum(n for _, _, n in members)
        assert parts[0].micro_steps == max(math.ceil(len(p.items) / micro) for p in parts)
        for r, p in enumerate(parts):
            assert p.items == sorted(p.items)  # shard order kept
    for epoch in range(epochs):
        for r in range(ranks):
            seen = [i for p in plans[r] if p.epoch == epoch for i in p.items]
            assert sorted(seen) == list(range(len(per_rank[r])))  # each item exactly once
    assert plans == [schedule(per_rank, r, k, epochs, step=11, micro_batch=micro) for r in range(ranks)]


def test_schedule_single_minibatch_is_the_whole_shard():
    per_rank = _per_rank(_batch([2, 3, 1]), 2)
    for r in range(2):
        (only,) = schedule(per_rank, r, 1, 1, step=0, micro_batch=2)
        assert only.items == list(range(len(per_rank[r])))
        assert only.tokens == sum(n for items in per_rank for _, n in items)
        assert only.micro_steps == max(math.ceil(len(items) / 2) for items in per_rank)


def test_schedule_rank_without_items_still_steps():
    per_rank = [[("a", 5), ("b", 7)], []]
    plans = [schedule(per_rank, r, 2, 2, step=3, micro_batch=1) for r in range(2)]
    assert [len(p) for p in plans] == [4, 4]
    assert all(p.items == [] and p.micro_steps == 1 for p in plans[1])  # joins with empty micro-steps
    assert sorted(p.tokens for p in plans[0][:2]) == [5.0, 7.0]
    empty = schedule([[], []], 0, 2, 2, step=0, micro_batch=4)
    assert [(p.items, p.tokens, p.micro_steps) for p in empty] == [([], 0.0, 0)] * 2


def test_learner_epochs_and_minibatches_config():
    job = load_job(None, ["learner.epochs=2", "learner.mini_batches=4"])
    assert (job.learner.epochs, job.learner.mini_batches) == (2, 4)
    assert (load_job(None).learner.epochs, load_job(None).learner.mini_batches) == (1, 1)
    for key in ("epochs", "mini_batches"):
        with pytest.raises(ConfigError, match=f"learner.{key} must be >= 1, got 0"):
            load_job(None, [f"learner.{key}=0"])
