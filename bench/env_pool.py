"""Env-pool throughput: calculator steps per second through the pool vs in-process.

    .venv/bin/python bench/env_pool.py [--episodes 64] [--steps 20] [--slots 16]

Each of ``--episodes`` concurrent episodes resets once and then steps ``--steps`` trivial
``add`` calls (no model: this measures the environment path only). In-process is ``LocalEnv``
on the event loop; pooled is ``PooledEnv`` over ``pool_size`` env actors of ``--slots`` slots
each, every call a Ray actor call. Writes bench/results/env_pool.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

from forge_ray.types import Action, ToolCall

ACTION = Action('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', [ToolCall("add", {"a": 1, "b": 2})])


async def drive(make_env, tasks, steps: int) -> tuple[float, int]:
    """Play every task concurrently; (seconds, steps taken)."""
    async def episode(task) -> int:
        env = make_env()
        await env.open(task)
        try:
            for _ in range(steps):
                result = await env.step(ACTION)
                assert not result.done and "3" in result.messages[0]["content"], result
        finally:
            await env.close()
        return steps

    t0 = time.perf_counter()
    done = await asyncio.gather(*(episode(t) for t in tasks))
    return time.perf_counter() - t0, sum(done)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--pool-sizes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "env_pool.json"))
    args = ap.parse_args()

    import ray

    from envs import factory, make_env, make_tasks
    from forge_ray.env.adapters import LocalEnv, PooledEnv
    from forge_ray.env.pool import EnvPool, EnvPoolSpec

    kwargs = {"max_tool_turns": args.steps + 1}
    tasks = make_tasks("calculator").tasks("train", args.episodes, 0)
    rows = []
    seconds, n = asyncio.run(drive(lambda: LocalEnv(make_env("calculator", **kwargs)), tasks, args.steps))
    rows.append({"mode": "in-process LocalEnv", "pool_size": 0, "steps": n, "seconds": seconds, "steps_per_s": n / seconds})
    ray.init(num_cpus=max(args.pool_sizes) + 1, include_dashboard=False)
    try:
        for size in args.pool_sizes:
            pool = EnvPool.create(EnvPoolSpec("calculator", factory("calculator", kwargs), size, args.slots, 30.0))
            try:
                asyncio.run(drive(lambda: PooledEnv(pool), tasks[: size * args.slots], 2))  # warm-up
                seconds, n = asyncio.run(drive(lambda: PooledEnv(pool), tasks, args.steps))
                busy = [ray.get(a.stats.remote())["busy_fraction"] for a in ray.get(pool.manager.actors.remote())]
            finally:
                pool.shutdown()
            rows.append({"mode": f"EnvPool x{size}", "pool_size": size, "steps": n, "seconds": seconds, "steps_per_s": n / seconds,
                         "env_busy_fraction": busy})
    finally:
        ray.shutdown()

    print(f"{'mode':<22}{'steps':>8}{'seconds':>10}{'steps/s':>12}")
    for r in rows:
        print(f"{r['mode']:<22}{r['steps']:>8}{r['seconds']:>10.2f}{r['steps_per_s']:>12.0f}")
    out = {"config": {**vars(args), "slots": args.slots}, "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
           "ray": ray.__version__}, "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
