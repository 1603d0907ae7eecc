"""BFCL accuracy of a model, measured by forge_ray's own rollout path and BFCL's checker.

``run_bfcl`` loads BFCL's single-turn categories from the installed ``bfcl-eval`` package
(``envs/function_calling``), then either

- plays every task once, greedily, on a vLLM engine through ``RolloutWorker.evaluate`` -- the
  class the ``RolloutGroup`` actors host, so the prompt rendering, the agent loop, the
  ``<tool_call>`` parsing and the env's scoring are exactly the ones RL uses -- or
- with ``gold``, replays each task's possible answers (first allowed value of every argument,
  rendered as forge_ray ``<tool_call>`` text) through the same parsing and checker, with no
  model: a check of the evaluation path itself.

Accuracy is the env's ``correct`` part: BFCL's verdict (the official AST checker for the AST
categories; no call made for ``irrelevance``). Output: a table on stdout and a JSON file
``{category: {"accuracy": float, "n": int}}``; ``details`` adds one JSON line per task.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forge_ray.types import Task, Trajectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BfclEvalConfig:
    """One ``forge-ray eval bfcl`` run."""

    categories: tuple[str, ...]
    model: str | None = None  # a Hugging Face folder vLLM can serve; None with gold=True
    gold: bool = False  # replay the possible answers instead of generating
    limit: int | None = None  # the first N tasks of each category
    out: str | None = None  # the JSON summary file
    details: str | None = None  # one JSON line per task (output text, verdict)
    log_every: int = 50  # tasks per engine batch, and how often progress is logged
    max_new_tokens: int = 512  # BFCL's longest gold answer is ~420 SmolLM2 tokens
    max_context: int = 2048  # BFCL's longest prompt with tools is ~1.1k tokens
    kv_cache_mb: int = 2048
    dtype: str | None = None  # default: float32 on CPU, bfloat16 on CUDA
    device: str = "auto"


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    category: str
    correct: bool
    format_ok: bool
    status: str
    text: str  # the assistant turn that was scored ("" when there was none)
    error: str | None = None  # checker or parse error, or a scoring failure


def load_tasks(categories: tuple[str, ...], limit: int | None) -> list[Task]:
    from envs.function_calling.bfcl_data import load_category

    return [t for c in categories for t in load_category(c, limit)]


def _verdict_error(env: Any, task: Task, text: str) -> str | None:
    verdict = env.verdict(task, text)
    return None if verdict["valid"] else (verdict["parse_error"] or verdict["error"] or verdict["error_type"])


def gold_results(tasks: list[Task]) -> list[TaskResult]:
    """Each task's gold answer through ``parse_action`` -> ``env.step`` -> ``env.score``."""
    from envs import make_env
    from envs.function_calling.gold import gold_text
    from forge_ray.chat import parse_action

    results = []
    for task in tasks:
        env = make_env("function_calling")
        env.open(task)
        text = gold_text(task)
        env.step(parse_action(text))
        reward = env.score(task, [*task.messages, {"role": "assistant", "content": text}])
        correct = reward.error is None and reward.parts.get("correct") == 1.0
        results.append(TaskResult(task.id, task.meta["category"], correct, reward.parts.get("format") == 1.0, "ok", text,
                                  reward.error or (None if correct else _verdict_error(env, task, text))))
    return results


def _result(env: Any, task: Task, traj: Trajectory) -> TaskResult:
    texts = [m["content"] for m in traj.messages[len(task.messages):] if m.get("role") == "assistant"]
    text = texts[-1] if texts else ""
    parts = traj.reward.parts if traj.reward else {}
    error = traj.reward.error if traj.reward else "no reward"
    correct = error is None and parts.get("correct") == 1.0
    if error is None and not correct:
        error = _verdict_error(env, task, text) if texts else f"no complete assistant turn (status {traj.status.value})"
    return TaskResult(task.id, task.meta["category"], correct, parts.get("format") == 1.0, traj.status.value, text, error)


def model_results(cfg: BfclEvalConfig, tasks: list[Task]) -> list[TaskResult]:
    """Greedy episodes on one in-process vLLM engine, ``cfg.log_every`` tasks at a time."""
    from envs import factory, make_env
    from forge_ray.eval.harness import EngineSpec, Progress, play_policy

    spec = EngineSpec(cfg.model, max_new_tokens=cfg.max_new_tokens, max_context=cfg.max_context, kv_cache_mb=cfg.kv_cache_mb,
                      dtype=cfg.dtype, device=cfg.device, temperature=0.0)
    env, by_id, progress = make_env("function_calling"), {t.id: t for t in tasks}, Progress("bfcl", len(tasks))

    def on_batch(done: int, trajs: list) -> None:
        progress(done, sum(_result(env, by_id[t.task_id], t).correct for t in trajs) / max(len(trajs), 1), "accuracy")

    trajs = asyncio.run(play_policy(spec, factory("function_calling"), tasks, batch=cfg.log_every, on_batch=on_batch))
    return [_result(env, by_id[t.task_id], t) for t in trajs]


def summarize(results: list[TaskResult], categories: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    summary = {}
    for category in categories:
        rows = [r for r in results if r.category == category]
        summary[category] = {"accuracy": sum(r.correct for r in rows) / len(rows) if rows else 0.0, "n": len(rows)}
    return summary


def format_table(summary: dict[str, dict[str, Any]], title: str) -> str:
    width = max([len(c) for c in summary] + [len("overall (mean of categories)")])
    lines = [title, f"{'category':<{width}}  {'accuracy':>8}  {'n':>5}", "-" * (width + 17)]
    lines += [f"{c:<{width}}  {s['accuracy']:>8.4f}  {s['n']:>5}" for c, s in summary.items()]
    if len(summary) > 1:
        mean = sum(s["accuracy"] for s in summary.values()) / len(summary)
        lines += ["-" * (width + 17), f"{'overall (mean of categories)':<{width}}  {mean:>8.4f}  {sum(s['n'] for s in summary.values()):>5}"]
    return "\n".join(lines)


def run_bfcl(cfg: BfclEvalConfig) -> dict[str, dict[str, Any]]:
    """Run the evaluation, print the table, write ``cfg.out`` (and ``cfg.details``)."""
    if cfg.gold == bool(cfg.model):
        raise ValueError("give exactly one of a model folder or gold=True")
    tasks = load_tasks(cfg.categories, cfg.limit)
    log.info("bfcl: %d tasks in %s", len(tasks), ", ".join(cfg.categories))
    t0 = time.perf_counter()
    results = gold_results(tasks) if cfg.gold else model_results(cfg, tasks)
    wall = time.perf_counter() - t0
    summary = summarize(results, cfg.categories)
    title = f"BFCL ({'gold replay' if cfg.gold else cfg.model}; {len(tasks)} tasks, {wall:.1f} s)"
    print(format_table(summary, title))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(summary, indent=2) + "\n")
        log.info("wrote %s", cfg.out)
    if cfg.details:
        Path(cfg.details).parent.mkdir(parents=True, exist_ok=True)
        with open(cfg.details, "w") as f:
            for r in results:
                f.write(json.dumps(asdict(r)) + "\n")
    return summary
