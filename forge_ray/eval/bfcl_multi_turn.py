"""``forge-ray eval bfcl`` on BFCL's multi-turn categories (``multi_turn_base``,
``multi_turn_miss_func``, ``multi_turn_miss_param``, ``multi_turn_long_context``).

Every task is an episode of the multi-turn environment (``envs/function_calling/multi_turn.py``):
the model's calls run on BFCL's real back-ends, user turns follow one another, and BFCL's official
``multi_turn_checker`` gives the verdict. ``run_multi_turn`` then

- plays every task once, greedily, on a vLLM engine through ``RolloutWorker.evaluate`` (the
  agent loop RL uses), or
- with ``gold``, replays the ground truth turn by turn -- per turn one reply with the turn's gold
  calls as ``<tool_call>`` blocks, then a plain reply that ends the turn -- through
  ``parse_action`` -> ``env.step`` and scores it in a fresh env from the snapshot
  (``forge_ray.eval.harness.replay``), or
- with ``empty``, replays a reply without a call at every turn (0 on every category).

Output as for the single-turn categories: a table and ``{category: {"accuracy", "n"}}`` in
``out``, plus ``"turns_passed"`` (mean share of leading turns the checker accepts); ``details``
writes one JSON line per task (verdict, error, the assistant replies).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from forge_ray.types import Task

if TYPE_CHECKING:
    from forge_ray.eval.bfcl import BfclEvalConfig

log = logging.getLogger(__name__)

MULTI_TURN_PREFIX = "multi_turn_"
MIN_CONTEXT = 8192  # the tool docs of two back-end classes alone take a few thousand tokens


def is_multi_turn(category: str) -> bool:
    return category.startswith(MULTI_TURN_PREFIX)


@dataclass(frozen=True)
class EpisodeResult:
    task_id: str
    category: str
    correct: bool
    status: str
    turns: int
    turns_passed: int
    error_type: str | None = None
    error: str | None = None
    replies: list[str] = field(default_factory=list)  # the assistant replies, in order


def load_tasks(categories: tuple[str, ...], limit: int | None) -> list[Task]:
    from envs.function_calling.multi_turn_data import load_multi_turn

    return [t for c in categories for t in load_multi_turn(c, limit)]


def _result(env: Any, task: Task, messages: list[dict], reward: Any, status: str, snapshot: dict | None = None) -> EpisodeResult:
    replies = [str(m.get("content")) for m in messages[len(task.messages):] if m.get("role") == "assistant"]
    parts = reward.parts if reward is not None else {}
    if reward is None or reward.error is not None:
        error = reward.error if reward is not None else "no reward"
        return EpisodeResult(task.id, task.meta["category"], False, status, int(task.meta.get("turns", 0)), 0, "scoring_error", error, replies)
    correct = parts.get("correct") == 1.0
    verdict = {"error_type": None, "error_message": None} if correct else env.verdict(task, messages, snapshot)
    return EpisodeResult(task.id, task.meta["category"], correct, status, int(parts.get("turns", 0)), int(parts.get("turns_passed", 0)),
                         verdict["error_type"], verdict["error_message"], replies)


def replay_results(tasks: list[Task], replies: Callable[[Task], list[str]]) -> list[EpisodeResult]:
    """Each task's ``replies(task)`` played through the env, as the agent loop would send a
    model's turns, and scored in a fresh env from the episode's snapshot."""
    from envs import factory, make_env
    from envs.function_calling.multi_turn_data import ENV_NAME
    from forge_ray.eval.harness import replay

    make, env = factory(ENV_NAME), make_env(ENV_NAME)
    results = []
    for task in tasks:
        texts = replies(task)
        reward, snapshot = replay(make, task, texts)
        messages = [*task.messages, *({"role": "assistant", "content": t} for t in texts)]
        results.append(_result(env, task, messages, reward, "ok", snapshot))
    return results


def gold_results(tasks: list[Task]) -> list[EpisodeResult]:
    from envs.function_calling.multi_turn import gold_replies

    return replay_results(tasks, gold_replies)


def empty_results(tasks: list[Task]) -> list[EpisodeResult]:
    """A reply without a call at every user turn."""
    return replay_results(tasks, lambda task: [""] * len(task.answer["user_turns"]))


def model_results(cfg: BfclEvalConfig, tasks: list[Task]) -> list[EpisodeResult]:
    """Greedy episodes on one in-process vLLM engine, ``cfg.log_every`` tasks at a time."""
    from envs import factory, make_env
    from envs.function_calling.multi_turn_data import ENV_NAME
    from forge_ray.eval.harness import EngineSpec, Progress, play_policy

    if cfg.max_context < MIN_CONTEXT:
        log.warning("bfcl multi-turn: --max-context %d is short for these episodes (tool docs alone take thousands of "
                    "tokens; an episode that outgrows it is truncated and fails); try --max-context 16384", cfg.max_context)
    spec = EngineSpec(cfg.model, max_new_tokens=cfg.max_new_tokens, max_context=cfg.max_context, kv_cache_mb=cfg.kv_cache_mb,
                      dtype=cfg.dtype, device=cfg.device, temperature=0.0)
    env, by_id, progress = make_env(ENV_NAME), {t.id: t for t in tasks}, Progress("bfcl multi-turn", len(tasks))

    def result(traj: Any) -> EpisodeResult:
        return _result(env, by_id[traj.task_id], traj.messages, traj.reward, traj.status.value)

    def on_batch(done: int, trajs: list) -> None:
        progress(done, sum(result(t).correct for t in trajs) / max(len(trajs), 1), "accuracy")

    trajs = asyncio.run(play_policy(spec, factory(ENV_NAME), tasks, batch=cfg.log_every, on_batch=on_batch))
    return [result(t) for t in trajs]


def summarize(results: list[EpisodeResult], categories: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    summary = {}
    for category in categories:
        rows = [r for r in results if r.category == category]
        n = max(len(rows), 1)
        summary[category] = {"accuracy": sum(r.correct for r in rows) / n, "n": len(rows),
                             "turns_passed": sum(r.turns_passed / max(r.turns, 1) for r in rows) / n}
    return summary


def run_multi_turn(cfg: BfclEvalConfig) -> dict[str, dict[str, Any]]:
    """``run_bfcl`` for multi-turn categories: run, print the table, write ``cfg.out`` and
    ``cfg.details``."""
    single = [c for c in cfg.categories if not is_multi_turn(c)]
    if single:
        raise ValueError(f"BFCL multi-turn categories run on their own; run {','.join(single)} in a separate `forge-ray eval bfcl`")
    if sum([bool(cfg.model), cfg.gold, cfg.empty]) != 1:
        raise ValueError("give exactly one of a model folder, gold=True or empty=True")
    if cfg.bfcl_root:
        raise ValueError("--bfcl-root (BFCL's result files) is not supported for the multi-turn categories")
    tasks = load_tasks(cfg.categories, cfg.limit)
    log.info("bfcl multi-turn: %d tasks in %s", len(tasks), ", ".join(cfg.categories))
    t0 = time.perf_counter()
    results = gold_results(tasks) if cfg.gold else empty_results(tasks) if cfg.empty else model_results(cfg, tasks)
    summary = summarize(results, cfg.categories)
    source = "gold replay" if cfg.gold else "empty replay" if cfg.empty else cfg.model
    from forge_ray.eval.bfcl import format_table, write_outputs

    title = f"BFCL multi-turn ({source}; {len(tasks)} tasks, {time.perf_counter() - t0:.1f} s)"
    print(format_table(summary, title, columns=("accuracy", "turns_passed")))
    write_outputs(cfg, summary, results)
    return summary
