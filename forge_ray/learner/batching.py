"""Turning complete GRPO groups into a learner batch (pure: metadata in, items out).

Per group: environment failures leave the group's statistics (they say nothing about the
policy); the remaining rewards give group-normalised advantages; trajectories that hit a
limit (truncated, timed out) count in the statistics with their reward but carry no loss;
groups whose rewards are all equal carry no signal and are dropped when asked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forge_ray.types import Status


@dataclass
class UpdatePlan:
    items: list[tuple[Any, float, int]] = field(default_factory=list)  # (ref_box, advantage, loss tokens)
    groups_used: int = 0
    groups_zero_variance: int = 0
    masked: int = 0  # trajectories kept out of the loss (limits hit)
    env_failures: int = 0
    rewards: list[float] = field(default_factory=list)  # every scored reward, for logging


def plan_update(groups: list[Any], drop_zero_variance: bool) -> UpdatePlan:
    """``groups`` are buffer ``Group``s (``metas`` and ``refs`` in the same order)."""
    plan = UpdatePlan()
    for g in groups:
        scored = [(m, r) for m, r in zip(g.metas, g.refs) if m.status != Status.ENV_FAILURE]
        plan.env_failures += len(g.metas) - len(scored)
        rewards = [m.reward for m, _ in scored]
        plan.rewards += rewards
        if not scored or (drop_zero_variance and max(rewards) == min(rewards)):
            plan.groups_zero_variance += bool(scored)
            continue
        plan.groups_used += 1
        for (m, ref), adv in zip(scored, _advantages(rewards)):
            if m.status != Status.OK:
                plan.masked += 1
                continue
            plan.items.append(([ref], adv, m.num_tokens))
    return plan


def _advantages(rewards: list[float]) -> list[float]:
    import torch

    from forge_ray.learner.advantage import group_advantages

    return group_advantages(torch.tensor(rewards), torch.zeros(len(rewards), dtype=torch.long)).tolist()
