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

    def state(self) -> dict[str, Any]:
        """The ledger and the cursor, JSON-serialisable (checkpoints)."""
        return {"queue": list(self._queue), "issued": dict(self.issued), "requeued": dict(self.requeued), "consumed": dict(self.consumed)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()``; prompts that no longer exist in ``tasks`` are an error."""
        unknown = [t for t in state["queue"] if t not in self.tasks]
        if unknown:
            raise AccountingError(f"checkpoint names {len(unknown)} prompts this job does not have (e.g. {unknown[0]}): was env changed?")
        self._queue = deque(state["queue"])
        self.issued, self.requeued, self.consumed = (Counter(state[k]) for k in ("issued", "requeued", "consumed"))

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


def why(e: BaseException) -> str:
    """One line on why a remote call failed: the cause's type and its last line of message
    (a ``RayTaskError`` carries the remote traceback; the cause is what matters)."""
    cause = getattr(e, "cause", None) or e
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1].strip()[:300] if lines else ''}"


class FeederGaveUp(RuntimeError):
    """One prompt's group failed ``max_failures`` times in a row: a deterministic fault (a
    broken environment, a bad engine), not a passing one; retrying forever would hide it."""


class Feeder:
    def __init__(self, pool: PromptPool, rollout: Any, buffer: Any, *, group_size: int, batch_prompts: int, batch_groups: int,
                 max_staleness: int, max_failures: int = 5):
        self.pool, self.rollout, self.buffer = pool, rollout, buffer
        self.group_size, self.n, self.m, self.staleness = group_size, batch_prompts, batch_groups, max_staleness
        self.steps = 0
        self.extra = 0  # allowance given back for re-queued groups
        self.issued = 0
        self.untaken: Counter = Counter()  # prompts issued and not yet taken by the learner
        self.trajectories = 0
        self.tokens = 0  # sampled tokens of finished trajectories
        self._rate_mark = (time.perf_counter(), 0)
        self.inflight = 0
        self.busy_seconds = 0.0
        self._busy_since = 0.0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._runner: asyncio.Task | None = None
        self.max_failures, self.failures = max_failures, Counter()  # per prompt, in a row
        self.gave_up: asyncio.Future | None = None

    def start(self) -> None:
        self.gave_up = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run())

    async def guard(self, awaitable: Any) -> Any:
        """Await ``awaitable`` (e.g. the buffer's ``take``) unless the feeder gives up first;
        then raise ``FeederGaveUp``."""
        work = asyncio.ensure_future(awaitable)
        await asyncio.wait({work, self.gave_up}, return_when=asyncio.FIRST_COMPLETED)
        if self.gave_up.done():
            work.cancel()
            self.gave_up.result()
        return work.result()

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
        group_id = f"{task.id}#{attempt}"
        if self.inflight == 0:
            self._busy_since = time.perf_counter()
        self.inflight += 1
        try:
            metas = await self.rollout.run_group(task, group_id, self.group_size, self.buffer)
            self.trajectories += len(metas)
            self.tokens += sum(m.num_tokens for m in metas)
            self.failures.pop(task.id, None)
        except Exception as e:  # a lost group is retried, never silently dropped
            log.warning("group %s#%d failed (%s); re-queued", task.id, attempt, why(e))
            self.failures[task.id] += 1
            if self.failures[task.id] >= self.max_failures and self.gave_up and not self.gave_up.done():
                self.gave_up.set_exception(FeederGaveUp(f"prompt {task.id} failed {self.failures[task.id]} times in a row; last: {why(e)}"))
            self.requeue(task.id)
            if self.buffer is not None:  # what the group had finished is no longer needed
                await self.buffer.discard.remote(group_id)
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

    def restore(self, steps: int, trajectories: int, busy_seconds: float, buffered: Counter, requeue: list[str]) -> None:
        """Continue a checkpointed run: ``buffered`` prompts are back in the buffer, ``requeue``
        were generating when the checkpoint was taken and run again."""
        self.steps, self.trajectories, self.busy_seconds = steps, trajectories, busy_seconds
        self.issued = sum(self.pool.issued.values())
        self.untaken = Counter(buffered)
        for task_id in requeue:
            self.untaken[task_id] += 1
            self.requeue(task_id)
        self.extra = sum(self.pool.requeued.values())

    def pop_token_rate(self) -> float:
        """Sampled tokens per second since the last call."""
        now = time.perf_counter()
        t0, n0 = self._rate_mark
        self._rate_mark = (now, self.tokens)
        return (self.tokens - n0) / max(now - t0, 1e-9)

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
