"""Prompt supply for RL: the prompt pool with its exactly-once accounting, and the feeder.

The feeder keeps the rollout engines busy without running ahead of the learner: a prompt may
be issued only while ``issued < N + (steps + max_staleness) * M + requeued`` (AReaL-style
admission by version gap; ``steps`` counts learner steps, updates or not). With ``max_staleness = 0`` this is strict alternation
(generate -> train -> sync); with 1 the next batch generates while the learner trains.
In a mix (``env.mix``) each domain has its own queue and allowance, counting only its own steps of
the schedule, and the learner takes each step's groups from that step's domain only.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import Any

from forge_ray.mix import domain_of, due, step_domain
from forge_ray.types import Task

log = logging.getLogger(__name__)


class AccountingError(AssertionError):
    """A prompt was consumed twice, settled without being outstanding, or lost."""


class PromptPool:
    """The prompt ledger, and its one owner: prompts in order, re-queued ones first, and where
    every issue of a prompt is. An issue is *outstanding* (generating, or buffered and not yet
    taken) until it settles as exactly one of *consumed* (trained on; at most once per prompt),
    *requeued* (played again under a new attempt) or *abandoned* (still generating when the run
    stopped). ``check`` compares the outstanding issues with what is really generating or
    buffered: an issue the ledger holds outstanding that is neither is *lost*, and named."""

    def __init__(self, tasks: list[Task], mixed: bool = False):
        self.tasks = {t.id: t for t in tasks}
        self.mixed = mixed  # env.mix: a queue per domain (forge_ray/mix.py); else one, ""
        self._queues: dict[str, deque] = {}
        for t in tasks:
            self._queues.setdefault(self.domain(t.id), deque()).append(t.id)
        self.issued: Counter = Counter()
        self.outstanding: Counter = Counter()
        self.requeued: Counter = Counter()
        self.consumed: Counter = Counter()
        self.abandoned: Counter = Counter()

    def domain(self, task_id: str) -> str:
        return domain_of(task_id) if self.mixed else ""

    def has_next(self, domain: str = "") -> bool:
        return bool(self._queues.get(domain))

    def next(self, domain: str = "") -> tuple[Task, int]:
        """The next prompt (of ``domain``, in a mix) and its attempt number; it is outstanding
        until it settles."""
        task_id = self._queues[domain].popleft()
        self.issued[task_id] += 1
        self.outstanding[task_id] += 1
        return self.tasks[task_id], self.issued[task_id]

    def _settle(self, task_id: str, how: str) -> None:
        if self.outstanding[task_id] <= 0:
            raise AccountingError(f"prompt {task_id} {how} but none of its issues is outstanding")
        self.outstanding[task_id] -= 1

    def requeue(self, task_id: str) -> None:
        self._settle(task_id, "re-queued")
        self.requeued[task_id] += 1
        self._queues.setdefault(self.domain(task_id), deque()).appendleft(task_id)

    def consume(self, task_id: str) -> None:
        self._settle(task_id, "consumed")
        self.consumed[task_id] += 1
        if self.consumed[task_id] > 1:
            raise AccountingError(f"prompt {task_id} consumed twice")

    def abandon(self, task_id: str) -> None:
        self._settle(task_id, "abandoned")
        self.abandoned[task_id] += 1

    def state(self) -> dict[str, Any]:
        """The ledger and the cursor, JSON-serialisable (checkpoints)."""
        counters = ("issued", "outstanding", "requeued", "consumed", "abandoned")
        return {"queue": [t for q in self._queues.values() for t in q], **{k: {t: n for t, n in getattr(self, k).items() if n} for k in counters}}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()``; prompts that no longer exist in ``tasks`` are an error."""
        unknown = [t for t in state["queue"] if t not in self.tasks]
        if unknown:
            raise AccountingError(f"checkpoint names {len(unknown)} prompts this job does not have (e.g. {unknown[0]}): was env changed?")
        self._queues = {}
        for task_id in state["queue"]:
            self._queues.setdefault(self.domain(task_id), deque()).append(task_id)
        for k in ("issued", "outstanding", "requeued", "consumed", "abandoned"):
            setattr(self, k, Counter(state.get(k, {})))

    def lost(self, present: Counter) -> Counter:
        """Outstanding issues that are not in ``present`` (prompts generating or buffered)."""
        return +Counter({t: n - present[t] for t, n in self.outstanding.items()})

    def check(self, present: Counter) -> dict[str, int]:
        """Prove the ledger: every issue settled once or outstanding, and every outstanding one
        really generating or buffered (``present``); raises ``AccountingError`` naming a lost
        prompt. Returns the totals."""
        for task_id, n in self.issued.items():
            settled = self.consumed[task_id] + self.requeued[task_id] + self.abandoned[task_id]
            if n != settled + self.outstanding[task_id]:
                raise AccountingError(f"prompt {task_id}: issued {n} != settled {settled} + outstanding {self.outstanding[task_id]}")
        lost = self.lost(present)
        if lost:
            task_id, n = next(iter(lost.items()))
            raise AccountingError(f"{sum(lost.values())} prompts lost: e.g. {task_id} is outstanding ({self.outstanding[task_id]}) "
                                  f"but only {present[task_id]} of it is generating or buffered")
        return {
            "prompts_issued": sum(self.issued.values()),
            "prompts_consumed": sum(self.consumed.values()),
            "prompts_requeued": sum(self.requeued.values()),
            "prompts_abandoned": sum(self.abandoned.values()),
            "prompts_outstanding": sum(self.outstanding.values()),
            "prompts_lost": 0,
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
                 max_staleness: int, max_failures: int = 5, schedule: list[str] | None = None):
        self.pool, self.rollout, self.buffer = pool, rollout, buffer
        self.group_size, self.n, self.m, self.staleness = group_size, batch_prompts, batch_groups, max_staleness
        self.schedule = list(schedule or [])  # env.mix: the domain of each step, repeating (forge_ray/mix.py)
        self.steps = 0
        self.extra_by: Counter = Counter()  # per domain: allowance given back for re-queued groups
        self.issued_by: Counter = Counter()  # per domain: prompts issued
        self.generating: Counter = Counter()  # prompts whose group is being played now
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

    @property
    def issued(self) -> int:
        return sum(self.issued_by.values())

    @property
    def extra(self) -> int:
        return sum(self.extra_by.values())

    def domain(self) -> str:
        """The domain of the learner's next step ("" without a schedule)."""
        return step_domain(self.schedule, self.steps + 1)

    def allowed(self, domain: str = "") -> int:
        """Prompts ``domain`` may have issued: M for each of its steps up to ``max_staleness``
        steps ahead of the learner's next, plus the oversampling N - M once it has a step there,
        plus re-queues. Without a schedule: N + (steps + max_staleness) * M + re-queues."""
        ahead = due(self.schedule, domain, self.steps + self.staleness + 1)
        return ahead * self.m + (self.n - self.m if ahead else 0) + self.extra_by[domain]

    async def _run(self) -> None:
        while True:
            for domain in dict.fromkeys(self.schedule or [""]):
                while self.issued_by[domain] < self.allowed(domain) and self.pool.has_next(domain):
                    task, attempt = self.pool.next(domain)
                    self.issued_by[domain] += 1
                    job = asyncio.create_task(self._play(task, attempt, self.issued))
                    self._tasks.add(job)
                    job.add_done_callback(self._tasks.discard)
            self._wake.clear()
            await self._wake.wait()

    async def _play(self, task: Task, attempt: int, issue: int) -> None:
        group_id = f"{task.id}#{attempt}"
        if self.inflight == 0:
            self._busy_since = time.perf_counter()
        self.inflight += 1
        self.generating[task.id] += 1
        try:
            metas = await self.rollout.run_group(task, group_id, self.group_size, self.buffer, issue=issue)
            self.trajectories += len(metas)
            self.tokens += sum(m.num_tokens for m in metas)
            self.failures.pop(task.id, None)
        except asyncio.CancelledError:  # the run stopped while this group was playing
            self.pool.abandon(task.id)
            raise
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
            self.generating[task.id] -= 1
            if self.inflight == 0:
                self.busy_seconds += time.perf_counter() - self._busy_since

    def requeue(self, task_id: str) -> None:
        self.pool.requeue(task_id)
        self.extra_by[self.pool.domain(task_id)] += 1
        self._wake.set()

    def admit(self, k: int) -> None:
        """Let ``k`` more prompts of the next step's domain in now (replacements for groups
        dropped without signal)."""
        self.extra_by[self.domain()] += k
        self._wake.set()

    def step_done(self) -> None:
        """The learner finished a step (and synced, if it updated): admit the next batch."""
        self.steps += 1
        self._wake.set()

    def restore(self, steps: int, trajectories: int, busy_seconds: float, requeue: list[str]) -> None:
        """Continue a checkpointed run (the pool already restored): ``requeue`` were generating
        when the checkpoint was taken and run again."""
        self.steps, self.trajectories, self.busy_seconds = steps, trajectories, busy_seconds
        self.issued_by = Counter()
        for task_id, n in self.pool.issued.items():
            self.issued_by[self.pool.domain(task_id)] += n
        for task_id in requeue:
            self.pool.requeue(task_id)
        self.extra_by = Counter()
        for task_id, n in self.pool.requeued.items():
            self.extra_by[self.pool.domain(task_id)] += n
        self._wake.set()

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
        """Stop issuing, then cancel the groups still generating (the ledger marks them
        abandoned)."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for job in list(self._tasks):
            job.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def collect(job: Any, run: Any, state: Any, actors: Any, feeder: Feeder) -> Any:
    """Take M complete groups, the earliest issued first (``TrajectoryBuffer.take``). When
    groups without signal are dropped, each one taken lets the feeder issue one more prompt and
    the learner takes again, up to ``learner.refill_rounds`` more times (DAPO's dynamic
    sampling): the batch shrinks only when the rounds run out. Stale groups are re-queued."""
    from forge_ray.buffer import Taken
    from forge_ray.learner.batching import has_signal

    m, drop, domain = job.learner.batch_groups, job.learner.drop_zero_variance, feeder.domain()
    useful: list = []
    flat: list = []
    stale: list = []
    refills = job.learner.refill_rounds if drop else 0
    while len(useful) < m:
        with run.timer("wait_rollout"):
            taken = await feeder.guard(actors.buffer.take.remote(m - len(useful), state.version, domain=domain or None))
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
