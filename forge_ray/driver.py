"""The RL loop. Read it top to bottom: this is how forge_ray trains.

    spawn: rollout engines (vLLM), learner ranks (FSDP2), the trajectory buffer
    evaluate the starting policy on held-out tasks (the first groups already generating)
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
from collections import Counter
from typing import TYPE_CHECKING, Any

from forge_ray import checkpoint, telemetry
from forge_ray.anatomy import engine_reports
from forge_ray.checkpoint import DriverState
from forge_ray.collapse import watch
from forge_ray.config import JobConfig
from forge_ray.eval import evaluate
from forge_ray.feeder import collect
from forge_ray.metrics import Run
from forge_ray.publish import publish, sync, update
from forge_ray.rl_actors import Actors, spawn

if TYPE_CHECKING:
    from forge_ray.feeder import Feeder

log = logging.getLogger("forge_ray.rl")


def env_factory(job: JobConfig) -> Any:
    """The job's environment maker (``env.env_kwargs``; for the calculator also ``env.max_turns``):
    the one place the RL core's environments come from ``envs/``. A mix: each domain's, by task."""
    import envs

    env = job.env
    if env.mix:
        from forge_ray.mix import mix_domains, mixed_factory

        return mixed_factory({name: env_factory(djob) for name, djob in mix_domains(job).items()})
    return envs.factory(env.name, {**({"max_tool_turns": env.max_turns} if env.name == "calculator" else {}), **env.env_kwargs})


def task_source(job: JobConfig) -> Any:
    """The job's task source (``env.name`` with ``env.kwargs``), from ``envs/``. A mix: every
    mixed domain's tasks, tagged with their domain."""
    from envs import make_tasks

    if job.env.mix:
        from forge_ray.mix import MixedTasks, episode_limits, mix_domains

        return MixedTasks({name: (task_source(d), d.env, episode_limits(d)) for name, d in mix_domains(job).items()})
    return make_tasks(job.env.name, **job.env.kwargs)


def staleness(job: JobConfig) -> int:
    return 0 if job.run.mode == "sync" else job.run.max_staleness


async def run_rl(job: JobConfig, run: Run, model_path: str, device: str) -> dict[str, Any]:
    """Train ``model_path`` with asynchronous multi-turn GRPO; returns the RL summary."""
    with run.timer("spawn"):
        actors = spawn(job, model_path, device, env_factory(job), staleness(job))
    try:
        return await _train(job, run, actors)
    finally:  # free the actors and placement groups even when training fails
        actors.shutdown()


async def _train(job: JobConfig, run: Run, actors: Actors) -> dict[str, Any]:
    from forge_ray.feeder import Feeder, PromptPool
    from forge_ray.guard import CollapseGuard
    from forge_ray.mix import MixedGuard

    rollout, learner = actors.rollout, actors.learner
    with run.timer("startup"):
        engine_seconds, _ = await asyncio.gather(rollout.start(), learner.setup())
    log.info("engines up in %s s; learner ranks ready", [round(s, 1) for s in engine_seconds])
    source = task_source(job)
    heldout = source.tasks("heldout", job.env.eval_tasks, job.env.seed)
    pool = PromptPool(source.tasks("train", job.env.train_tasks, job.env.seed), mixed=bool(job.env.mix))
    feeder = Feeder(pool, rollout, actors.buffer, group_size=job.rollout.group_size, batch_prompts=job.rollout.batch_prompts,
                    batch_groups=job.learner.batch_groups, max_staleness=staleness(job), schedule=job.env.mix)
    guard = MixedGuard(job.guard, job.env.mix) if job.env.mix else CollapseGuard(job.guard)
    state = await _resume(job, actors, feeder, guard, run)
    t_start = time.perf_counter() - (state.wall if state else 0.0)
    feeder.start()  # the first groups generate while the starting policy is evaluated
    state = state or DriverState(before=await _evaluate_start(job, run, rollout, heldout))
    log.info("start-up: %s", {k.removeprefix("time/"): round(v, 1) for k, v in run.pop_timers().items()})
    run.timeline.step(0, await engine_reports(rollout), [])  # start-up and the first evaluation: the timeline's step 0
    for step in range(state.step + 1, job.run.steps + 1):
        row = await _step(job, run, step, state, actors, feeder, t_start)
        if await watch(job, run, state, actors, guard, step, row):
            break
        if job.run.checkpoint_every and step % job.run.checkpoint_every == 0 and step < job.run.steps:
            await _checkpoint(job, run, state, actors, feeder, guard, t_start)

    await feeder.stop()  # groups still playing are abandoned; untaken complete groups stay buffered
    wall = time.perf_counter() - t_start
    ledger = pool.check(Counter(await actors.buffer.task_ids.remote()))
    after = await evaluate(rollout, heldout, job.run.eval_greedy)
    run.log("eval", job.run.steps, {"name": "rl", **after})
    log.info("held-out success after RL: %.3f (before %.3f)", after["success"], state.before["success"])
    final_dir = await learner.save_hf(str(run.dir / "checkpoints" / "rl"))
    return {
        "sft_success": state.before["success"], "rl_success": after["success"], "eval_tasks": after["n"],
        "rl_checkpoint": final_dir, "policy_version": state.version, "rl_wall_seconds": wall,
        "trajectories": feeder.trajectories, "trajectories_per_s": feeder.trajectories / wall,
        "rollout_idle_frac": 1 - feeder.busy() / wall, "learner_idle_frac": 1 - state.learner_busy / wall,
        "sync_seconds_mean": sum(state.sync_seconds) / max(len(state.sync_seconds), 1),
        "engine_start_seconds": engine_seconds, "rollout_restarts": rollout.restarts, "learner_restarts": learner.restarts, **ledger,
        "weight_sync": job.rollout.weight_sync, "weight_groups": rollout.epochs,
        "rl_steps": state.step, "guard_verdicts": len(run.read_metrics("guard")), "lr_scale": state.lr_scale,
        **({"by_category": {"sft": state.before["by_category"], "rl": after["by_category"]}} if "by_category" in after else {}),
    }


async def _evaluate_start(job: JobConfig, run: Run, rollout: Any, heldout: list) -> dict[str, Any]:
    with run.timer("eval"):
        before = await evaluate(rollout, heldout, job.run.eval_greedy)
    run.log("eval", 0, {"name": "sft", **before})
    log.info("held-out success before RL: %.3f (n=%d)", before["success"], before["n"])
    return before


async def _resume(job: JobConfig, actors: Actors, feeder: Feeder, guard: Any, run: Run) -> DriverState | None:
    """When the run directory has an RL checkpoint, continue from it: learner state, engine
    weights, prompt ledger, buffered groups, step axis. None for a fresh run."""
    path = checkpoint.latest(run.dir)
    if path is None:
        return None
    restored = checkpoint.load(path)
    state = restored.state
    await actors.learner.load_checkpoint(str(path))
    if state.lr_scale != 1.0:
        await actors.learner.set_lr_scale(state.lr_scale)
    if state.guard:
        guard.load_state_dict(state.guard)
    await publish(job, actors, state.version)
    feeder.pool.restore(state.ledger)
    buffered = await checkpoint.refill(actors.buffer, restored.groups)
    requeue = checkpoint.inflight(feeder.pool.outstanding, buffered)
    feeder.restore(state.step, state.trajectories, state.rollout_busy, requeue)
    run.truncate(state.step)
    log.info("resumed from %s: step %d, policy v%d, %d groups back in the buffer, %d prompts re-queued",
             path, state.step, state.version, sum(buffered.values()), len(requeue))
    return state


async def _step(job: JobConfig, run: Run, step: int, state: DriverState, actors: Actors, feeder: Feeder, t_start: float) -> dict:
    """One learner step: take M groups, update, publish the new weights to the engines; returns
    the step's metrics row."""
    from forge_ray.buffer import TrajectoriesLost
    from forge_ray.feeder import why
    from forge_ray.learner.batching import plan_update
    from forge_ray.mix import step_columns

    domain = feeder.domain()  # env.mix: the domain this step trains on
    while True:
        taken = await collect(job, run, state, actors, feeder)
        plan = plan_update(taken.groups, job.learner.drop_zero_variance, job.reward.turn_weight)
        lag = max((g.lag(state.version) for g in taken.groups), default=0)  # policy versions behind
        try:
            metrics = await _learn(job, run, state, actors, plan.items) if plan.items else {}
            break
        except TrajectoriesLost as e:  # a producer or a node died under buffered groups
            log.warning("%d taken groups lost their trajectories (%s); their prompts run again", len(taken.groups), why(e))
            for group in taken.groups:
                feeder.requeue(group.task_id)
    for group in taken.groups:
        feeder.pool.consume(group.task_id)
    feeder.step_done()
    state.step = step
    metrics.update(run.timeline.step(step, await engine_reports(actors.rollout), [m for g in taken.groups for m in g.metas]))
    if domain:
        metrics.update(step_columns(domain, taken.groups, feeder.pool.consumed))
    row = _log_step(run, step, state.version, lag, plan, metrics, taken, feeder, t_start)
    telemetry.record_step(row, feeder.pop_token_rate(), (await actors.buffer.stats.remote())["ready"], len(taken.groups))
    if job.run.sample_every and step % job.run.sample_every == 0:
        run.log_samples(step, _samples(taken.groups))
    if job.run.dump_rollouts:
        with run.timer("dump"):  # counted in the next step's row
            run.dump_rollouts(step, _samples(taken.groups, k=len(taken.groups), every=True))
    return row


async def _learn(job: JobConfig, run: Run, state: DriverState, actors: Actors, items: list) -> dict[str, Any]:
    """Update on ``items``, then sync the new policy version to the engines."""
    t0 = time.perf_counter()
    metrics, exported = await update(job, run, actors.learner, items, state.version + 1)  # timers "train", "export"
    state.version += 1
    state.learner_busy += time.perf_counter() - t0
    with run.timer("sync"):
        syncs = await sync(job, actors, state.version, exported)
    state.sync_seconds.append(max((s["sync_seconds"] for s in syncs), default=0.0))
    return {**metrics, "sync_seconds": state.sync_seconds[-1]}


async def _checkpoint(job: JobConfig, run: Run, state: DriverState, actors: Actors, feeder: Feeder, guard: Any, t_start: float) -> None:
    def snapshot() -> DriverState:  # called after the buffer's snapshot: see checkpoint.py
        state.ledger, state.guard = feeder.pool.state(), guard.state_dict()
        state.trajectories, state.rollout_busy = feeder.trajectories, feeder.busy()
        state.wall = time.perf_counter() - t_start
        return state

    with run.timer("checkpoint"):
        await checkpoint.save(run.dir, state.step, snapshot, actors.learner, actors.buffer, job.run.keep_checkpoints)


def _samples(groups: list, k: int = 4, every: bool = False) -> list[Any]:
    """The first trajectory (``every``: all of them) of up to ``k`` groups, fetched from the
    object store (for logging; none when their payload is gone, see ``TrajectoriesLost``)."""
    import ray
    from ray.exceptions import ObjectLostError

    refs = [r for g in groups[:k] for r in (g.refs if every else g.refs[:1])]
    try:
        return ray.get(refs) if refs else []
    except ObjectLostError:
        return []


def _log_step(run: Run, step: int, version: int, lag: int, plan: Any, metrics: dict, taken: Any, feeder: Feeder, t_start: float) -> dict:
    rewards = plan.rewards or [0.0]
    row = {
        "version": version, "reward_mean": sum(rewards) / len(rewards),
        "groups_used": plan.groups_used, "groups_zero_variance": plan.groups_zero_variance,
        "groups_stale": len(taken.stale), "masked": plan.masked, "env_failures": plan.env_failures, "score_errors": plan.score_errors,
        "staleness_max": lag,
        "trajectories": feeder.trajectories, "trajectories_per_s": feeder.trajectories / (time.perf_counter() - t_start),
        **{k: v for k, v in metrics.items()}, **run.pop_timers(),
    }
    run.log("rl", step, row)
    if step % run.job.run.log_every == 0:
        log.info("rl step %d/%d  v%d  reward %.3f  loss %.4f  groups %d (+%d flat, %d stale)  %.1f traj/s",
                 step, run.job.run.steps, version, row["reward_mean"], metrics.get("loss", float("nan")),
                 plan.groups_used, plan.groups_zero_variance, len(taken.stale), row["trajectories_per_s"])
    return row
