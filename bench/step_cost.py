"""Benchmark: what forge_ray's RL step costs against the raw cost of its parts, in one run.

    .venv/bin/python bench/step_cost.py --model runs/quickstart-*/checkpoints/sft [--steps 12] [--out FILE]

The quickstart's RL work (16 prompts x 8 samples per step, multi-turn calculator episodes,
every trajectory trained: ``learner.drop_zero_variance=false``), from the same checkpoint, in
this process, one after the other:

1. forge_ray, ``mode: sync``, then ``mode: async``, ``--steps`` RL steps each, writing every
   trajectory it trains on (``run.dump_rollouts``);
2. raw generation: for each of those steps, exactly its sampled tokens generated again by a
   bare vLLM ``AsyncLLM`` with the job's engine settings, turn by turn (every turn-k request of
   the step at once, each with its turn's prompt and exactly its length: ``min_tokens =
   max_tokens``, no stop): what vLLM alone needs for those tokens, without environments, Ray,
   the agent loop or the waits between turns;
3. raw training: for each step, one FSDP2 train step (world size 1, both cores) on exactly that
   step's batch, with the job's advantages, micro-batches, loss and optimizer.

The first two steps of each run are left out (warm-up). Prints, over the remaining steps,
forge_ray's step time, the raw parts, ``sync_over_parts`` = sync step / (generate + train) and
``async_over_parts`` = async step / max(generate, train) (sums over the steps), and writes them
with the step anatomy of both runs to ``--out`` (bench/results/step_cost.json).
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
ANATOMY = ("anatomy/step_s", "time/wait_rollout", "time/train", "time/export", "time/sync", "anatomy/engine_generating_frac",
           "anatomy/episode_wall_s", "anatomy/episode_engine_s", "anatomy/episode_env_s", "anatomy/episode_other_s", "pad_frac")


def forge_step_seconds(model: str, job_path: str, mode: str, steps: int, sets: list[str], name: str = "") -> dict[str, Any]:
    """Run the job in ``mode`` from ``model``; per-step figures after the first two steps (their
    medians), throughput, start-up and the RL phase's peak PSS."""
    from forge_ray.config import load_job
    from forge_ray.pipeline import run_job

    job = load_job(job_path, [f"model.path={model}", "sft.enabled=false", f"run.steps={steps}", f"run.mode={mode}",
                              f"run.name={name or 'step_cost-' + mode}", *WORK, *sets])
    summary = run_job(job)
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r["stage"] == "rl"][2:]
    out: dict[str, Any] = {k: statistics.median(r.get(k, 0.0) for r in rl) for k in ANATOMY}
    out.update(trajectories_per_s=summary["trajectories_per_s"], run_dir=summary["run_dir"],
               start_to_first_step_s=_first_step(rows), rl_pss_gb=summary["peak_pss_gb"].get("rl"),
               rl_pss_by_process_gb=summary.get("rl_pss_by_process_gb"),
               steps={r["step"]: r["anatomy/step_s"] - r.get("time/dump", 0.0) for r in rl})  # the dump is the bench's, not the step's
    return out


def _first_step(rows: list[dict]) -> float | None:
    """Seconds from the run's start (``forge-ray run``'s run directory) to the end of its first
    RL step (the rows' ``time``)."""
    first = next((r for r in rows if r["stage"] == "rl"), None)
    return first["time"] if first else None


def load_batches(run_dir: str, steps: list[int]) -> dict[int, list]:
    """The trajectories each of ``steps`` trained on (``rollouts/step_NNNNNN.jsonl``)."""
    from forge_ray.types import Trajectory

    root = Path(run_dir) / "rollouts"
    return {s: [Trajectory.from_json(json.loads(x)) for x in (root / f"step_{s:06d}.jsonl").read_text().splitlines()] for s in steps}


async def raw_generate(llm: Any, trajs: list) -> float:
    """Seconds for a bare ``AsyncLLM`` to generate exactly the sampled turns of ``trajs``,
    turn depth by turn depth (a turn's prompt is everything before it)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    async def one(prompt: list[int], n: int, rid: str) -> None:
        params = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=1.0, logprobs=0, detokenize=False,
                                output_kind=RequestOutputKind.FINAL_ONLY)  # as the rollout engine asks
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
    trainer._accumulate(chunks, len(chunks), float(sum(n for _, _, n in plan.items)), {})
    trainer._optimizer_step()
    return time.perf_counter() - t0


async def raw_parts(model: str, job_path: str, batches: list[list], sets: list[str]) -> tuple[list[float], list[float]]:
    """Seconds of raw generation and raw training of each batch (after one uncounted warm-up
    of each on the first batch; all generation first, then training with the engine shut down)."""
    import socket

    import torch

    from forge_ray.config import load_job
    from forge_ray.learner.worker import FSDPWorker
    from forge_ray.rl_actors import engine_kwargs
    from forge_ray.rollout.engine import VLLMEngine

    job = load_job(job_path, [f"model.path={model}", "sft.enabled=false", *WORK, *sets])
    engine = VLLMEngine(model, **engine_kwargs(job, "cpu"))
    await engine.start()
    gen = [await raw_generate(engine.llm, trajs) for trajs in [batches[0], *batches]][1:]
    engine.shutdown()
    trainer = FSDPWorker(0, 1, job.learner, model, job.model.dtype, "cpu", temperature=job.rollout.temperature)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    trainer.setup("127.0.0.1", port)
    torch.set_num_threads(2)  # a single-process trainer uses the machine's cores
    train = [raw_train(job, trainer, trajs) for trajs in [batches[0], *batches]][1:]  # the warm-up allocates AdamW's state
    return gen, train


def main() -> None:
    p = parser(__doc__, "step_cost.json")
    p.set_defaults(steps=12)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    sets = [*args.set, "run.dump_rollouts=true"]
    forge = {mode: forge_step_seconds(args.model, args.job, mode, args.steps, sets) for mode in ("sync", "async")}
    import ray

    ray.shutdown()  # the raw parts run alone
    steps = {mode: sorted(forge[mode]["steps"]) for mode in forge}
    batches = {mode: load_batches(forge[mode]["run_dir"], steps[mode]) for mode in forge}
    flat = [batches[m][s] for m in forge for s in steps[m]]
    gen, train = asyncio.run(raw_parts(args.model, args.job, flat, args.set))
    parts: dict[str, list] = {}
    for m in forge:
        n = len(steps[m])
        parts[m], gen, train = list(zip(gen[:n], train[:n])), gen[n:], train[n:]
    forge_sum = {m: sum(forge[m]["steps"].values()) for m in forge}
    result = {
        "sync_step_s": forge_sum["sync"] / len(parts["sync"]), "async_step_s": forge_sum["async"] / len(parts["async"]),
        "raw_generate_s": statistics.mean(g for m in parts for g, _ in parts[m]),
        "raw_train_s": statistics.mean(t for m in parts for _, t in parts[m]),
        "sync_over_parts": forge_sum["sync"] / sum(g + t for g, t in parts["sync"]),
        "async_over_parts": forge_sum["async"] / sum(max(g, t) for g, t in parts["async"]),
    }
    print(f"\n{'':28}{'seconds':>10}")
    for k, v in result.items():
        print(f"{k:28}{v:>10.3f}")
    for mode in forge:
        print(f"\n{mode}: " + "  ".join(f"{k}={v:.3f}" for k, v in forge[mode].items() if isinstance(v, float)))
        print(f"{mode} raw (generate, train) per step: " + " ".join(f"({g:.2f}, {t:.2f})" for g, t in parts[mode]))
    write(args.out, {"model": args.model, "steps": args.steps, "sets": args.set, **result, "forge": forge,
                     "raw": {m: [{"step": s, "generate_s": g, "train_s": t} for s, (g, t) in zip(steps[m], parts[m])] for m in parts}})


if __name__ == "__main__":
    main()
