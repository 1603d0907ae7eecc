"""RewardActor: scores each trajectory as soon as its episode ends, in its own actor.

    reward = spawn_reward_actor("calculator", {}, timeout_s=30)   # actor "forge/reward"
    breakdown = await RewardClient(reward, 30).score(task, messages)

The actor holds environment instances for scoring only (``make_env(name).score``), up to
``workers`` scoring at once, each in a thread of its own with a per-trajectory timeout. A
scorer that raises, times out or returns something else is recorded as
``RewardBreakdown(0.0, error=...)``: never a silent zero (batching masks such trajectories).
A timed-out scorer's thread cannot be stopped; its env instance is abandoned and a fresh one
takes its place, so one stuck trajectory does not stall the others.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from forge_ray.types import RewardBreakdown, Task

log = logging.getLogger(__name__)

Scorer = Callable[[Task, list], RewardBreakdown]


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


class RewardActor:
    """Plain class; ``spawn_reward_actor`` makes it the async actor ``forge/reward``.
    ``scorer``, when given, replaces ``make_env(env_name).score`` (a picklable callable)."""

    def __init__(self, env_name: str, env_kwargs: dict | None = None, timeout_s: float = 30.0, workers: int = 4,
                 scorer: Scorer | None = None):
        if timeout_s <= 0 or workers < 1:
            raise ValueError(f"RewardActor needs timeout_s > 0 and workers >= 1, got {timeout_s} and {workers}")
        if scorer is None:
            from envs import make_env

            kwargs = dict(env_kwargs or {})
            make_env(env_name, **kwargs)  # fail now, loudly, on a bad name or kwargs
            self._make = lambda: make_env(env_name, **kwargs).score
        else:
            if not callable(scorer):
                raise TypeError(f"scorer must be callable, got {type(scorer).__name__}")
            self._make = lambda: scorer
        self.env_name, self.timeout_s, self.workers = env_name, timeout_s, workers
        self._idle: asyncio.Queue | None = None
        self.scored = self.errors = self.timeouts = 0
        self.seconds = 0.0

    def _queue(self) -> asyncio.Queue:
        if self._idle is None:  # made on the actor's event loop
            self._idle = asyncio.Queue()
            for _ in range(self.workers):
                self._idle.put_nowait(self._make())
        return self._idle

    async def score(self, task: Task, messages: list[dict]) -> RewardBreakdown:
        """The reward of one finished conversation; errors are recorded in ``error``."""
        from forge_ray import telemetry

        idle = self._queue()
        scorer = await idle.get()
        t0 = time.monotonic()
        try:
            reward = await asyncio.wait_for(_in_thread(scorer, task, messages), self.timeout_s)
            if not isinstance(reward, RewardBreakdown):
                raise TypeError(f"scorer returned {type(reward).__name__}, not RewardBreakdown")
        except asyncio.TimeoutError:
            self.timeouts += 1
            scorer = self._make()  # the stuck one keeps its thread; never reuse it
            reward = RewardBreakdown(0.0, error=f"score timed out after {self.timeout_s:g} s")
        except Exception as e:
            self.errors += 1
            reward = RewardBreakdown(0.0, error=f"score failed: {type(e).__name__}: {e}")
        finally:
            idle.put_nowait(scorer)
        elapsed = time.monotonic() - t0
        self.scored += 1
        self.seconds += elapsed
        telemetry.record("reward_latency_seconds", elapsed, role="reward")
        if reward.error:
            log.warning("task %s: %s", task.id, reward.error)
        return reward

    def stats(self) -> RewardStats:
        return RewardStats(self.scored, self.errors, self.timeouts, self.seconds / max(self.scored, 1))


def spawn_reward_actor(env_name: str, env_kwargs: dict | None = None, *, timeout_s: float = 30.0, workers: int = 4,
                       scorer: Scorer | None = None, name: str = "forge/reward") -> Any:
    """Start the reward actor and wait until it is up (a bad env name fails here)."""
    import ray

    from forge_ray.cluster.actors import on_driver_node

    actor = ray.remote(RewardActor).options(name=name, max_concurrency=1000, **on_driver_node()).remote(
        env_name, env_kwargs, timeout_s, workers, scorer)
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

    async def score(self, task: Task, messages: list[dict]) -> RewardBreakdown:
        return await asyncio.wait_for(self.actor.score.remote(task, messages), self.timeout_s + 10.0)


class ScoredEnv:
    """An ``AsyncEnv`` (e.g. ``LocalEnv``) whose ``score`` goes to ``scorer`` instead."""

    def __init__(self, env: Any, scorer: Any):
        self.env, self.scorer = env, scorer

    async def reset(self, task: Task) -> None:
        await self.env.reset(task)

    async def step(self, action: Any) -> Any:
        return await self.env.step(action)

    async def score(self, task: Task, messages: list[dict]) -> RewardBreakdown:
        return await self.scorer.score(task, messages)
