"""RewardActor: scores each trajectory as soon as its episode ends, in its own actor.

    reward = spawn_reward_actor(envs.factory("calculator"), timeout_s=30)   # actor "forge/reward"
    breakdown = await RewardClient(reward, 30).score(task, messages, snapshot)

The actor scores with fresh environment instances made by the factory: ``env.score(task,
messages, snapshot)``, where ``snapshot`` is what the episode's env handed over at its end
(``Env.snapshot``: a submitted patch, a termination reason), so the score sees the
episode's state without its workspace. Up to ``workers`` score at once, each in a thread of
its own with a per-trajectory timeout. A scorer that raises, times out or returns something
else is recorded as ``RewardBreakdown(0.0, error=...)``: never a silent zero (batching masks
such trajectories). A timed-out scorer's thread cannot be stopped; it keeps its env and
frees its place, so one stuck trajectory does not stall the others.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from forge_ray.env.protocol import EnvFactory
from forge_ray.types import RewardBreakdown, Task

log = logging.getLogger(__name__)

Scorer = Callable[[Task, list, "dict | None"], RewardBreakdown]


@dataclass(frozen=True)
class RewardStats:
    scored: int
    errors: int  # raised or returned a non-RewardBreakdown
    timeouts: int
    seconds_mean: float


def _in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future:
    """Run ``fn(*args)`` in a new daemon thread; a future on the running loop for its result."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            fut.set_result(value) if ok else fut.set_exception(value)

    def run() -> None:
        try:
            result = (True, fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            result = (False, e)
        loop.call_soon_threadsafe(settle, *result)

    threading.Thread(target=run, daemon=True, name="forge-reward").start()
    return fut


def _fresh_score(factory: EnvFactory) -> Scorer:
    """``score`` of a fresh env from ``factory``, closed again afterwards."""

    def score(task: Task, messages: list, snapshot: dict | None) -> RewardBreakdown:
        env = factory()
        try:
            return env.score(task, messages, snapshot)
        finally:
            env.close()

    return score


class RewardActor:
    """Plain class; ``spawn_reward_actor`` makes it the async actor ``forge/reward``.
    ``scorer``, when given, replaces the factory's envs' ``score`` (a picklable callable
    ``(task, messages, snapshot) -> RewardBreakdown``)."""

    def __init__(self, factory: EnvFactory | None, timeout_s: float = 30.0, workers: int = 4, scorer: Scorer | None = None):
        if timeout_s <= 0 or workers < 1:
            raise ValueError(f"RewardActor needs timeout_s > 0 and workers >= 1, got {timeout_s} and {workers}")
        if scorer is None:
            if factory is None:
                raise ValueError("RewardActor needs an env factory or a scorer")
            factory().close()  # fail now, loudly, on a bad factory
            scorer = _fresh_score(factory)
        if not callable(scorer):
            raise TypeError(f"scorer must be callable, got {type(scorer).__name__}")
        self.scorer, self.timeout_s, self.workers = scorer, timeout_s, workers
        self._slots: asyncio.Semaphore | None = None
        self.scored = self.errors = self.timeouts = 0
        self.seconds = 0.0

    async def score(self, task: Task, messages: list[dict], snapshot: dict | None = None) -> RewardBreakdown:
        """The reward of one finished episode; errors are recorded in ``error``."""
        from forge_ray import telemetry

        if self._slots is None:  # made on the actor's event loop
            self._slots = asyncio.Semaphore(self.workers)
        async with self._slots:
            t0 = time.monotonic()
            try:
                reward = await asyncio.wait_for(_in_thread(self.scorer, task, messages, snapshot), self.timeout_s)
                if not isinstance(reward, RewardBreakdown):
                    raise TypeError(f"scorer returned {type(reward).__name__}, not RewardBreakdown")
            except asyncio.TimeoutError:
                self.timeouts += 1
                reward = RewardBreakdown(0.0, error=f"score timed out after {self.timeout_s:g} s")
            except Exception as e:
                self.errors += 1
                reward = RewardBreakdown(0.0, error=f"score failed: {type(e).__name__}: {e}")
        elapsed = time.monotonic() - t0
        self.scored += 1
        self.seconds += elapsed
        telemetry.record("reward_latency_seconds", elapsed, role="reward")
        if reward.error:
            log.warning("task %s: %s", task.id, reward.error)
        return reward

    def stats(self) -> RewardStats:
        return RewardStats(self.scored, self.errors, self.timeouts, self.seconds / max(self.scored, 1))


def spawn_reward_actor(factory: EnvFactory | None, *, timeout_s: float = 30.0, workers: int = 4,
                       scorer: Scorer | None = None, name: str = "forge/reward") -> Any:
    """Start the reward actor and wait until it is up (a bad env name fails here)."""
    import ray

    from forge_ray.cluster.actors import on_driver_node

    actor = ray.remote(RewardActor).options(name=name, max_concurrency=1000, **on_driver_node()).remote(
        factory, timeout_s, workers, scorer)
    try:
        ray.get(actor.stats.remote(), timeout=120)
    except Exception:
        ray.kill(actor, no_restart=True)
        raise
    return actor


class RewardClient:
    """Scores through the reward actor (picklable). The actor enforces the timeout; this side
    allows a margin on top for the round trip. A dead actor raises; ``run_episode`` records
    that as the trajectory's reward error."""

    def __init__(self, actor: Any, timeout_s: float):
        self.actor, self.timeout_s = actor, timeout_s

    async def score(self, task: Task, messages: list[dict], snapshot: dict | None = None) -> RewardBreakdown:
        return await asyncio.wait_for(self.actor.score.remote(task, messages, snapshot), self.timeout_s + 10.0)
