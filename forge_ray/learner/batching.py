"""Turning complete GRPO groups into a learner batch (pure: metadata in, items out).

Per group: environment failures and trajectories that could not be scored (``reward_error``)
leave the group's statistics (they say nothing about the policy); the remaining rewards give
group-normalised advantages; trajectories that hit a limit (truncated, timed out) count in the
statistics with their reward but carry no loss; groups whose rewards are all equal carry no
signal and are dropped when asked.

With ``turn_weight`` > 0 each turn's tokens also get ``turn_weight * (r_k - mean_k)``: the
turn's step-wise reward against the group's mean reward for turn k (a missing turn counts 0),
so a correct first call earns credit even when the episode fails later. The trajectory's own
advantage always covers every sampled token: a turn without a step-wise reward (or an
environment that gives none) keeps it, with no bonus.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forge_ray.types import Advantage, Status


@dataclass
class UpdatePlan:
    items: list[tuple[Any, Advantage, int]] = field(default_factory=list)  # (ref_box, advantage, loss tokens)
    groups_used: int = 0
    groups_zero_variance: int = 0
    masked: int = 0  # trajectories kept out of the loss (limits hit)
    env_failures: int = 0
    score_errors: int = 0  # trajectories whose reward could not be computed (reward.error)
    rewards: list[float] = field(default_factory=list)  # every scored reward, for logging


def _scored(group: Any) -> list[tuple[Any, Any]]:
    """(meta, ref) of the samples whose reward counts: no env failure, no scoring error."""
    return [(m, r) for m, r in zip(group.metas, group.refs) if m.status != Status.ENV_FAILURE and m.reward_error is None]


def has_signal(group: Any, turn_weight: float = 0.0) -> bool:
    """Whether a group teaches anything: its counted rewards differ, or (with per-turn credit)
    its step-wise rewards do."""
    scored = _scored(group)
    rewards = [m.reward for m, _ in scored]
    turns = {m.turn_rewards for m, _ in scored} if turn_weight > 0 else set()
    return bool(scored) and (max(rewards) != min(rewards) or len(turns) > 1)


def plan_update(groups: list[Any], drop_zero_variance: bool, turn_weight: float = 0.0) -> UpdatePlan:
    """``groups`` are buffer ``Group``s (``metas`` and ``refs`` in the same order)."""
    plan = UpdatePlan()
    for g in groups:
        scored = _scored(g)
        failed = sum(m.status == Status.ENV_FAILURE for m in g.metas)
        plan.env_failures += failed
        plan.score_errors += len(g.metas) - len(scored) - failed
        rewards = [m.reward for m, _ in scored]
        plan.rewards += rewards
        turns = [m.turn_rewards for m, _ in scored] if turn_weight > 0 else []
        if not scored or (drop_zero_variance and not has_signal(g, turn_weight)):
            plan.groups_zero_variance += bool(scored)
            continue
        plan.groups_used += 1
        bonuses = _turn_bonuses(turns, turn_weight) if turns else [()] * len(scored)
        advantages = [Advantage(a, b) for a, b in zip(_advantages(rewards), bonuses)]
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


def _turn_bonuses(turns: list[tuple[float, ...]], weight: float) -> list[tuple[float, ...]]:
    """Each trajectory's per-turn bonus ``weight * (r_k - group mean of r_k)``."""
    depth = max((len(t) for t in turns), default=0)
    means = [sum(t[k] if k < len(t) else 0.0 for t in turns) / len(turns) for k in range(depth)]
    return [tuple(weight * (r - means[k]) for k, r in enumerate(t)) for t in turns]
