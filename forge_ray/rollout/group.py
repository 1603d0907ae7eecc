"""RolloutGroup: N actors, each hosting a vLLM engine and running many episodes on it.

``RolloutWorker`` is the plain class inside each actor: it owns one ``VLLMEngine``, the
tokenizer and the environment factory, runs a GRPO group's episodes concurrently, puts every
finished trajectory into the object store itself and hands its ref to the buffer. The group
dispatches each prompt to the least-loaded worker and fans weight updates out to all.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from forge_ray.rollout.agent_loop import EpisodeSpec, LocalEnv, run_episode
from forge_ray.types import Task, Trajectory, TrajectoryMeta

log = logging.getLogger(__name__)


def trajectory_meta(traj: Trajectory) -> TrajectoryMeta:
    return TrajectoryMeta(
        task_id=traj.task_id,
        group_id=traj.group_id,
        sample_index=traj.sample_index,
        min_version=traj.min_version,
        status=traj.status,
        reward=traj.reward.total if traj.reward else 0.0,
        num_tokens=traj.num_sampled,
        turn_rewards=tuple(traj.reward.per_turn or ()) if traj.reward else (),
    )


class RolloutWorker:
    def __init__(self, model_path: str, engine_kwargs: dict, env_name: str, env_kwargs: dict, spec: EpisodeSpec):
        from forge_ray.rollout.engine import VLLMEngine

        self.engine = VLLMEngine(model_path, **engine_kwargs)
        self.model_path = model_path
        self.env_name, self.env_kwargs = env_name, env_kwargs
        self.spec = spec
        self.tokenizer = None

    async def start(self) -> float:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return await self.engine.start()

    def _env(self) -> LocalEnv:
        from envs import make_env

        return LocalEnv(make_env(self.env_name, **self.env_kwargs))

    async def run_group(self, task: Task, group_id: str, n: int, buffer: Any) -> list[TrajectoryMeta]:
        """Play ``n`` samples of ``task``; each goes to the object store and the buffer as
        soon as it ends."""
        import ray

        async def one(i: int) -> TrajectoryMeta:
            traj = await run_episode(self.engine.generate, self._env(), task, self.tokenizer, self.spec, group_id=group_id, sample_index=i)
            meta = trajectory_meta(traj)
            await buffer.put.remote(meta, [ray.put(traj)])
            return meta

        return list(await asyncio.gather(*(one(i) for i in range(n))))

    async def evaluate(self, tasks: list[Task], greedy: bool = True) -> list[Trajectory]:
        """One episode per task with evaluation sampling; returns the trajectories."""
        spec = EpisodeSpec(**{**vars(self.spec), "temperature": 0.0 if greedy else self.spec.temperature})
        return list(
            await asyncio.gather(
                *(run_episode(self.engine.generate, self._env(), t, self.tokenizer, spec, group_id=t.id, sample_index=0) for t in tasks)
            )
        )

    async def update_weights(self, version: int, bucket_refs: list[Any]) -> dict[str, float]:
        return await self.engine.update_weights(version, bucket_refs)

    async def fingerprint(self, seed: int = 0) -> dict:
        return await self.engine.fingerprint(seed)

    async def generate(self, prompt_ids: list[int], **kw) -> Any:
        return await self.engine.generate(prompt_ids, **kw)

    def ping(self) -> int:
        return self.engine.version

    def shutdown(self) -> None:
        self.engine.shutdown()


class RolloutGroup:
    """Driver-side handle of the rollout actors."""

    def __init__(self, model_path: str, num_engines: int, engine_kwargs: dict, env_name: str, env_kwargs: dict, spec: EpisodeSpec, resources: dict[str, float]):
        from forge_ray.cluster.actors import spawn_group

        self.handle = spawn_group(
            RolloutWorker,
            "rollout",
            num_engines,
            resources,
            lambda rank: ((model_path, {**engine_kwargs, "seed": engine_kwargs.get("seed", 0) + rank}, env_name, env_kwargs, spec), {}),
            max_concurrency=1000,  # async actor: many episodes at once
        )
        self.workers = self.handle.actors
        self.load = [0] * len(self.workers)

    async def start(self) -> list[float]:
        return list(await asyncio.gather(*(w.start.remote() for w in self.workers)))

    async def run_group(self, task: Task, group_id: str, n: int, buffer: Any) -> list[TrajectoryMeta]:
        i = min(range(len(self.workers)), key=self.load.__getitem__)
        self.load[i] += 1
        try:
            return await self.workers[i].run_group.remote(task, group_id, n, buffer)
        finally:
            self.load[i] -= 1

    async def evaluate(self, tasks: list[Task], greedy: bool = True) -> list[Trajectory]:
        k = len(self.workers)
        parts = await asyncio.gather(*(w.evaluate.remote(tasks[i::k], greedy) for i, w in enumerate(self.workers)))
        return [t for part in parts for t in part]

    async def update_weights(self, version: int, bucket_refs: list[Any]) -> list[dict[str, float]]:
        return list(await asyncio.gather(*(w.update_weights.remote(version, bucket_refs) for w in self.workers)))

    def shutdown(self) -> None:
        import ray

        ray.get([w.shutdown.remote() for w in self.workers])
        self.handle.shutdown()
