"""Turning complete GRPO groups into a learner batch (pure: metadata in, items out).

Per group: environment failures and trajectories that could not be scored (``reward_error``)
leave the group's statistics (they say nothing about the policy); the remaining rewards give
group-normalised advantages; trajectories that hit a limit (truncated, timed out) count in the
statistics with their reward but carry no loss; groups whose rewards are all equal carry no
signal and are dropped when asked.

With ``turn_weight`` > 0 each turn's tokens also get ``turn_weight * (r_k - mean_k)``: the
turn's step-wise reward against the group's mean reward for turn k (a missing turn counts 0),
so a correct first call earns credit even when the episode fails later.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forge_ray.types import Status


@dataclass
class UpdatePlan:
    items: list[tuple[Any, Any, int]] = field(default_factory=list)  # (ref_box, advantage or per-turn advantages, loss tokens)
    groups_used: int = 0
    groups_zero_variance: int = 0
    masked: int = 0  # trajectories kept out of the loss (limits hit)
    env_failures: int = 0
    score_errors: int = 0  # trajectories whose reward could not be computed (reward.error)
    rewards: list[float] = field(default_factory=list)  # every scored reward, for logging


def plan_update(groups: list[Any], drop_zero_variance: bool, turn_weight: float = 0.0) -> UpdatePlan:
    """``groups`` are buffer ``Group``s (``metas`` and ``refs`` in the same order)."""
    plan = UpdatePlan()
    for g in groups:
        scored = [(m, r) for m, r in zip(g.metas, g.refs) if m.status != Status.ENV_FAILURE and m.reward_error is None]
        failed = sum(m.status == Status.ENV_FAILURE for m in g.metas)
        plan.env_failures += failed
        plan.score_errors += len(g.metas) - len(scored) - failed
        rewards = [m.reward for m, _ in scored]
        plan.rewards += rewards
        turns = [m.turn_rewards for m, _ in scored] if turn_weight > 0 else []
        flat = not scored or (max(rewards) == min(rewards) and len({t for t in turns}) <= 1)
        if not scored or (drop_zero_variance and flat):
            plan.groups_zero_variance += bool(scored)
            continue
        plan.groups_used += 1
        advantages = _advantages(rewards)
        if turns:
            advantages = _turn_advantages(advantages, turns, turn_weight)
        for (m, ref), adv in zip(scored, advantages):
            if m.status != Status.OK:
                plan.masked += 1
                continue
            plan.items.append(([ref], adv, m.num_tokens))
    return plan


def _advantages(rewards: list[float]) -> list[float]:
    import torch

    from forge_ray.learner.advantage import group_advantages

    return group_advantages(torch.tensor(rewards), torch.zeros(len(rewards), dtype=torch.long)).tolist()


def _turn_advantages(advantages: list[float], turns: list[tuple[float, ...]], weight: float) -> list[list[float]]:
    """Per-turn advantages: the trajectory's, plus ``weight * (r_k - group mean of r_k)``."""
    depth = max((len(t) for t in turns), default=0)
    means = [sum(t[k] if k < len(t) else 0.0 for t in turns) / len(turns) for k in range(depth)]
    return [[a + weight * (r - means[k]) for k, r in enumerate(t)] for a, t in zip(advantages, turns)]
