"""The RL loop. Read it top to bottom: this is how forge_ray trains.

    spawn: rollout engines (vLLM), learner ranks (FSDP2), the trajectory buffer
    evaluate the starting policy on held-out tasks
    loop:  take M complete groups -> plan the update -> train -> export + sync weights
           (the feeder keeps the engines generating, at most ``max_staleness`` versions ahead)
    evaluate the final policy with the same code, save it as a Hugging Face folder

``mode: sync`` sets max_staleness to 0 (generate -> train -> sync, strictly alternating);
``mode: async`` overlaps generation of the next batch with training on this one.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from forge_ray.config import JobConfig
from forge_ray.metrics import Run

log = logging.getLogger("forge_ray.rl")


def _spawn(job: JobConfig, model_path: str, device: str) -> tuple[Any, Any, Any]:
    import ray

    from forge_ray.buffer import TrajectoryBuffer
    from forge_ray.learner.group import LearnerGroup
    from forge_ray.rollout.agent_loop import EpisodeSpec
    from forge_ray.rollout.group import RolloutGroup

    r, env = job.rollout, job.env
    spec = EpisodeSpec(r.max_new_tokens, r.max_context, r.temperature, r.top_p, r.episode_timeout_s)
    engine_kwargs = dict(dtype=job.model.dtype, max_model_len=r.max_context + r.max_new_tokens, kv_cache_mb=r.kv_cache_mb,
                         gpu_memory_utilization=r.gpu_memory_utilization, device=device, seed=job.run.seed)
    env_kwargs = {"max_tool_turns": env.max_turns} if env.name == "calculator" else {}
    gpu = {"GPU": 1} if device == "cuda" else {}
    rollout = RolloutGroup(model_path, r.num_engines, engine_kwargs, env.name, env_kwargs, spec, {"CPU": 1, **gpu})
    learner = LearnerGroup(job.learner, model_path, job.model.dtype, device, {"CPU": 1, **gpu}, temperature=r.temperature)
    buffer = ray.remote(TrajectoryBuffer).options(name="forge/buffer", max_concurrency=10_000).remote(
        r.group_size, staleness(job), capacity=r.batch_prompts * (staleness(job) + 2))
    return rollout, learner, buffer


def staleness(job: JobConfig) -> int:
    return 0 if job.run.mode == "sync" else job.run.max_staleness


async def run_rl(job: JobConfig, run: Run, model_path: str, device: str) -> dict[str, Any]:
    """Train ``model_path`` with asynchronous multi-turn GRPO; returns the RL summary."""
    rollout, learner, buffer = _spawn(job, model_path, device)
    try:
        return await _train(job, run, rollout, learner, buffer)
    finally:  # free the actors and placement groups even when training fails
        import ray

        rollout.shutdown()
        learner.shutdown()
        ray.kill(buffer)


async def _train(job: JobConfig, run: Run, rollout: Any, learner: Any, buffer: Any) -> dict[str, Any]:
    from envs import make_tasks
    from forge_ray.eval import evaluate
    from forge_ray.feeder import Feeder, PromptPool
    from forge_ray.learner.batching import plan_update

    with run.timer("startup"):
        engine_seconds, _ = await asyncio.gather(rollout.start(), learner.setup())
    log.info("engines up in %s s; learner ranks ready", [round(s, 1) for s in engine_seconds])
    source = make_tasks(job.env.name, **job.env.kwargs)
    heldout = source.tasks("heldout", job.env.eval_tasks, job.env.seed)
    before = await evaluate(rollout, heldout, job.run.eval_greedy)
    run.log("eval", 0, {"name": "sft", **before})
    log.info("held-out success before RL: %.3f (n=%d)", before["success"], before["n"])

    pool = PromptPool(source.tasks("train", job.env.train_tasks, job.env.seed))
    feeder = Feeder(pool, rollout, buffer, group_size=job.rollout.group_size, batch_prompts=job.rollout.batch_prompts,
                    batch_groups=job.learner.batch_groups, max_staleness=staleness(job))
    feeder.start()
    run.pop_timers()
    version, t_start, learner_busy, sync_seconds = 0, time.perf_counter(), 0.0, []
    for step in range(1, job.run.steps + 1):
        with run.timer("wait_rollout"):
            taken = await buffer.take.remote(job.learner.batch_groups, version)
        for group in taken.stale:  # too old to learn from: run the prompt again
            feeder.requeue(group.task_id)
        feeder.taken([g.task_id for g in taken.groups])
        plan = plan_update(taken.groups, job.learner.drop_zero_variance, job.reward.turn_weight)
        lag = max((version - g.min_version for g in taken.groups), default=0)  # policy versions behind
        for group in taken.groups:
            pool.consume(group.task_id)

        metrics: dict[str, Any] = {}
        if plan.items:
            t0 = time.perf_counter()
            with run.timer("train"):
                metrics = await learner.train_step(plan.items)
            version += 1
            with run.timer("sync"):
                refs = await learner.export_weights(version, job.rollout.bucket_mb)
                learner_busy += time.perf_counter() - t0
                syncs = await rollout.update_weights(version, refs)
            sync_seconds.append(max(s["sync_seconds"] for s in syncs))
            metrics["sync_seconds"] = sync_seconds[-1]
        feeder.step_done()
        _log_step(run, step, version, lag, plan, metrics, taken, feeder, t_start)

    await feeder.stop()
    wall = time.perf_counter() - t_start
    ledger = pool.check(feeder.untaken)
    after = await evaluate(rollout, heldout, job.run.eval_greedy)
    run.log("eval", job.run.steps, {"name": "rl", **after})
    log.info("held-out success after RL: %.3f (before %.3f)", after["success"], before["success"])
    final_dir = await learner.save_hf(str(run.dir / "checkpoints" / "rl"))
    return {
        "sft_success": before["success"], "rl_success": after["success"], "eval_tasks": after["n"],
        "rl_checkpoint": final_dir, "policy_version": version, "rl_wall_seconds": wall,
        "trajectories": feeder.trajectories, "trajectories_per_s": feeder.trajectories / wall,
        "rollout_idle_frac": 1 - feeder.busy() / wall, "learner_idle_frac": 1 - learner_busy / wall,
        "sync_seconds_mean": sum(sync_seconds) / max(len(sync_seconds), 1),
        "engine_start_seconds": engine_seconds, **ledger,
    }


def _log_step(run: Run, step: int, version: int, lag: int, plan: Any, metrics: dict, taken: Any, feeder: Any, t_start: float) -> None:
    rewards = plan.rewards or [0.0]
    row = {
        "version": version, "reward_mean": sum(rewards) / len(rewards),
        "groups_used": plan.groups_used, "groups_zero_variance": plan.groups_zero_variance,
        "groups_stale": len(taken.stale), "masked": plan.masked, "env_failures": plan.env_failures,
        "staleness_max": lag,
        "trajectories": feeder.trajectories, "trajectories_per_s": feeder.trajectories / (time.perf_counter() - t_start),
        **{k: v for k, v in metrics.items()}, **run.pop_timers(),
    }
    run.log("rl", step, row)
    if step % run.job.run.log_every == 0:
        log.info("rl step %d/%d  v%d  reward %.3f  loss %.4f  groups %d (+%d flat, %d stale)  %.1f traj/s",
                 step, run.job.run.steps, version, row["reward_mean"], metrics.get("loss", float("nan")),
                 plan.groups_used, plan.groups_zero_variance, len(taken.stale), row["trajectories_per_s"])
