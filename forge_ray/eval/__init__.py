"""Evaluation: held-out success of a policy, measured by the same agent loop RL uses."""
from __future__ import annotations

from collections import Counter
from typing import Any

from forge_ray.types import Task


async def evaluate(rollout: Any, tasks: list[Task], greedy: bool = True) -> dict[str, Any]:
    """Play every task once on ``rollout``'s engines and score it with the environment's
    checker: ``success`` is the mean outcome reward (format correct and answer correct)."""
    trajs = await rollout.evaluate(tasks, greedy)
    n = max(len(trajs), 1)
    parts: Counter = Counter()
    for t in trajs:
        parts.update({k: v for k, v in (t.reward.parts if t.reward else {}).items()})
    out = {
        "success": sum(t.reward.total for t in trajs if t.reward) / n,
        "n": len(trajs),
        **{f"{k}_rate": v / n for k, v in parts.items()},
        "statuses": dict(Counter(t.status.value for t in trajs)),
        "mean_turns": sum(len(t.turns) for t in trajs) / n,
    }
    category = {t.id: t.meta["category"] for t in tasks if t.meta.get("category")}
    if category:  # e.g. BFCL held-out tasks: accuracy per category, as `forge-ray eval bfcl` reports it
        out["by_category"] = by_category(trajs, category)
    domain = {t.id: t.meta["domain"] for t in tasks if t.meta.get("domain")}
    if domain:  # a mix's held-out tasks (env.mix): success per domain
        out["by_domain"] = by_category(trajs, domain)
    return out


def by_category(trajs: list, category: dict[str, str]) -> dict[str, dict[str, float]]:
    """``{category: {"accuracy": mean outcome reward, "n": tasks}}`` of scored trajectories."""
    totals: dict[str, list[float]] = {}
    for t in trajs:
        totals.setdefault(category.get(t.task_id, "other"), []).append(t.reward.total if t.reward else 0.0)
    return {c: {"accuracy": sum(r) / len(r), "n": len(r)} for c, r in sorted(totals.items())}
