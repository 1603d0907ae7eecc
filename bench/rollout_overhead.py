"""Benchmark: forge_ray's rollout path against raw vLLM generation of the same tokens, in one run.

    .venv/bin/python bench/rollout_overhead.py --model runs/quickstart-*/checkpoints/sft [--rounds 4] [--out FILE]

1. forge_ray: one rollout engine actor (``RolloutGroup``, the job's engine settings and episode
   limits, calculator environments in the actor) plays ``--prompts`` groups of G samples at once,
   as the feeder issues them (``run_group``: agent loop, tokenising, environment steps, scoring,
   the object-store put and the buffer), ``--rounds`` times; each round's wall time and sampled
   tokens are recorded, and its trajectories taken from the buffer.
2. raw: the engine actor shut down, a bare ``VLLMEngine`` with the same settings in this process
   generates exactly those sampled turns again (``step_cost.raw_generate``: turn depth by turn
   depth, each turn's prompt and exactly its length).

The first round of each is a warm-up and left out. Prints sampled tokens/s of both and
``ratio`` = forge_ray / raw, and writes them to ``--out`` (bench/results/rollout_overhead.json).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from modes import parser, write
from step_cost import raw_generate

WORK = ["run.wandb_mode=disabled"]
log = logging.getLogger("bench.rollout_overhead")


async def forge_rounds(job: Any, model: str, rounds: int, prompts: int) -> tuple[list[float], list[list]]:
    """Seconds of each round of ``prompts`` groups through the rollout actor, and its trajectories."""
    import ray

    from forge_ray.buffer import TrajectoryBuffer
    from forge_ray.driver import env_factory, task_source
    from forge_ray.rl_actors import engine_kwargs, episode_spec
    from forge_ray.rollout.group import RolloutGroup

    r = job.rollout
    tasks = task_source(job).tasks("train", rounds * prompts, job.env.seed)
    rollout = RolloutGroup(model, 1, engine_kwargs(job, "cpu"), env_factory(job), episode_spec(job), {"CPU": 1})
    buffer = ray.remote(TrajectoryBuffer).options(max_concurrency=10_000).remote(r.group_size, 10**9, capacity=10**9)
    seconds, batches = [], []
    try:
        await rollout.start()
        for k in range(rounds):
            chunk = tasks[k * prompts:(k + 1) * prompts]
            t0 = time.perf_counter()
            await asyncio.gather(*(rollout.run_group(t, f"{t.id}#1", r.group_size, buffer, issue=i) for i, t in enumerate(chunk)))
            seconds.append(time.perf_counter() - t0)
            groups = await buffer.drain.remote()
            batches.append(ray.get([ref for g in groups for ref in g.refs]))
            log.info("round %d: %d trajectories in %.1f s", k, len(batches[-1]), seconds[-1])
    finally:
        rollout.shutdown()
        ray.kill(buffer)
    return seconds, batches


async def raw_rounds(job: Any, model: str, batches: list[list]) -> list[float]:
    from forge_ray.rl_actors import engine_kwargs
    from forge_ray.rollout.engine import VLLMEngine

    engine = VLLMEngine(model, **engine_kwargs(job, "cpu"))
    await engine.start()
    try:
        return [await raw_generate(engine.llm, trajs) for trajs in batches]
    finally:
        engine.shutdown()


def main() -> None:
    import ray

    from forge_ray.config import load_job

    p = parser(__doc__, "rollout_overhead.json")
    p.add_argument("--rounds", type=int, default=4, help="rounds of --prompts groups; the first is a warm-up")
    p.add_argument("--prompts", type=int, default=16, help="groups played at once (the quickstart's N)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    job = load_job(args.job, [f"model.path={args.model}", *WORK, *args.set])
    ray.init(num_cpus=max(job.cluster.num_cpus, 2), include_dashboard=False, log_to_driver=False)
    forge_s, batches = asyncio.run(forge_rounds(job, args.model, args.rounds, args.prompts))
    raw_s = asyncio.run(raw_rounds(job, args.model, batches))
    tokens = [sum(t.num_sampled for t in trajs) for trajs in batches]
    kept = slice(1, None)  # the first round warms both up
    forge_tps = sum(tokens[kept]) / sum(forge_s[kept])
    raw_tps = sum(tokens[kept]) / sum(raw_s[kept])
    print(f"\n{'round':>6}{'trajectories':>14}{'tokens':>9}{'forge_ray s':>13}{'raw s':>9}")
    for k, (trajs, f, r) in enumerate(zip(batches, forge_s, raw_s)):
        print(f"{k:>6}{len(trajs):>14}{tokens[k]:>9}{f:>13.2f}{r:>9.2f}" + ("   (warm-up)" if k == 0 else ""))
    episodes = [t for trajs in batches[kept] for t in trajs]
    anatomy = {k: sum(getattr(t, f"{k}_seconds") for t in episodes) / len(episodes) for k in ("wall", "gen", "env", "score")}
    print(f"\nper episode (s): {', '.join(f'{k} {v:.3f}' for k, v in anatomy.items())}; turns {sum(len(t.turns) for t in episodes) / len(episodes):.2f}")
    print(f"sampled tokens/s: forge_ray {forge_tps:.1f}, raw vLLM {raw_tps:.1f}; ratio (forge_ray / raw) {forge_tps / raw_tps:.3f}")
    write(args.out, {"model": args.model, "job": args.job, "sets": args.set, "rounds": args.rounds, "prompts": args.prompts,
                     "group_size": job.rollout.group_size, "tokens": tokens, "forge_seconds": forge_s, "raw_seconds": raw_s,
                     "forge_tokens_per_s": forge_tps, "raw_tokens_per_s": raw_tps, "ratio": forge_tps / raw_tps,
                     "episode_seconds": anatomy})


if __name__ == "__main__":
    main()
