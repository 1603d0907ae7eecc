"""RolloutGroup: N actors, each hosting a vLLM engine and running many episodes on it.

``RolloutWorker`` is the plain class inside each actor: it owns one ``VLLMEngine``, the
tokenizer and the environment factory, runs a GRPO group's episodes concurrently, puts every
finished trajectory into the object store itself and hands its ref to the buffer. The group
dispatches each prompt to the least-loaded worker and fans weight updates out to all, over the
host path (bucket refs) or the collective one (a broadcast from learner rank 0).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from forge_ray.env.protocol import EnvFactory
from forge_ray.rollout.agent_loop import EpisodeSpec, run_episode
from forge_ray.types import EpisodeTime, Status, Task, Trajectory, TrajectoryMeta

log = logging.getLogger(__name__)


def trajectory_meta(traj: Trajectory, issue: int = 0) -> TrajectoryMeta:
    return TrajectoryMeta(
        task_id=traj.task_id,
        group_id=traj.group_id,
        sample_index=traj.sample_index,
        min_version=traj.min_version,
        status=traj.status,
        reward=traj.reward.total if traj.reward else 0.0,
        num_tokens=traj.num_sampled,
        turn_rewards=tuple(traj.reward.per_turn or ()) if traj.reward else (),
        reward_error=(traj.reward.error if traj.reward else "not scored") if traj.status != Status.ENV_FAILURE else None,
        issue=issue,
        time=EpisodeTime(traj.wall_seconds, traj.gen_seconds, traj.env_seconds, traj.score_seconds),
        resumed=sum(len(t.resumed) for t in traj.turns),
    )


class RolloutWorker:
    def __init__(self, model_path: str, engine_kwargs: dict, env_factory: EnvFactory, spec: EpisodeSpec,
                 env_pool: Any = None, scorer: Any = None):
        from forge_ray.anatomy import EngineActivity
        from forge_ray.rollout.engine import VLLMEngine

        self.engine = VLLMEngine(model_path, **engine_kwargs)
        self.activity_log = EngineActivity()  # when the engine is generating (the step anatomy)
        self.model_path = model_path
        self.env_factory = env_factory
        self.env_pool, self.scorer = env_pool, scorer  # EnvPool / RewardClient, or None: in-process
        self.spec = spec
        self.tokenizer = None

    async def start(self) -> float:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return await self.engine.start()

    def _env(self) -> Any:
        """The episode's ``AsyncEnv``: a ``PooledEnv`` when an env pool is configured, else a
        fresh environment in this process; scoring goes to the reward actor when configured."""
        from forge_ray.env.adapters import LocalEnv, PooledEnv

        if self.env_pool is not None:
            return PooledEnv(self.env_pool, self.scorer)
        return LocalEnv(self.env_factory(), self.scorer)

    async def _episode(self, task: Task, spec: EpisodeSpec, group_id: str, i: int) -> tuple[Trajectory, str | None]:
        """One episode, and why the env pool failed under it (None when it did not). A mixed
        task's ``meta["episode"]`` holds its domain's limits (forge_ray/mix.py)."""
        if task.meta.get("episode"):
            spec = EpisodeSpec(**{**vars(spec), **task.meta["episode"]})
        env = self._env()
        traj = await run_episode(self._generate, env, task, self.tokenizer, spec, group_id=group_id, sample_index=i)
        return traj, env.failed

    async def _generate(self, prompt_ids: list[int], **kw) -> Any:
        self.activity_log.begin()
        try:
            return await self.engine.generate(prompt_ids, **kw)
        finally:
            self.activity_log.end()

    def activity(self) -> Any:
        """The ``anatomy.EngineReport`` since the last call."""
        return self.activity_log.pop()

    async def run_group(self, task: Task, group_id: str, n: int, buffer: Any, issue: int = 0) -> list[TrajectoryMeta]:
        """Play ``n`` samples of ``task`` (issued as the feeder's ``issue``-th prompt), then put
        them into the object store and the buffer.
        Nothing is buffered until the whole group has ended (the buffer releases only complete
        groups anyway): if the env pool failed under any sample, the group is discarded and
        ``EnvPoolError`` raised, so the feeder re-queues the prompt and no partial group is
        left behind in the buffer."""
        import ray

        from forge_ray import telemetry
        from forge_ray.env.pool import EnvPoolError

        played = await asyncio.gather(*(self._episode(task, self.spec, group_id, i) for i in range(n)))
        failed = [reason for _, reason in played if reason]
        if failed:
            raise EnvPoolError(f"group {group_id}: {len(failed)} of {n} episodes lost to the env pool ({failed[0]})")
        metas = [trajectory_meta(traj, issue) for traj, _ in played]
        t0 = time.monotonic()
        # This actor owns the objects: if it dies, the learner meets ``TrajectoriesLost``.
        await asyncio.gather(*(buffer.put.remote(meta, [ray.put(traj)]) for meta, (traj, _) in zip(metas, played)))
        self.activity_log.put(time.monotonic() - t0)
        for traj, _ in played:
            telemetry.count("rollout_tokens", traj.num_sampled, role="rollout")
            telemetry.count("trajectories", 1, role="rollout")
            telemetry.record("reward_latency_seconds", traj.score_seconds, role="rollout")
        return metas

    async def evaluate(self, tasks: list[Task], greedy: bool = True) -> list[Trajectory]:
        """One episode per task with evaluation sampling; returns the trajectories."""
        spec = EpisodeSpec(**{**vars(self.spec), "temperature": 0.0 if greedy else self.spec.temperature})
        played = await asyncio.gather(*(self._episode(t, spec, t.id, 0) for t in tasks))
        return [traj for traj, _ in played]

    async def update_weights(self, version: int, bucket_refs: list[Any]) -> dict[str, float]:
        return await self.engine.update_weights(version, bucket_refs)

    async def join_weight_group(self, rendezvous: Any, rank: int) -> None:
        await self.engine.join_weight_group(rendezvous, rank)

    async def receive_weights(self, version: int, manifest: list[Any]) -> dict[str, float]:
        return await self.engine.receive_weights(version, manifest)

    async def fingerprint(self, seed: int = 0) -> dict:
        return await self.engine.fingerprint(seed)

    async def generate(self, prompt_ids: list[int], **kw) -> Any:
        return await self.engine.generate(prompt_ids, **kw)

    def ping(self) -> int:
        return self.engine.version

    def shutdown(self) -> None:
        self.engine.shutdown()


class RolloutGroup:
    """Driver-side handle of the rollout actors.

    A worker that dies (its actor is killed, its node is lost) is replaced in its placement
    bundle; the replacement starts its engine and loads the latest published weights before it
    is given work again. The groups that were playing on it fail, and the feeder re-queues
    their prompts. The latest weights are kept for that, one copy of the policy: the refs in
    the object store (host path), or the learner's rank 0 keeps the version it staged and puts
    it into the object store when a replacement needs it (collective path). A replacement is
    outside the weight group until the next sync, which forms a new group with it."""

    def __init__(self, model_path: str, num_engines: int, engine_kwargs: dict, env_factory: EnvFactory, spec: EpisodeSpec,
                 resources: dict[str, float], env_pool: Any = None, scorer: Any = None):
        from forge_ray.cluster.actors import spawn_group

        self.handle = spawn_group(
            RolloutWorker,
            "rollout",
            num_engines,
            resources,
            lambda rank: ((model_path, {**engine_kwargs, "seed": engine_kwargs.get("seed", 0) + rank}, env_factory, spec, env_pool, scorer), {}),
            max_concurrency=1000,  # async actor: many episodes at once
        )
        self.workers = self.handle.actors
        self.load = [0] * len(self.workers)
        self.ready = [asyncio.Event() for _ in self.workers]  # set while a worker may take work
        self.restarts = 0
        self._weights: tuple[int, list[Any]] | None = None  # host path: latest (version, bucket refs)
        self._learner: Any = None  # collective path: the LearnerGroup whose rank 0 stages the latest version
        self._members: tuple | None = None  # collective path: the weight group, rank order (None: form a new one)
        self.epochs = 0  # weight groups formed
        self._revivals: set[asyncio.Future] = set()

    async def start(self) -> list[float]:
        seconds = list(await asyncio.gather(*(w.start.remote() for w in self.workers)))
        for event in self.ready:
            event.set()
        return seconds

    async def _pick(self) -> int:
        while True:
            alive = [i for i, e in enumerate(self.ready) if e.is_set()]
            if alive:
                return min(alive, key=self.load.__getitem__)
            await asyncio.wait([asyncio.ensure_future(e.wait()) for e in self.ready], return_when=asyncio.FIRST_COMPLETED)

    async def run_group(self, task: Task, group_id: str, n: int, buffer: Any, issue: int = 0) -> list[TrajectoryMeta]:
        from ray.exceptions import RayActorError

        i = await self._pick()
        worker = self.workers[i]
        self.load[i] += 1
        try:
            return await worker.run_group.remote(task, group_id, n, buffer, issue)
        except RayActorError:
            await self._revive(i, worker)
            raise  # the caller re-queues the prompt
        finally:
            self.load[i] -= 1

    async def _revive(self, i: int, dead: Any) -> None:
        """Replace worker ``i`` (once, however many callers saw it die) and bring it up to date."""
        if self.workers[i] is not dead or not self.ready[i].is_set():
            await self.ready[i].wait()
            return
        self.ready[i].clear()
        log.warning("rollout worker %d died; starting a replacement", i)
        try:
            worker = self.handle.respawn(i)
            self.workers[i] = worker
            seconds = await worker.start.remote()
            weights = await self._latest()
            if weights is not None:
                await worker.update_weights.remote(*weights)
            self.restarts += 1
            log.warning("rollout worker %d replaced in %.1f s, at policy v%d", i, seconds, weights[0] if weights else 0)
        finally:  # on failure too: the next call that meets the dead worker tries again
            self.ready[i].set()

    async def evaluate(self, tasks: list[Task], greedy: bool = True) -> list[Trajectory]:
        k = len(self.workers)
        parts = await asyncio.gather(*(w.evaluate.remote(tasks[i::k], greedy) for i, w in enumerate(self.workers)))
        return [t for part in parts for t in part]

    async def _latest(self) -> tuple[int, list[Any]] | None:
        """The latest published version as host-path ``(version, bucket refs)``, or None."""
        if self._learner is not None:
            return await self._learner.export_staged()
        return self._weights

    async def update_weights(self, version: int, bucket_refs: list[Any]) -> list[dict[str, float]]:
        """Host path: publish ``version`` to every live worker; a worker being replaced picks it
        up when it comes back."""
        self._weights, self._learner = (version, bucket_refs), None
        return await self._load_host(version, bucket_refs)

    async def _load_host(self, version: int, bucket_refs: list[Any]) -> list[dict[str, float]]:
        live = [i for i, e in enumerate(self.ready) if e.is_set()]
        results = await asyncio.gather(*(self.workers[i].update_weights.remote(version, bucket_refs) for i in live), return_exceptions=True)
        failed = self._revive_dead(live, results)
        if failed:
            raise failed[0]
        return [r for r in results if isinstance(r, dict)]

    def _revive_dead(self, indices: list[int], results: list[Any]) -> list[BaseException]:
        """Start replacing the workers whose call met their death; the other failures."""
        from ray.exceptions import RayActorError

        failed = []
        for i, r in zip(indices, results):
            if isinstance(r, RayActorError):
                revival = asyncio.ensure_future(self._revive(i, self.workers[i]))
                self._revivals.add(revival)
                revival.add_done_callback(self._revivals.discard)
            elif isinstance(r, BaseException):
                failed.append(r)
        return failed

    async def broadcast_weights(self, version: int, manifest: list[Any], learner: Any) -> list[dict[str, float]]:
        """Collective path: ``learner``'s rank 0 broadcasts the ``version`` it staged (described
        by ``manifest``) to every live worker at once. A new weight group is formed first when
        the members changed (a worker replaced, the learner rebuilt). If the broadcast fails
        anywhere (a worker died, a rank refused), the group is dropped and the live workers load
        ``version`` over the host path from the learner's staged copy; the next sync forms a
        new group. A dead learner rank 0 fails the sync."""
        self._learner, self._weights = learner, None
        live = [i for i, e in enumerate(self.ready) if e.is_set()]
        try:
            await self._form_group(learner, live)
        except Exception as e:  # a worker died, or a rank did not join within the rendezvous timeout
            return await self._fall_back(version, learner, [e])
        calls = [learner.send_weights(version)] + [self.workers[i].receive_weights.remote(version, manifest) for i in live]
        sent, *results = await asyncio.gather(*calls, return_exceptions=True)
        self._revive_dead(live, results)
        errors = [r for r in (sent, *results) if isinstance(r, BaseException)]
        if errors:
            return await self._fall_back(version, learner, errors)
        return [{**r, "send_seconds": sent["send_seconds"]} for r in results]

    async def _form_group(self, learner: Any, live: list[int]) -> None:
        """Make learner rank 0 (rank 0) and the ``live`` workers (ranks 1..) the weight group,
        forming a new one, on a new store, unless they already are."""
        members = (learner.sender, *(self.workers[i] for i in live))
        if members == self._members:
            return
        self._members = None
        self.epochs += 1
        rdv = await learner.open_weight_group(len(members), self.epochs)
        joins = [learner.join_weight_group(rdv)] + [self.workers[i].join_weight_group.remote(rdv, k + 1) for k, i in enumerate(live)]
        results = await asyncio.gather(*joins, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        self._revive_dead(live, results[1:])
        if failed:
            raise failed[0]
        self._members = members
        log.info("weight group %d formed: learner rank 0 and %d engines", self.epochs, len(live))

    async def _fall_back(self, version: int, learner: Any, errors: list[BaseException]) -> list[dict[str, float]]:
        self._members = None  # a failure leaves every rank's group unusable: the next sync forms a new one
        log.warning("collective sync of v%d failed (%s); loading it over the host path", version,
                    "; ".join(f"{type(e).__name__}: {e}" for e in errors))
        _, refs = await learner.export_staged()
        return await self._load_host(version, refs)

    def shutdown(self) -> None:
        import ray

        for w in self.workers:  # a dead worker has nothing left to stop
            try:
                ray.get(w.shutdown.remote(), timeout=60)
            except Exception as e:
                log.warning("rollout worker shutdown: %s", e)
        self.handle.shutdown()
