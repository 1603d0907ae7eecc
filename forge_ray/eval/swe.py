"""``forge-ray eval swe``: resolved rate of a policy on SWE tasks (``forge-ray swe make-tasks``).

    forge-ray eval swe --tasks DIR --model DIR [--split heldout] [--limit N] --out FILE.json
    forge-ray eval swe --tasks DIR --gold        # the gold patch, applied by a bash command
    forge-ray eval swe --tasks DIR --empty       # submit at once: nothing changed
    forge-ray eval swe --tasks DIR --tests-only  # make the failing tests skip, then submit

``--model`` plays each task with the policy on the RL rollout path (``harness.play_policy``):
the ``swe`` environment, bash in the sandbox, the submission diffed on the host, FAIL_TO_PASS
and PASS_TO_PASS run on a clean copy. The three replays send fixed replies through the same
parsing, sandbox and checker (``harness.replay``): gold must resolve every task, the empty
patch none, and a patch that edits only the tests none (test edits are discarded before the
tests run). The JSON written to ``--out``: ``{"n", "pass_rate", "per_task": [...], ...}``.
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
from dataclasses import asdict, dataclass
from typing import Any

from forge_ray.eval.harness import report

log = logging.getLogger(__name__)

REPLAYS = ("gold", "empty", "tests_only")


@dataclass(frozen=True)
class SweEvalConfig:
    tasks: str  # a tasks folder of `forge-ray swe make-tasks`
    mode: str = "model"  # model, or a replay: gold / empty / tests_only
    model: str | None = None
    split: str = "heldout"
    limit: int | None = None
    out: str | None = None
    backend: str = "auto"  # sandbox backend
    step_limit: int = 30  # turns per episode
    command_timeout_s: float = 60.0
    jobs: int = 2  # concurrent replays
    batch: int = 16  # tasks per engine call (--model)
    max_new_tokens: int = 512
    max_context: int = 8192
    kv_cache_mb: int = 2048
    device: str = "auto"
    episodes: str | None = None  # --model: write every episode (messages, resolved) here as JSONL


@dataclass(frozen=True)
class Row:
    task_id: str
    package: str
    resolved: bool
    status: str
    steps: int
    parts: dict
    error: str | None = None


def _env_kwargs(cfg: SweEvalConfig) -> dict[str, Any]:
    return {"backend": cfg.backend, "step_limit": cfg.step_limit, "command_timeout_s": cfg.command_timeout_s}


def load_tasks(cfg: SweEvalConfig) -> list[Any]:
    from envs.swe import SweTasks

    source = SweTasks(cfg.tasks, **_env_kwargs(cfg))
    tasks = [source.task(row, cfg.split) for row in source.rows(cfg.split)]
    return tasks[:cfg.limit] if cfg.limit is not None else tasks


def replies(task: Any, mode: str) -> list[str]:
    """The fixed assistant turns of a replay mode, in the environment's reply format."""
    from envs.swe.protocol import SUBMIT_COMMAND, format_reply

    submit = format_reply("Submitting my changes.", SUBMIT_COMMAND)
    if mode == "gold":
        patch = task.answer["patch"]
        apply = f"git apply <<'FORGE_RAY_PATCH'\n{patch.rstrip(chr(10))}\nFORGE_RAY_PATCH"
        return [format_reply("Apply the fix.", apply), submit]
    if mode == "tests_only":
        files = sorted({test_id.split("::")[0] for test_id in task.answer["FAIL_TO_PASS"]})
        quoted = " ".join(f"'{f}'" for f in files)
        skip = f"for f in {quoted}; do printf '\\nimport pytest\\npytest.skip(\"fixed\", allow_module_level=True)\\n' >> \"$f\"; done"
        return [format_reply("Make the failing tests go away.", skip), submit]
    if mode == "empty":
        return [submit]
    raise ValueError(f"unknown replay mode {mode!r}; choose one of {', '.join(REPLAYS)}")


def _row(task: Any, reward: Any, status: str, steps: int) -> Row:
    error = reward.error if reward else "no reward"
    parts = dict(reward.parts) if reward else {}
    return Row(task.id, task.answer.get("package", ""), bool(reward and not reward.error and reward.total == 1.0),
               status, steps, parts, error)


def replay_rows(cfg: SweEvalConfig, tasks: list[Any]) -> list[Row]:
    from envs import factory
    from forge_ray.eval.harness import Progress, replay

    make = factory("swe", _env_kwargs(cfg))
    progress = Progress(f"swe {cfg.mode}", len(tasks))
    rows: list[Row] = []

    def one(task: Any) -> Row:
        turns = replies(task, cfg.mode)
        reward, snapshot = replay(make, task, turns)
        return _row(task, reward, "ok", int(snapshot.get("steps", len(turns))))

    with ThreadPoolExecutor(max(cfg.jobs, 1)) as pool:
        for row in pool.map(one, tasks):
            rows.append(row)
            if len(rows) % 10 == 0 or len(rows) == len(tasks):
                progress(len(rows), sum(r.resolved for r in rows) / len(rows))
    return rows


def model_rows(cfg: SweEvalConfig, tasks: list[Any]) -> list[Row]:
    from envs import factory
    from forge_ray.eval.harness import EngineSpec, Progress, play_policy

    spec = EngineSpec(cfg.model, max_new_tokens=cfg.max_new_tokens, max_context=cfg.max_context,
                      kv_cache_mb=cfg.kv_cache_mb, device=cfg.device)
    progress = Progress("swe", len(tasks))
    on_batch = (lambda done, trajs: progress(done, sum(t.reward is not None and t.reward.total == 1.0 for t in trajs) / len(trajs)))
    trajs = asyncio.run(play_policy(spec, factory("swe", _env_kwargs(cfg)), tasks, batch=cfg.batch, on_batch=on_batch))
    by_id = {t.id: t for t in tasks}
    rows = [_row(by_id[tr.task_id], tr.reward, tr.status.value, len(tr.turns)) for tr in trajs]
    if cfg.episodes:
        write_episodes(cfg.episodes, trajs, rows)
    return rows


def write_episodes(path: str, trajs: list[Any], rows: list[Row]) -> None:
    """Each episode as one JSON line (``task_id``, ``package``, ``resolved``, ``status``,
    ``reward``, ``messages``): environment-native trajectories for mid-training
    (``forge-ray data build-mt episodes:FILE``)."""
    with open(path, "w") as f:
        for i, (tr, row) in enumerate(zip(trajs, rows)):
            f.write(json.dumps({"task_id": row.task_id, "sample": i, "package": row.package, "resolved": row.resolved,
                                "status": row.status, "reward": tr.reward.total if tr.reward else None,
                                "messages": tr.messages}) + "\n")
    log.info("wrote %d episodes to %s", len(rows), path)


def summarize(cfg: SweEvalConfig, rows: list[Row], wall: float) -> dict[str, Any]:
    n = len(rows)
    by_package: dict[str, list[bool]] = {}
    for r in rows:
        by_package.setdefault(r.package, []).append(r.resolved)
    return {
        "n": n, "pass_rate": sum(r.resolved for r in rows) / n if n else 0.0,
        "by_package": {p: {"n": len(v), "pass_rate": sum(v) / len(v)} for p, v in sorted(by_package.items())},
        "mode": cfg.mode, "model": cfg.model, "tasks": cfg.tasks, "split": cfg.split,
        "statuses": dict(Counter(r.status for r in rows)), "errors": sum(r.error is not None for r in rows),
        "wall_seconds": round(wall, 2), "per_task": [asdict(r) for r in rows],
    }


def format_table(summary: dict[str, Any]) -> str:
    who = summary["model"] if summary["mode"] == "model" else f"{summary['mode']} replay"
    lines = [f"swe eval: {summary['tasks']} [{summary['split']}] ({who})", f"{'package':<28}{'n':>6}{'resolved':>10}", "-" * 44]
    lines += [f"{p:<28}{s['n']:>6}{s['pass_rate']:>10.3f}" for p, s in summary["by_package"].items()]
    lines += ["-" * 44, f"{'all':<28}{summary['n']:>6}{summary['pass_rate']:>10.3f}",
              f"statuses {json.dumps(summary['statuses'])}, scoring errors {summary['errors']}, {summary['wall_seconds']:.1f} s"]
    return "\n".join(lines)


def run_swe_eval(cfg: SweEvalConfig) -> dict[str, Any]:
    """Run the evaluation, print the table, write ``cfg.out``; returns the summary."""
    if (cfg.mode == "model") != bool(cfg.model) or (cfg.mode != "model" and cfg.mode not in REPLAYS):
        raise ValueError("give exactly one of a model folder or a replay mode (gold, empty, tests_only)")
    tasks = load_tasks(cfg)
    if not tasks:
        raise ValueError(f"{cfg.tasks}: no tasks in split {cfg.split!r}")
    log.info("swe %s: %d tasks of %s [%s]", cfg.mode, len(tasks), cfg.tasks, cfg.split)
    t0 = time.perf_counter()
    rows = model_rows(cfg, tasks) if cfg.mode == "model" else replay_rows(cfg, tasks)
    summary = summarize(cfg, rows, time.perf_counter() - t0)
    return report(summary, format_table(summary), cfg.out)


def _run(args: argparse.Namespace) -> int:
    modes = [m for m in REPLAYS if getattr(args, m)]
    if len(modes) + bool(args.model) != 1:
        print("forge-ray eval swe: give exactly one of --model DIR, --gold, --empty or --tests-only", file=sys.stderr)
        return 2
    fields = SweEvalConfig.__dataclass_fields__
    kwargs = {k: v for k, v in vars(args).items() if k in fields and k != "mode"}
    run_swe_eval(SweEvalConfig(mode=modes[0] if modes else "model", **kwargs))
    return 0


def add_swe_parser(eval_sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``swe`` on the ``forge-ray eval`` sub-subparsers."""
    p = eval_sub.add_parser("swe", help="resolved rate on SWE tasks (forge-ray swe make-tasks), tests in the sandbox")
    p.add_argument("--tasks", required=True, metavar="DIR", help="a tasks folder (train.parquet, heldout.parquet, repos/)")
    p.add_argument("--model", default=None, metavar="DIR", help="policy model folder, served by vLLM (greedy)")
    p.add_argument("--gold", action="store_true", help="replay the gold patches (must resolve every task)")
    p.add_argument("--empty", action="store_true", help="submit without changes (must resolve none)")
    p.add_argument("--tests-only", action="store_true", help="edit only the failing tests (must resolve none)")
    p.add_argument("--split", default="heldout", choices=["train", "heldout"])
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N tasks of the split")
    p.add_argument("--out", default=None, metavar="FILE.json", help='write {"n", "pass_rate", "per_task"} here')
    p.add_argument("--episodes", default=None, metavar="FILE.jsonl", help="--model: write every episode here (mid-training data)")
    p.add_argument("--backend", default="auto", choices=["auto", "bwrap", "process"], help="sandbox backend")
    p.add_argument("--step-limit", type=int, default=30, help="turns per episode")
    p.add_argument("--command-timeout-s", type=float, default=60.0, help="limit of one bash command")
    p.add_argument("--jobs", type=int, default=2, help="concurrent replays")
    p.add_argument("--batch", type=int, default=16, help="tasks per engine call (--model)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--max-context", type=int, default=8192, help="tokens per episode (capped by the model's own)")
    p.add_argument("--kv-cache-mb", type=int, default=2048)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(fn=_run)
    return p
