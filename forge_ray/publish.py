"""New weights from the learner to the engines: export (host buckets, or staged on rank 0 for
a collective broadcast: ``rollout.weight_sync``), sync, and the learner-death retry of an update."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from forge_ray import checkpoint
from forge_ray.config import JobConfig
from forge_ray.metrics import Run

if TYPE_CHECKING:
    from forge_ray.learner.group import LearnerGroup
    from forge_ray.rl_actors import Actors

log = logging.getLogger("forge_ray.rl")


async def publish(job: JobConfig, actors: Actors, version: int) -> None:
    """Load the learner's current weights into every engine as ``version``."""
    await sync(job, actors, version, await export(job, actors.learner, version))


async def export(job: JobConfig, learner: LearnerGroup, version: int) -> list:
    """Make the learner's weights ready to sync as ``version`` (a gather over its ranks): bucket
    refs put into the object store (``rollout.weight_sync: host``), or staged on rank 0, which
    returns their manifest (``collective``)."""
    if job.rollout.weight_sync == "collective":
        return await learner.stage_weights(version, job.rollout.bucket_mb)
    return await learner.export_weights(version, job.rollout.bucket_mb)


async def sync(job: JobConfig, actors: Actors, version: int, exported: list) -> list[dict[str, float]]:
    """Load the exported ``version`` into every live engine: each fetches the refs (host), or
    learner rank 0 broadcasts the staged weights to all at once (collective)."""
    if job.rollout.weight_sync == "collective":
        return await actors.rollout.broadcast_weights(version, exported, actors.learner)
    return await actors.rollout.update_weights(version, exported)


async def update(job: JobConfig, run: Run, learner: LearnerGroup, items: list, version: int) -> tuple[dict, list]:
    """Train on ``items`` and export the new weights as ``version``. If a learner rank dies, the
    group is rebuilt from the run's last checkpoint and the update is tried once more."""
    from ray.exceptions import RayActorError

    try:
        return await _train_export(job, run, learner, items, version)
    except RayActorError as e:
        path = checkpoint.latest(run.dir)
        log.warning("a learner rank died (%s); rebuilding the learner group from %s", type(e).__name__,
                    path or "the starting weights (no checkpoint yet: set run.checkpoint_every)")
        await learner.recover(str(path) if path else None)
        return await _train_export(job, run, learner, items, version)


async def _train_export(job: JobConfig, run: Run, learner: LearnerGroup, items: list, version: int) -> tuple[dict, list]:
    with run.timer("train"):
        metrics = await learner.train_step(items)
    with run.timer("export"):
        return metrics, await export(job, learner, version)
