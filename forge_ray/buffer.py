"""TrajectoryBuffer: the seam between rollout and training.

An actor that holds only ObjectRefs and small metadata. Producers put each trajectory into
the object store themselves and hand the buffer its ref; the learner takes complete GRPO
groups. The buffer is bounded (``put`` waits while ``capacity`` groups are ready, which
back-pressures the producers) and enforces ``max_staleness``: a group whose oldest turn lags
the learner by more versions is handed back as stale so its prompt can be re-queued.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from forge_ray.mix import domain_of
from forge_ray.types import TrajectoryMeta


class TrajectoriesLost(RuntimeError):
    """The payload of a taken group is gone from the object store: its producer died (it owned
    the object) or the node holding it was lost. The groups' prompts are played again."""


@dataclass
class Group:
    """The trajectories of one prompt: metadata and refs in sample order."""

    task_id: str
    group_id: str
    metas: list[TrajectoryMeta] = field(default_factory=list)
    refs: list[Any] = field(default_factory=list)

    @property
    def min_version(self) -> int | None:
        """The oldest policy version that sampled a token of this group; None when no sample
        has a sampled token (a trajectory without turns has ``min_version`` -1)."""
        return min((m.min_version for m in self.metas if m.min_version >= 0), default=None)

    def lag(self, version: int) -> int:
        """How many versions the group's oldest sampled token lags a learner at ``version``
        (0 for a group without sampled tokens: nothing in it can be stale)."""
        oldest = self.min_version
        return 0 if oldest is None else version - oldest

    @property
    def issue(self) -> int:
        return self.metas[0].issue if self.metas else 0

    @property
    def rewards(self) -> list[float]:
        return [m.reward for m in self.metas]


@dataclass
class Taken:
    """What ``take`` returns: groups to train on and groups too stale to train on."""

    groups: list[Group]
    stale: list[Group]


class TrajectoryBuffer:
    def __init__(self, group_size: int, max_staleness: int, capacity: int):
        self.group_size = group_size
        self.max_staleness = max_staleness
        self.capacity = capacity
        self._partial: dict[str, Group] = {}
        self._ready: list[Group] = []
        self._cond = asyncio.Condition()
        self.counters = {"trajectories_in": 0, "groups_ready": 0, "groups_taken": 0, "groups_stale": 0}

    async def put(self, meta: TrajectoryMeta, ref_box: list[Any]) -> None:
        """Add one trajectory; ``ref_box`` is ``[ObjectRef]`` (boxed so Ray keeps it a ref)."""
        async with self._cond:
            await self._cond.wait_for(lambda: len(self._ready) < self.capacity)
            group = self._partial.setdefault(meta.group_id, Group(meta.task_id, meta.group_id))
            group.metas.append(meta)
            group.refs.append(ref_box[0])
            self.counters["trajectories_in"] += 1
            if len(group.metas) == self.group_size:
                del self._partial[meta.group_id]
                self._ready.append(group)
                self.counters["groups_ready"] += 1
                self._cond.notify_all()

    async def take(self, n: int, version: int, timeout_s: float | None = None, domain: str | None = None) -> Taken:
        """Wait for ``n`` complete groups that are fresh enough for a learner at ``version``
        (and of ``domain``, in a mix: ``forge_ray.mix.domain_of`` of their prompt)
        and take the ``n`` whose prompts were issued first. A group that took long is thus
        taken as soon as it completes, ahead of younger ones: slow episodes are late, never
        passed over. Stale groups met on the way are removed and returned separately, at once
        (with the fresh groups there are, maybe fewer than ``n``): their prompts must be
        re-queued before the fresh groups that replace them can exist."""
        stale: list[Group] = []
        taken: list[Group] = []

        def wanted(g: Group) -> bool:
            return domain is None or domain_of(g.task_id) == domain

        def fresh_ready() -> bool:
            keep = []
            for g in self._ready:
                (stale if g.lag(version) > self.max_staleness else keep).append(g)
            self._ready[:] = keep
            return sum(map(wanted, self._ready)) >= n or bool(stale)

        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(fresh_ready), timeout_s)
            except asyncio.TimeoutError:
                pass  # hand over what is there; the caller decides
            self._ready.sort(key=lambda g: g.issue)  # the earliest issued first, however long they took
            taken = [g for g in self._ready if wanted(g)][:n]
            gone = {id(g) for g in taken}
            self._ready[:] = [g for g in self._ready if id(g) not in gone]
            self.counters["groups_taken"] += len(taken)
            self.counters["groups_stale"] += len(stale)
            self._cond.notify_all()
        return Taken(taken, stale)

    def discard(self, group_id: str) -> int:
        """Drop the partial group ``group_id`` (its producer failed; the prompt runs again)."""
        group = self._partial.pop(group_id, None)
        return len(group.metas) if group else 0

    async def snapshot(self) -> list[tuple[str, list[Any]]]:
        """The complete groups waiting now, as ``(task_id, trajectories)``, left in place
        (checkpoints). The payloads are fetched here so no ref leaves the buffer. A group whose
        payload is lost is left out: a resumed run plays its prompt again."""
        from ray.exceptions import ObjectLostError

        ready = list(self._ready)
        fetched = await asyncio.gather(*(asyncio.gather(*g.refs) for g in ready), return_exceptions=True)
        for g, trajs in zip(ready, fetched):
            if isinstance(trajs, BaseException) and not isinstance(trajs, ObjectLostError):
                raise trajs
        return [(g.task_id, list(trajs)) for g, trajs in zip(ready, fetched) if not isinstance(trajs, BaseException)]

    def drain(self) -> list[Group]:
        """Remove and return every complete group (checkpointing and shutdown)."""
        ready, self._ready = self._ready, []
        return ready

    def task_ids(self) -> list[str]:
        """The prompt of every complete group waiting now (the ledger's check)."""
        return [g.task_id for g in self._ready]

    def stats(self) -> dict[str, int]:
        return {**self.counters, "ready": len(self._ready), "partial": len(self._partial)}
