"""Prompt supply for RL: the prompt pool with its exactly-once accounting, and the feeder.

The feeder keeps the rollout engines busy without running ahead of the learner: a prompt may
be issued only while ``issued < N + (steps + max_staleness) * M + requeued`` (AReaL-style
admission by version gap; ``steps`` counts learner steps, updates or not). With ``max_staleness = 0`` this is strict alternation
(generate -> train -> sync); with 1 the next batch generates while the learner trains.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import Any

from forge_ray.types import Task

log = logging.getLogger(__name__)


class AccountingError(AssertionError):
    """A prompt was consumed twice, or issued and never accounted for."""


class PromptPool:
    """Prompts in order, re-queued ones first. Every prompt is consumed at most once;
    ``check`` proves issued = consumed + re-queued + outstanding for each prompt."""

    def __init__(self, tasks: list[Task]):
        self.tasks = {t.id: t for t in tasks}
        self._queue = deque(t.id for t in tasks)
        self.issued: Counter = Counter()
        self.requeued: Counter = Counter()
        self.consumed: Counter = Counter()

    def has_next(self) -> bool:
        return bool(self._queue)

    def next(self) -> tuple[Task, int]:
        """The next prompt and its attempt number."""
        task_id = self._queue.popleft()
        self.issued[task_id] += 1
        return self.tasks[task_id], self.issued[task_id]

    def requeue(self, task_id: str) -> None:
        self.requeued[task_id] += 1
        self._queue.appendleft(task_id)

    def consume(self, task_id: str) -> None:
        self.consumed[task_id] += 1
        if self.consumed[task_id] > 1:
            raise AccountingError(f"prompt {task_id} consumed twice")

    def check(self, outstanding: Counter) -> dict[str, int]:
        """Verify the ledger; ``outstanding`` counts prompts still generating or buffered."""
        for task_id, n in self.issued.items():
            if n != self.consumed[task_id] + self.requeued[task_id] + outstanding[task_id]:
                raise AccountingError(
                    f"prompt {task_id}: issued {n} != consumed {self.consumed[task_id]} + requeued "
                    f"{self.requeued[task_id]} + outstanding {outstanding[task_id]}"
                )
        return {
            "prompts_issued": sum(self.issued.values()),
            "prompts_consumed": sum(self.consumed.values()),
            "prompts_requeued": sum(self.requeued.values()),
            "prompts_outstanding": sum(outstanding.values()),
        }


class Feeder:
    def __init__(self, pool: PromptPool, rollout: Any, buffer: Any, *, group_size: int, batch_prompts: int, batch_groups: int, max_staleness: int):
        self.pool, self.rollout, self.buffer = pool, rollout, buffer
        self.group_size, self.n, self.m, self.staleness = group_size, batch_prompts, batch_groups, max_staleness
        self.steps = 0
        self.extra = 0  # allowance given back for re-queued groups
        self.issued = 0
        self.untaken: Counter = Counter()  # prompts issued and not yet taken by the learner
        self.trajectories = 0
        self.inflight = 0
        self.busy_seconds = 0.0
        self._busy_since = 0.0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._runner: asyncio.Task | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run())

    def allowed(self) -> int:
        return self.n + (self.steps + self.staleness) * self.m + self.extra

    async def _run(self) -> None:
        while True:
            while self.issued < self.allowed() and self.pool.has_next():
                task, attempt = self.pool.next()
                self.issued += 1
                self.untaken[task.id] += 1
                job = asyncio.create_task(self._play(task, attempt))
                self._tasks.add(job)
                job.add_done_callback(self._tasks.discard)
            self._wake.clear()
            await self._wake.wait()

    async def _play(self, task: Task, attempt: int) -> None:
        if self.inflight == 0:
            self._busy_since = time.perf_counter()
        self.inflight += 1
        try:
            metas = await self.rollout.run_group(task, f"{task.id}#{attempt}", self.group_size, self.buffer)
            self.trajectories += len(metas)
        except Exception as e:  # a lost group is retried, never silently dropped
            log.warning("group %s#%d failed (%s); re-queued", task.id, attempt, e)
            self.requeue(task.id)
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self.busy_seconds += time.perf_counter() - self._busy_since

    def taken(self, task_ids: list[str]) -> None:
        for t in task_ids:
            self.untaken[t] -= 1

    def requeue(self, task_id: str) -> None:
        self.untaken[task_id] -= 1
        self.pool.requeue(task_id)
        self.extra += 1
        self._wake.set()

    def step_done(self) -> None:
        """The learner finished a step (and synced, if it updated): admit the next batch."""
        self.steps += 1
        self._wake.set()

    def busy(self) -> float:
        live = time.perf_counter() - self._busy_since if self.inflight else 0.0
        return self.busy_seconds + live

    async def stop(self) -> None:
        """Stop issuing, then cancel the groups still generating."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for job in list(self._tasks):
            job.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
