"""What every ``forge-ray eval`` benchmark does with an environment: play a policy on tasks
through the RL rollout path, or replay fixed replies through the same environment.

    trajs = await play_policy(EngineSpec(model=DIR), factory, tasks, samples=1)
    reward = replay(factory, task, ["THOUGHT: ...\\n```bash\\n...\\n```"])

``play_policy`` serves the model on one in-process vLLM engine inside a ``RolloutWorker`` (the
class the RL rollout actors host), so prompts, the agent loop, the environment lifecycle and
scoring are exactly RL's. ``replay`` is the model-free check of an evaluation: each reply goes
through ``parse_action`` and ``env.step`` as a model's would, and the episode is scored in a
fresh environment from its snapshot, as the reward actor scores.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from forge_ray.types import RewardBreakdown, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    """The served policy and its episode limits."""

    model: str
    max_new_tokens: int = 1024  # tokens per reply
    max_context: int = 4096  # tokens per episode, capped by the model's own context
    temperature: float = 0.8  # when sampling (samples > 1); one sample decodes greedily
    kv_cache_mb: int = 2048  # vLLM KV cache on CPU
    dtype: str | None = None  # default float32 on CPU, bfloat16 on CUDA
    device: str = "auto"
    timeout_s: float = 3600.0  # wall-clock limit of one episode


def model_context(path: str, cap: int) -> int:
    """``cap``, or the model's ``max_position_embeddings`` if smaller."""
    from transformers import AutoConfig

    return min(cap, int(getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None) or cap))


async def play_policy(spec: EngineSpec, factory: Callable[[], Any], tasks: list[Task], *, samples: int = 1,
                      batch: int = 64, on_batch: Callable[[int, list], None] | None = None) -> list[Any]:
    """``samples`` episodes of every task (greedy when 1), ``batch`` tasks per engine call;
    ``on_batch(done, trajectories so far)`` after each. Trajectories in task order."""
    from forge_ray.pipeline import resolve_device
    from forge_ray.rollout.agent_loop import EpisodeSpec
    from forge_ray.rollout.group import RolloutWorker

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = resolve_device(spec.device)
    context = model_context(spec.model, spec.max_context)
    engine_kwargs = {"dtype": spec.dtype or ("float32" if device == "cpu" else "bfloat16"), "max_model_len": context,
                     "kv_cache_mb": spec.kv_cache_mb, "device": device, "seed": 0}
    episode = EpisodeSpec(max_new_tokens=spec.max_new_tokens, max_context=context, temperature=spec.temperature,
                          timeout_s=spec.timeout_s)
    worker = RolloutWorker(str(Path(spec.model).resolve()), engine_kwargs, factory, episode)
    log.info("starting vLLM on %s (%s)", spec.model, engine_kwargs)
    log.info("engine ready in %.1f s", await worker.start())
    trajs: list[Any] = []
    try:
        for start in range(0, len(tasks), max(batch, 1)):
            chunk = tasks[start:start + max(batch, 1)]
            trajs += await worker.evaluate([t for t in chunk for _ in range(samples)], greedy=samples == 1)
            if on_batch is not None:
                on_batch(start + len(chunk), trajs)
    finally:
        worker.shutdown()
    return trajs


def replay(factory: Callable[[], Any], task: Task, replies: list[str]) -> tuple[RewardBreakdown, dict]:
    """Play ``replies`` as the assistant turns of ``task`` (stopping when the env says done),
    then score the episode in a fresh env from its snapshot. Returns the reward and snapshot."""
    from forge_ray.chat import parse_action

    env = factory()
    messages: list[dict] = []
    try:
        task = env.open(task)
        messages = list(task.messages)
        for text in replies:
            messages.append({"role": "assistant", "content": text})
            result = env.step(parse_action(text))
            messages += result.messages
            if result.done:
                break
        snapshot = env.snapshot()
    finally:
        env.close()
    scorer = factory()
    try:
        return scorer.score(task, messages, snapshot), snapshot
    finally:
        scorer.close()


class Progress:
    """Logs ``name: done/total ..., rate so far, tasks/s`` lines."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.t0 = name, total, time.perf_counter()

    def __call__(self, done: int, rate: float, label: str = "pass rate") -> None:
        log.info("%s: %d/%d tasks, %s so far %.3f, %.2f tasks/s", self.name, done, self.total, label, rate,
                 done / max(time.perf_counter() - self.t0, 1e-9))


def report(summary: dict[str, Any], table: str, out: str | None) -> dict[str, Any]:
    """Print ``table`` and write ``summary`` as JSON to ``out`` (when given); returns the summary."""
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=1) + "\n")
        log.info("wrote %s", out)
    return summary
