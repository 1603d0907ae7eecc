"""PPO mini-batches: which part of an RL batch each optimizer step of ``train_step`` trains on.

Pure: (group id, loss tokens) per item in, a schedule out. A GRPO group is never split: its
advantages are relative to its siblings, so all of its trajectories, on whichever ranks they
landed, go to the same mini-batch. The split depends only on the set of group ids and on
(step, epoch), and every rank computes it from the same gathered view of the batch, so all
ranks take the same optimizer steps with the same loss normalisers and run the same number of
forward/backward passes in each (FSDP collectives must match).
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class MiniBatch:
    epoch: int
    index: int  # position in the epoch, 0 .. num_minibatches - 1
    items: list[int]  # this rank's items (indices into its shard, in shard order)
    tokens: float  # loss tokens of the mini-batch over all ranks: its loss normaliser
    micro_steps: int  # forward/backward passes every rank runs (the most any rank needs)


def num_minibatches(num_groups: int, mini_batches: int) -> int:
    """``mini_batches``, but never more than there are groups (no empty optimizer steps) and at
    least one (an empty batch still takes its one step, as a single update always did)."""
    return max(1, min(mini_batches, num_groups))


def assign_groups(group_ids: Iterable[str], mini_batches: int, step: int, epoch: int) -> dict[str, int]:
    """Mini-batch index of each distinct group: the sorted ids, shuffled by a seed made from
    (step, epoch), cut into ``num_minibatches`` contiguous runs whose sizes differ by at most one."""
    ids = sorted(set(group_ids))
    k = num_minibatches(len(ids), mini_batches)
    random.Random(f"forge_ray.ppo/{step}/{epoch}").shuffle(ids)  # str seed: sha512, same in every process
    return {g: p * k // len(ids) for p, g in enumerate(ids)}


def schedule(per_rank: list[list[tuple[str, int]]], rank: int, mini_batches: int, epochs: int, step: int,
             micro_batch: int) -> list[MiniBatch]:
    """The optimizer steps of one RL step, in order: ``epochs`` passes of ``num_minibatches``
    mini-batches each, every item in exactly one mini-batch per pass.

    ``per_rank[r]`` lists rank r's items as (group id, loss tokens), in its shard order;
    ``rank`` picks whose item indices the result carries. Everything else in a ``MiniBatch``
    is the same on every rank.
    """
    ids = [g for items in per_rank for g, _ in items]
    k = num_minibatches(len(set(ids)), mini_batches)
    out = []
    for epoch in range(epochs):
        where = assign_groups(ids, k, step, epoch)
        for j in range(k):
            local = [[i for i, (g, _) in enumerate(items) if where[g] == j] for items in per_rank]
            tokens = sum(per_rank[r][i][1] for r, idx in enumerate(local) for i in idx)
            micro = max((math.ceil(len(idx) / micro_batch) for idx in local), default=0)
            out.append(MiniBatch(epoch, j, local[rank], float(tokens), micro))
    return out
