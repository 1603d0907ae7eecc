"""What the driver does with a collapse guard's verdict (``guard.action``); the guard itself,
pure, is ``forge_ray/guard.py``."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from forge_ray import checkpoint
from forge_ray.checkpoint import DriverState
from forge_ray.config import JobConfig
from forge_ray.metrics import Run
from forge_ray.publish import publish

if TYPE_CHECKING:
    from forge_ray.rl_actors import Actors

log = logging.getLogger("forge_ray.rl")


async def watch(job: JobConfig, run: Run, state: DriverState, actors: Actors, guard: Any, step: int, row: dict) -> bool:
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
            await publish(job, actors, state.version)
            guard.rewind()
            log.warning("rolled back to %s (before step %d); learning rate now %.3g", path.name, good + 1, lr)
            return False
        log.warning("no RL checkpoint at or before step %s to roll back to (run.checkpoint_every); stopping RL", good)
    log.warning("RL stopped by the collapse guard after step %d", step)
    return True
