"""SWE environment costs: one bash action in the env vs the same command as a plain subprocess,
and episodes per minute with 4 concurrent expert episodes, in process and in the env pool.

    .venv/bin/python bench/swe_env.py --tasks data/swe_tasks [--actions 30] [--episodes 8]

An action in the env is ``SweEnv.step``: parse the reply, run the command in a fresh
bubblewrap sandbox (its own namespaces and uid, rlimits, output capture), format the
observation. The plain subprocess is ``bash -c CMD`` in the same workspace, unisolated. An
expert episode replays the scripted expert of a task (grep, read, run the failing test, edit,
re-run, submit) and is scored by running the task's tests on a clean copy.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

# The sandbox's PATH and locale, so both sides run the same programs (/usr/bin/python3).
PLAIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
COMMANDS = {"ls": "ls", "grep": "grep -rn 'def ' --include=*.py . | head -20", "python": "python3 -c 'print(1)'"}


def action_latency(task, n: int) -> list[dict]:
    """Median seconds of ``n`` runs of each command: in the env, then plain."""
    from envs.swe import SweEnv
    from envs.swe.protocol import format_reply
    from forge_ray.chat import parse_action

    env = SweEnv(backend="auto", step_limit=10 * n * len(COMMANDS))
    env.open(task)
    rows = []
    try:
        for name, cmd in COMMANDS.items():
            action = parse_action(format_reply("measure", cmd))
            in_env, plain = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                env.step(action)
                in_env.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                subprocess.run(["bash", "-c", cmd], cwd=env.workspace, capture_output=True, env=PLAIN_ENV)
                plain.append(time.perf_counter() - t0)
            env_s, plain_s = statistics.median(in_env), statistics.median(plain)
            rows.append({"command": cmd, "env_median_s": env_s, "subprocess_median_s": plain_s, "ratio": env_s / plain_s})
    finally:
        env.close()
    return rows


async def episodes(make_env, tasks, experts, concurrency: int) -> tuple[float, int, int]:
    """Replay the experts ``concurrency`` at a time; (seconds, episodes, resolved)."""
    from forge_ray.chat import parse_action

    gate = asyncio.Semaphore(concurrency)

    async def one(task, turns) -> float:
        async with gate:
            env = make_env()
            try:
                task = await env.open(task)
                messages = list(task.messages)
                for text in turns:
                    messages.append({"role": "assistant", "content": text})
                    result = await env.step(parse_action(text))
                    messages += result.messages
                    if result.done:
                        break
                return (await env.score(task, messages)).total
            finally:
                await env.close()

    t0 = time.perf_counter()
    rewards = await asyncio.gather(*(one(t, e) for t, e in zip(tasks, experts)))
    return time.perf_counter() - t0, len(rewards), int(sum(rewards))


def throughput(tasks, experts, concurrency: int) -> list[dict]:
    import ray

    from envs import factory
    from forge_ray.env.adapters import LocalEnv, PooledEnv
    from forge_ray.env.pool import EnvPool, EnvPoolSpec

    make = factory("swe", {"backend": "auto"})
    rows = []
    seconds, n, ok = asyncio.run(episodes(lambda: LocalEnv(make()), tasks, experts, concurrency))
    rows.append({"mode": f"in-process LocalEnv, {concurrency} concurrent", "episodes": n, "resolved": ok, "seconds": seconds,
                 "episodes_per_min": 60 * n / seconds})
    ray.init(num_cpus=4, include_dashboard=False)
    try:
        pool = EnvPool.create(EnvPoolSpec("swe", make, 1, concurrency, 120.0))
        try:
            seconds, n, ok = asyncio.run(episodes(lambda: PooledEnv(pool), tasks, experts, concurrency))
        finally:
            pool.shutdown()
    finally:
        ray.shutdown()
    rows.append({"mode": f"EnvPool x1 ({concurrency} slots), {concurrency} concurrent", "episodes": n, "resolved": ok,
                 "seconds": seconds, "episodes_per_min": 60 * n / seconds})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="data/swe_tasks")
    ap.add_argument("--actions", type=int, default=30, help="runs of each command")
    ap.add_argument("--episodes", type=int, default=8, help="expert episodes per throughput mode")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "swe_env.json"))
    args = ap.parse_args()

    from envs.swe import SweTasks

    source = SweTasks(args.tasks)
    tasks = source.tasks("train", args.episodes, 0)
    t0 = time.perf_counter()
    experts = [[m["content"] for m in source.expert(t) if m["role"] == "assistant"] for t in tasks]
    expert_s = (time.perf_counter() - t0) / len(tasks)
    latency = action_latency(tasks[0], args.actions)
    pool = throughput(tasks, experts, args.concurrency)

    print(f"{'command':<48}{'env s':>9}{'plain s':>9}{'ratio':>7}")
    for r in latency:
        print(f"{r['command']:<48}{r['env_median_s']:>9.4f}{r['subprocess_median_s']:>9.4f}{r['ratio']:>7.1f}")
    print(f"\n{'mode':<48}{'episodes':>9}{'resolved':>9}{'ep/min':>8}")
    for r in pool:
        print(f"{r['mode']:<48}{r['episodes']:>9}{r['resolved']:>9}{r['episodes_per_min']:>8.1f}")
    print(f"\none expert trajectory (played through the env, or read from the tasks folder's cache): {expert_s:.2f} s")
    out = {"config": vars(args), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
           "load_avg": os.getloadavg()}, "action_latency": latency, "throughput": pool, "expert_seconds": expert_s}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
