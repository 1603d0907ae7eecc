"""The environment as the agent loop sees it (``AsyncEnv``), and the adapters that make one.

    LocalEnv    an ``Env`` in this process; blocking envs run in a thread, off the event loop
    PooledEnv   an ``Env`` in an env actor of the ``EnvPool``, on a lease held open..close

Both follow the one lifecycle of ``forge_ray.env.protocol``: ``open`` (may extend the task),
``step``*, ``score``, ``close``. With a ``scorer`` (``RewardClient``), ``score`` sends the
env's snapshot to the reward actor instead of scoring here; either way the score sees the
episode's own state. ``run_episode`` calls ``close`` whatever happened.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from forge_ray.types import RewardBreakdown, StepResult, Task


class AsyncEnv(Protocol):
    failed: str | None  # set when the env's host failed under the episode (a pool fault)

    async def open(self, task: Task) -> Task: ...
    async def step(self, action: Any) -> StepResult: ...
    async def score(self, task: Task, messages: list[dict]) -> RewardBreakdown: ...
    async def close(self) -> None: ...


class Scorer(Protocol):
    async def score(self, task: Task, messages: list[dict], snapshot: dict | None) -> RewardBreakdown: ...


class LocalEnv:
    """Adapts an in-process ``Env`` to ``AsyncEnv``."""

    failed: str | None = None

    def __init__(self, env: Any, scorer: Scorer | None = None):
        self.env, self.scorer = env, scorer
        self.blocking = bool(getattr(env, "blocking", False))

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args) if self.blocking else fn(*args)

    async def open(self, task: Task) -> Task:
        if hasattr(self.env, "aopen"):
            return await self.env.aopen(task)
        return await self._call(self.env.open, task)

    async def step(self, action: Any) -> StepResult:
        if hasattr(self.env, "astep"):
            return await self.env.astep(action)
        return await self._call(self.env.step, action)

    async def score(self, task: Task, messages: list[dict]) -> RewardBreakdown:
        snapshot = await self._call(self.env.snapshot)
        if self.scorer is not None:
            return await self.scorer.score(task, messages, snapshot)
        return await self._call(self.env.score, task, messages, snapshot)

    async def close(self) -> None:
        await self._call(self.env.close)


class PooledEnv:
    """``AsyncEnv`` on an env-pool lease: leased by ``open``, given back by ``close`` (which
    first closes the episode's env in its actor). ``failed`` holds the reason once a pool
    fault ended the episode; every later call then raises ``EnvPoolError`` at once."""

    def __init__(self, pool: Any, scorer: Scorer | None = None):
        self.pool, self.scorer = pool, scorer
        self.lease: Any = None
        self.failed: str | None = None

    async def _call(self, method: str, *args: Any) -> Any:
        from forge_ray.env.pool import EnvPoolError

        if self.failed:
            raise EnvPoolError(self.failed)
        if self.lease is None:
            raise RuntimeError(f"PooledEnv.{method} without a lease: call open() first")
        try:
            return await self.pool.call(self.lease, method, *args)
        except EnvPoolError as e:
            self.failed = str(e)
            raise

    async def open(self, task: Task) -> Task:
        if self.lease is None:
            self.lease = await self.pool.lease()
        return await self._call("open", task)

    async def step(self, action: Any) -> StepResult:
        from forge_ray import telemetry

        t0 = time.monotonic()
        result = await self._call("step", action)
        telemetry.record("env_step_seconds", time.monotonic() - t0, role="rollout")
        return result

    async def score(self, task: Task, messages: list[dict]) -> RewardBreakdown:
        if self.scorer is not None:
            return await self.scorer.score(task, messages, await self._call("snapshot"))
        return await self._call("score", task, messages)

    async def close(self) -> None:
        lease, self.lease = self.lease, None
        if lease is None:
            return
        try:
            if not self.failed:
                await self.pool.call(lease, "close")
        except Exception:  # noqa: BLE001 - a pool fault here was reported; the lease goes back anyway
            pass
        finally:
            await self.pool.release(lease)
