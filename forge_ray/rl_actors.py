"""The actors an RL run drives, started and stopped together (``Actors``, ``spawn``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forge_ray.config import JobConfig

if TYPE_CHECKING:
    from forge_ray.env.pool import EnvServices
    from forge_ray.learner.group import LearnerGroup
    from forge_ray.rollout.group import RolloutGroup


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


def engine_kwargs(job: JobConfig, device: str) -> dict[str, Any]:
    """``VLLMEngine`` settings of the job's rollout engines."""
    r = job.rollout
    return dict(dtype=job.model.dtype, max_model_len=r.max_context + r.max_new_tokens, kv_cache_mb=r.kv_cache_mb,
                gpu_memory_utilization=r.gpu_memory_utilization, device=device, seed=job.run.seed, interruptible=r.interruptible)


def episode_spec(job: JobConfig) -> Any:
    from forge_ray.rollout.agent_loop import EpisodeSpec

    r = job.rollout
    return EpisodeSpec(r.max_new_tokens, r.max_context, r.temperature, r.top_p, r.episode_timeout_s)


def spawn(job: JobConfig, model_path: str, device: str, factory: Any, max_staleness: int) -> Actors:
    """Start the engines (with ``factory``'s environments), the learner ranks, the env services
    and the buffer (``max_staleness``: versions a group may lag)."""
    import ray

    from forge_ray.buffer import TrajectoryBuffer
    from forge_ray.cluster.actors import on_driver_node
    from forge_ray.env.pool import EnvServices
    from forge_ray.learner.group import LearnerGroup
    from forge_ray.rollout.group import RolloutGroup

    r = job.rollout
    gpu = {"GPU": 1} if device == "cuda" else {}
    services = EnvServices.start(job, factory)  # env pool / reward actor, when configured
    rollout = RolloutGroup(model_path, r.num_engines, engine_kwargs(job, device), factory, episode_spec(job),
                           {"CPU": 1, **gpu, **job.cluster.rollout_resources}, env_pool=services.pool, scorer=services.scorer)
    learner = LearnerGroup(job.learner, model_path, job.model.dtype, device, {"CPU": 1, **gpu, **job.cluster.learner_resources},
                           temperature=r.temperature)
    buffer = ray.remote(TrajectoryBuffer).options(name="forge/buffer", max_concurrency=10_000, **on_driver_node()).remote(
        r.group_size, max_staleness, capacity=r.batch_prompts * (max_staleness + 2) * max(len(set(job.env.mix)), 1))
    return Actors(rollout, learner, buffer, services)
