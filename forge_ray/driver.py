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
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forge_ray import checkpoint, telemetry
from forge_ray.checkpoint import DriverState
from forge_ray.config import JobConfig
from forge_ray.eval import evaluate
from forge_ray.metrics import Run

if TYPE_CHECKING:
    from forge_ray.env.pool import EnvServices
    from forge_ray.feeder import Feeder
    from forge_ray.learner.group import LearnerGroup
    from forge_ray.rollout.group import RolloutGroup

log = logging.getLogger("forge_ray.rl")


@dataclass
class Actors:
    """What the driver drives: the rollout engines, the learner ranks, the trajectory buffer
    (an actor handle of ``TrajectoryBuffer``) and the environment services."""

    rollout: RolloutGroup
    learner: LearnerGroup
    buffer: Any
    services: EnvServices

    def shutdown(self) -> None:
        import ray

        self.rollout.shutdown()
        self.services.shutdown()
        self.learner.shutdown()
        ray.kill(self.buffer)


def _spawn(job: JobConfig, model_path: str, device: str) -> Actors:
    import ray

    from forge_ray.buffer import TrajectoryBuffer
    from forge_ray.cluster.actors import on_driver_node
    from forge_ray.env.pool import EnvServices
    from forge_ray.learner.group import LearnerGroup
    from forge_ray.rollout.agent_loop import EpisodeSpec
    from forge_ray.rollout.group import RolloutGroup

    r = job.rollout
    spec = EpisodeSpec(r.max_new_tokens, r.max_context, r.temperature, r.top_p, r.episode_timeout_s)
    engine_kwargs = dict(dtype=job.model.dtype, max_model_len=r.max_context + r.max_new_tokens, kv_cache_mb=r.kv_cache_mb,
                         gpu_memory_utilization=r.gpu_memory_utilization, device=device, seed=job.run.seed)
    factory = env_factory(job)
    gpu = {"GPU": 1} if device == "cuda" else {}
    services = EnvServices.start(job, factory)  # env pool / reward actor, when configured
    rollout = RolloutGroup(model_path, r.num_engines, engine_kwargs, factory, spec,
                           {"CPU": 1, **gpu, **job.cluster.rollout_resources}, env_pool=services.pool, scorer=services.scorer)
    learner = LearnerGroup(job.learner, model_path, job.model.dtype, device, {"CPU": 1, **gpu, **job.cluster.learner_resources},
                           temperature=r.temperature)
    buffer = ray.remote(TrajectoryBuffer).options(name="forge/buffer", max_concurrency=10_000, **on_driver_node()).remote(
        r.group_size, staleness(job), capacity=r.batch_prompts * (staleness(job) + 2))
    return Actors(rollout, learner, buffer, services)


def env_factory(job: JobConfig) -> Any:
    """The job's environment maker (``env.env_kwargs``; for the calculator also ``env.max_turns``):
    the one place the RL core's environments come from ``envs/``."""
    import envs

    env = job.env
    return envs.factory(env.name, {**({"max_tool_turns": env.max_turns} if env.name == "calculator" else {}), **env.env_kwargs})


def staleness(job: JobConfig) -> int:
    return 0 if job.run.mode == "sync" else job.run.max_staleness


async def run_rl(job: JobConfig, run: Run, model_path: str, device: str) -> dict[str, Any]:
    """Train ``model_path`` with asynchronous multi-turn GRPO; returns the RL summary."""
    actors = _spawn(job, model_path, device)
    try:
        return await _train(job, run, actors)
    finally:  # free the actors and placement groups even when training fails
        actors.shutdown()


async def _train(job: JobConfig, run: Run, actors: Actors) -> dict[str, Any]:
    from envs import make_tasks
    from forge_ray.feeder import Feeder, PromptPool
    from forge_ray.guard import CollapseGuard

    rollout, learner = actors.rollout, actors.learner
    with run.timer("startup"):
        engine_seconds, _ = await asyncio.gather(rollout.start(), learner.setup())
    log.info("engines up in %s s; learner ranks ready", [round(s, 1) for s in engine_seconds])
    source = make_tasks(job.env.name, **job.env.kwargs)
    heldout = source.tasks("heldout", job.env.eval_tasks, job.env.seed)
    pool = PromptPool(source.tasks("train", job.env.train_tasks, job.env.seed))
    feeder = Feeder(pool, rollout, actors.buffer, group_size=job.rollout.group_size, batch_prompts=job.rollout.batch_prompts,
                    batch_groups=job.learner.batch_groups, max_staleness=staleness(job))
    guard = CollapseGuard(job.guard)
    state = await _begin(job, run, actors, feeder, heldout, guard)
    feeder.start()
    run.pop_timers()
    t_start = time.perf_counter() - state.wall
    for step in range(state.step + 1, job.run.steps + 1):
        row = await _step(job, run, step, state, actors, feeder, t_start)
        if await _watch(job, run, state, actors, guard, step, row):
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


async def _begin(job: JobConfig, run: Run, actors: Actors, feeder: Feeder, heldout: list, guard: Any) -> DriverState:
    """Evaluate the starting policy; or, when the run directory has an RL checkpoint, continue
    from it: learner state, engine weights, prompt ledger, buffered groups, step axis."""
    path = checkpoint.latest(run.dir)
    if path is None:
        before = await evaluate(actors.rollout, heldout, job.run.eval_greedy)
        run.log("eval", 0, {"name": "sft", **before})
        log.info("held-out success before RL: %.3f (n=%d)", before["success"], before["n"])
        return DriverState(before=before)
    restored = checkpoint.load(path)
    state = restored.state
    await actors.learner.load_checkpoint(str(path))
    if state.lr_scale != 1.0:
        await actors.learner.set_lr_scale(state.lr_scale)
    if state.guard:
        guard.load_state_dict(state.guard)
    await _publish(job, actors, state.version)
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

    while True:
        taken = await _collect(job, run, state, actors, feeder)
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
    row = _log_step(run, step, state.version, lag, plan, metrics, taken, feeder, t_start)
    telemetry.record_step(row, feeder.pop_token_rate(), (await actors.buffer.stats.remote())["ready"], len(taken.groups))
    if job.run.sample_every and step % job.run.sample_every == 0:
        run.log_samples(step, _samples(taken.groups))
    return row


async def _watch(job: JobConfig, run: Run, state: DriverState, actors: Actors, guard: Any, step: int, row: dict) -> bool:
    """Feed the collapse guard one step and act on its verdict (``guard.action``): alert logs it;
    stop ends RL; rollback restores the newest checkpoint from before the collapse, at
    ``guard.lr_factor`` x the learning rate, and goes on. True ends RL."""
    verdict = guard.observe(step, row)
    if verdict is None:
        return False
    log.warning("collapse guard at step %d: %s (action: %s)", step, "; ".join(verdict.reasons), verdict.action)
    run.log("guard", step, {"reasons": verdict.reasons, "action": verdict.action, "last_good_step": guard.last_good_step})
    if verdict.action == "alert":
        return False
    if verdict.action == "rollback":
        good = guard.last_good_step
        path = checkpoint.at_or_before(run.dir, good) if good is not None else None
        if path is not None:
            await actors.learner.load_checkpoint(str(path))
            state.lr_scale *= job.guard.lr_factor
            lr = await actors.learner.set_lr_scale(state.lr_scale)
            state.version += 1  # the restored policy is published as a new version: staleness moves on
            await _publish(job, actors, state.version)
            guard.rewind()
            log.warning("rolled back to %s (before step %d); learning rate now %.3g", path.name, good + 1, lr)
            return False
        log.warning("no RL checkpoint at or before step %s to roll back to (run.checkpoint_every); stopping RL", good)
    log.warning("RL stopped by the collapse guard after step %d", step)
    return True


async def _publish(job: JobConfig, actors: Actors, version: int) -> None:
    """Load the learner's current weights into every engine as ``version``."""
    await _sync(job, actors, version, await _export(job, actors.learner, version))


async def _export(job: JobConfig, learner: LearnerGroup, version: int) -> list:
    """Make the learner's weights ready to sync as ``version`` (a gather over its ranks): bucket
    refs put into the object store (``rollout.weight_sync: host``), or staged on rank 0, which
    returns their manifest (``collective``)."""
    if job.rollout.weight_sync == "collective":
        return await learner.stage_weights(version, job.rollout.bucket_mb)
    return await learner.export_weights(version, job.rollout.bucket_mb)


async def _sync(job: JobConfig, actors: Actors, version: int, exported: list) -> list[dict[str, float]]:
    """Load the exported ``version`` into every live engine: each fetches the refs (host), or
    learner rank 0 broadcasts the staged weights to all at once (collective)."""
    if job.rollout.weight_sync == "collective":
        return await actors.rollout.broadcast_weights(version, exported, actors.learner)
    return await actors.rollout.update_weights(version, exported)


async def _collect(job: JobConfig, run: Run, state: DriverState, actors: Actors, feeder: Feeder) -> Any:
    """Take M complete groups, the earliest issued first (``TrajectoryBuffer.take``). When
    groups without signal are dropped, each one taken lets the feeder issue one more prompt and
    the learner takes again, up to ``learner.refill_rounds`` more times (DAPO's dynamic
    sampling): the batch shrinks only when the rounds run out. Stale groups are re-queued."""
    from forge_ray.buffer import Taken
    from forge_ray.learner.batching import has_signal

    m, drop = job.learner.batch_groups, job.learner.drop_zero_variance
    useful: list = []
    flat: list = []
    stale: list = []
    refills = job.learner.refill_rounds if drop else 0
    while len(useful) < m:
        with run.timer("wait_rollout"):
            taken = await feeder.guard(actors.buffer.take.remote(m - len(useful), state.version))
        for group in taken.stale:  # too old to learn from: run the prompt again
            feeder.requeue(group.task_id)
        stale += taken.stale
        dropped = [g for g in taken.groups if drop and not has_signal(g, job.reward.turn_weight)]
        useful += [g for g in taken.groups if not any(g is d for d in dropped)]
        flat += dropped
        if dropped and len(useful) < m:
            if refills == 0:
                break
            refills -= 1
            feeder.admit(len(dropped))
    return Taken(useful + flat, stale)


async def _learn(job: JobConfig, run: Run, state: DriverState, actors: Actors, items: list) -> dict[str, Any]:
    """Update on ``items``, then sync the new policy version to the engines."""
    t0 = time.perf_counter()
    with run.timer("train"):
        metrics, exported = await _update(job, run, actors.learner, items, state.version + 1)
    state.version += 1
    state.learner_busy += time.perf_counter() - t0
    with run.timer("sync"):
        syncs = await _sync(job, actors, state.version, exported)
    state.sync_seconds.append(max((s["sync_seconds"] for s in syncs), default=0.0))
    return {**metrics, "sync_seconds": state.sync_seconds[-1]}


async def _update(job: JobConfig, run: Run, learner: LearnerGroup, items: list, version: int) -> tuple[dict, list]:
    """Train on ``items`` and export the new weights as ``version``. If a learner rank dies, the
    group is rebuilt from the run's last checkpoint and the update is tried once more."""
    from ray.exceptions import RayActorError

    try:
        return await learner.train_step(items), await _export(job, learner, version)
    except RayActorError as e:
        path = checkpoint.latest(run.dir)
        log.warning("a learner rank died (%s); rebuilding the learner group from %s", type(e).__name__,
                    path or "the starting weights (no checkpoint yet: set run.checkpoint_every)")
        await learner.recover(str(path) if path else None)
        return await learner.train_step(items), await _export(job, learner, version)


async def _checkpoint(job: JobConfig, run: Run, state: DriverState, actors: Actors, feeder: Feeder, guard: Any, t_start: float) -> None:
    def snapshot() -> DriverState:  # called after the buffer's snapshot: see checkpoint.py
        state.ledger, state.guard = feeder.pool.state(), guard.state_dict()
        state.trajectories, state.rollout_busy = feeder.trajectories, feeder.busy()
        state.wall = time.perf_counter() - t_start
        return state

    with run.timer("checkpoint"):
        await checkpoint.save(run.dir, state.step, snapshot, actors.learner, actors.buffer, job.run.keep_checkpoints)


def _samples(groups: list, k: int = 4) -> list[Any]:
    """The first trajectory of up to ``k`` groups, fetched from the object store (for logging;
    none when their payload is gone, see ``TrajectoriesLost``)."""
    import ray
    from ray.exceptions import ObjectLostError

    try:
        return ray.get([g.refs[0] for g in groups[:k]]) if groups else []
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
