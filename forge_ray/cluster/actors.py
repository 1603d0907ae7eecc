"""Plain classes made remote at the edge, in placement-group bundles.

``spawn_group`` reserves one bundle per actor, waits for the reservation with a bounded,
logged wait (a typed error names what could not be placed), then creates named actors
(``forge/<role>-<rank>``) so they are easy to find in the Ray dashboard.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)


class PlacementTimeout(RuntimeError):
    """The cluster could not reserve the requested bundles in time."""


@dataclass
class ActorGroupHandle:
    role: str
    placement_group: Any
    actors: list[Any]
    _make: Callable[[int, int], Any] | None = None  # (rank, generation) -> a new actor in bundle ``rank``
    generations: list[int] = field(default_factory=list)

    def respawn(self, rank: int) -> Any:
        """Kill the actor of ``rank`` (if it still runs) and start a new one in its bundle,
        named ``forge/<role>-<rank>.<generation>``."""
        import ray

        ray.kill(self.actors[rank], no_restart=True)
        self.generations[rank] += 1
        self.actors[rank] = self._make(rank, self.generations[rank])
        return self.actors[rank]

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in self.actors:
            ray.kill(a, no_restart=True)
        remove_placement_group(self.placement_group)


def on_driver_node() -> dict[str, Any]:
    """Actor options for the run's control plane (buffer, env-pool manager, reward actor): no
    CPU, on the driver's node. They hold state the run cannot lose with a worker node, and
    the driver's own node going down ends the run anyway."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def reserve(role: str, bundles: list[dict[str, float]], strategy: str = "PACK", timeout_s: float = 300.0) -> Any:
    """Create a placement group and wait for it, logging every 10 s."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(bundles, strategy=strategy, name=f"forge/{role}")
    deadline = time.monotonic() + timeout_s
    while True:
        ready, _ = ray.wait([pg.ready()], timeout=min(10.0, max(deadline - time.monotonic(), 0.1)))
        if ready:
            return pg
        if time.monotonic() >= deadline:
            remove_placement_group(pg)
            raise PlacementTimeout(f"could not place {role}: {len(bundles)} x {bundles[0]} within {timeout_s:.0f}s; cluster has {ray.available_resources()}")
        log.info("waiting for %s placement (%d bundles of %s)", role, len(bundles), bundles[0])


def spawn_group(
    cls: type,
    role: str,
    n: int,
    resources: dict[str, float],
    make_args: Callable[[int], tuple[tuple, dict]],
    *,
    runtime_env: dict | None = None,
    max_concurrency: int | None = None,
    timeout_s: float = 300.0,
) -> ActorGroupHandle:
    """Spawn ``n`` actors of the plain class ``cls``, one per bundle of ``resources``."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = reserve(role, [dict(resources) for _ in range(n)], timeout_s=timeout_s)
    num_cpus = resources.get("CPU", 0)
    num_gpus = resources.get("GPU", 0)
    remote_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(cls)

    def make(rank: int, generation: int) -> Any:
        args, kwargs = make_args(rank)
        options: dict[str, Any] = dict(
            name=f"forge/{role}-{rank}" + (f".{generation}" if generation else ""),
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank),
        )
        if runtime_env:
            options["runtime_env"] = runtime_env
        if max_concurrency:
            options["max_concurrency"] = max_concurrency
        return remote_cls.options(**options).remote(*args, **kwargs)

    return ActorGroupHandle(role, pg, [make(rank, 0) for rank in range(n)], make, [0] * n)
