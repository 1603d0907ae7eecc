"""Benchmark: what forge_ray's RL step costs against the raw cost of its parts, in one run.

    .venv/bin/python bench/step_cost.py --model runs/quickstart-*/checkpoints/sft [--steps 12] [--rounds 3] [--out FILE]

The same work four ways, one after the other in this process, from the same checkpoint and job
file (the quickstart's: 16 prompts x 8 samples per step, multi-turn calculator episodes, every
trajectory trained: ``learner.drop_zero_variance=false``):

1. forge_ray, ``mode: sync``, ``--steps`` RL steps: the median step time (``anatomy/step_s``)
   after the first two steps;
2. forge_ray, ``mode: async``, the same;
3. raw generation: a batch of 16 x 8 episodes is played once in this process with the job's
   agent loop (no Ray), then exactly its sampled tokens are generated again by a bare vLLM
   ``AsyncLLM`` with the job's engine settings, turn by turn (every turn-k request at once, each
   with the turn's prompt and exactly its length: ``min_tokens = max_tokens``, no stop): what
   vLLM alone needs for those tokens, without environments, Ray or the agent loop;
4. raw training: one FSDP2 train step (world size 1, both cores) on that batch, with the
   job's micro-batches, loss and optimizer.

Parts 3 and 4 are repeated ``--rounds`` times (fresh batches, after one uncounted warm-up
round; all generation first, then training with the engine shut down) and their medians taken. Prints
each figure and ``sync_over_parts`` = sync step / (generate + train) and ``async_over_parts``
= async step / max(generate, train); writes them to ``--out`` (bench/results/step_cost.json).
"""
from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from modes import parser, write

WORK = ["learner.drop_zero_variance=false", "run.wandb_mode=disabled", "run.sample_every=0"]


def forge_step_seconds(model: str, job_path: str, mode: str, steps: int, sets: list[str], name: str = "") -> dict[str, Any]:
    """Run the job in ``mode`` from ``model``; the median step figures after the first two steps,
    throughput, start-up and the RL phase's peak PSS."""
    from forge_ray.config import load_job
    from forge_ray.pipeline import run_job

    job = load_job(job_path, [f"model.path={model}", "sft.enabled=false", f"run.steps={steps}", f"run.mode={mode}",
                              f"run.name={name or 'step_cost-' + mode}", *WORK, *sets])
    summary = run_job(job)
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r["stage"] == "rl"][2:]
    keys = ("anatomy/step_s", "time/wait_rollout", "time/train", "time/export", "time/sync", "anatomy/engine_generating_frac",
            "anatomy/episode_wall_s", "anatomy/episode_engine_s", "anatomy/episode_env_s", "anatomy/episode_other_s")
    out = {k: statistics.median(r.get(k, 0.0) for r in rl) for k in keys}
    out.update(trajectories_per_s=summary["trajectories_per_s"], run_dir=summary["run_dir"],
               start_to_first_step_s=_first_step(rows), rl_pss_gb=summary["peak_pss_gb"].get("rl"),
               rl_pss_by_process_gb=summary.get("rl_pss_by_process_gb"))
    return out


def _first_step(rows: list[dict]) -> float | None:
    """Seconds from the run's start (``forge-ray run``'s run directory) to the end of its first
    RL step (the rows' ``time``)."""
    first = next((r for r in rows if r["stage"] == "rl"), None)
    return first["time"] if first else None


async def play_batch(job: Any, worker: Any, tasks: list, round_: int) -> list:
    """One step's episodes (``batch_prompts`` x ``group_size``) with the job's agent loop."""
    from forge_ray.rl_actors import episode_spec

    spec, g = episode_spec(job), job.rollout.group_size
    played = await asyncio.gather(*(worker._episode(t, spec, f"r{round_}-{t.id}", i) for t in tasks for i in range(g)))
    return [traj for traj, _ in played]


async def raw_generate(llm: Any, trajs: list) -> float:
    """Seconds for a bare ``AsyncLLM`` to generate exactly the sampled turns of ``trajs``,
    turn depth by turn depth (a turn's prompt is everything before it)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    async def one(prompt: list[int], n: int, rid: str) -> None:
        params = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=1.0, logprobs=0, detokenize=False)
        async for _ in llm.generate(TokensPrompt(prompt_token_ids=prompt), params, request_id=rid):
            pass

    depth = max(len(t.turns) for t in trajs)
    t0 = time.perf_counter()
    for k in range(depth):
        await asyncio.gather(*(one(t.tokens[: t.turns[k].start], t.turns[k].end - t.turns[k].start, f"raw-{k}-{i}-{time.time()}")
                               for i, t in enumerate(trajs) if k < len(t.turns)))
    return time.perf_counter() - t0


def raw_train(job: Any, trainer: Any, trajs: list) -> float:
    """Seconds of one train step of ``trainer`` (an in-process FSDPWorker) on ``trajs``, with
    the job's GRPO advantages and micro-batches."""
    from forge_ray.buffer import Group
    from forge_ray.learner.batching import plan_update
    from forge_ray.learner.worker import _chunks
    from forge_ray.rollout.group import trajectory_meta

    groups: dict[str, Group] = {}
    for t in trajs:
        g = groups.setdefault(t.group_id, Group(t.task_id, t.group_id))
        g.metas.append(trajectory_meta(t))
        g.refs.append(t)
    plan = plan_update(list(groups.values()), False, job.reward.turn_weight)
    batch = [box[0] for box, _, _ in plan.items]
    advs = [a for _, a, _ in plan.items]
    t0 = time.perf_counter()
    chunks = _chunks(batch, advs, None, job.learner.micro_batch, job.learner.micro_tokens)
    sums: dict[str, float] = {}
    trainer._accumulate(chunks, len(chunks), float(sum(n for _, _, n in plan.items)), sums)
    trainer._optimizer_step()
    return time.perf_counter() - t0


async def raw_parts(model: str, job_path: str, rounds: int, sets: list[str]) -> dict[str, Any]:
    """Median seconds of raw generation and raw training of one step's batch."""
    import socket

    import torch

    from forge_ray.config import load_job
    from forge_ray.driver import env_factory
    from forge_ray.learner.worker import FSDPWorker
    from forge_ray.rl_actors import engine_kwargs, episode_spec
    from forge_ray.rollout.group import RolloutWorker

    job = load_job(job_path, [f"model.path={model}", "sft.enabled=false", *WORK, *sets])
    worker = RolloutWorker(model, engine_kwargs(job, "cpu"), env_factory(job), episode_spec(job))
    await worker.start()
    from envs import make_tasks

    source = make_tasks(job.env.name, **job.env.kwargs)
    n = job.rollout.batch_prompts
    tasks = source.tasks("train", (rounds + 1) * n, job.env.seed + 7)
    batches, gen = [], []
    for k in range(rounds + 1):  # round 0 warms the engine up and is not counted
        batches.append(await play_batch(job, worker, tasks[k * n : (k + 1) * n], k))
        gen.append(await raw_generate(worker.engine.llm, batches[-1]))
    worker.shutdown()  # the trainer runs alone
    trainer = FSDPWorker(0, 1, job.learner, model, job.model.dtype, "cpu", temperature=job.rollout.temperature)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trainer.setup("127.0.0.1", port)
    torch.set_num_threads(2)  # a single-process trainer uses the machine's cores
    train = [raw_train(job, trainer, trajs) for trajs in batches]  # round 0 allocates the optimizer state
    tokens = [sum(t.num_sampled for t in trajs) for trajs in batches]
    for k in range(rounds + 1):
        logging.info("raw round %d: %d sampled tokens, generate %.2f s, train %.2f s", k, tokens[k], gen[k], train[k])
    return {"generate_s": statistics.median(gen[1:]), "train_s": statistics.median(train[1:]),
            "sampled_tokens": statistics.median(tokens[1:]), "generate_rounds": gen, "train_rounds": train}


def main() -> None:
    p = parser(__doc__, "step_cost.json")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(steps=12)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    forge = {mode: forge_step_seconds(args.model, args.job, mode, args.steps, args.set) for mode in ("sync", "async")}
    import ray

    ray.shutdown()  # the raw parts run alone
    raw = asyncio.run(raw_parts(args.model, args.job, args.rounds, args.set))
    result = {
        "sync_step_s": forge["sync"]["anatomy/step_s"], "async_step_s": forge["async"]["anatomy/step_s"],
        "raw_generate_s": raw["generate_s"], "raw_train_s": raw["train_s"],
        "sync_over_parts": forge["sync"]["anatomy/step_s"] / (raw["generate_s"] + raw["train_s"]),
        "async_over_parts": forge["async"]["anatomy/step_s"] / max(raw["generate_s"], raw["train_s"]),
    }
    print(f"\n{'':28}{'seconds':>10}")
    for k, v in result.items():
        print(f"{k:28}{v:>10.3f}")
    for mode in ("sync", "async"):
        print(f"\n{mode}: " + "  ".join(f"{k}={v:.3f}" for k, v in forge[mode].items() if isinstance(v, float)))
    write(args.out, {"model": args.model, "steps": args.steps, "rounds": args.rounds, "sets": args.set, **result,
                     "forge": forge, "raw": raw})


if __name__ == "__main__":
    main()
