"""EnvPool: environments hosted in their own Ray actors, leased per episode.

    EnvHost         plain class, one per actor ``forge/env-<i>`` (spawn_group, role "env"): up to
                    ``slots`` open episodes, each on its own Env instance (a threaded actor)
    EnvPoolManager  async actor ``forge/env-pool``: owns the env actors (their ActorGroupHandle),
                    hands out leases under a cap of ``pool_size * slots``, and is the ONE place
                    a dead or hung env actor is replaced (once, whoever reports it first)
    EnvPool         picklable handle (the manager's handle and the call timeout): lease/release,
                    and the calls, made straight to the env actor with a per-call timeout
    PooledEnv       (``forge_ray.env.adapters``) the ``AsyncEnv`` on top of a lease

A call that meets a dead actor, or gets no answer in ``step_timeout_s``, raises ``EnvPoolError``
(never a ``TimeoutError``: the agent loop must not read it as the episode's own time limit), so
the episode ends ``Status.ENV_FAILURE``; the manager replaces the actor, killing it if it still
runs, so every other lease on it fails as well. ``RolloutWorker.run_group`` sees
``PooledEnv.failed`` and fails the whole group, and the feeder re-queues its prompt.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from forge_ray.env.protocol import EnvFactory
from forge_ray.types import RewardBreakdown, StepResult, Task

log = logging.getLogger(__name__)

ENV_ACTOR_CPUS = 1.0  # logical CPUs reserved per env actor (its placement bundle)


class EnvPoolError(RuntimeError):
    """An env actor died or did not answer in time. The episode ends ``ENV_FAILURE`` and its
    group's prompt is re-queued (a pool fault says nothing about the policy)."""


@dataclass(frozen=True)
class EnvPoolSpec:
    env_name: str  # for logs
    factory: EnvFactory
    pool_size: int  # env actors
    slots: int  # concurrent episodes per env actor
    step_timeout_s: float = 30.0  # limit of one reset/step/score call

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.slots < 1:
            raise ValueError(f"env pool needs pool_size >= 1 and slots >= 1, got {self.pool_size} and {self.slots}")
        if self.step_timeout_s <= 0:
            raise ValueError(f"env pool step_timeout_s must be > 0, got {self.step_timeout_s}")


@dataclass(frozen=True)
class EnvLease:
    """One slot of one env actor, held for one episode."""

    lease_id: int
    actor_index: int
    generation: int  # of the actor at lease time; a replaced actor's leases are void
    slot: int
    actor: Any  # the env actor's handle


@dataclass(frozen=True)
class PoolStats:
    capacity: int
    leased: int
    waiting: int
    failures: int  # leases that reported a failure
    restarts: int  # env actors replaced
    generations: tuple[int, ...]


class EnvHost:
    """Inside actor ``forge/env-<i>``: up to ``slots`` episodes at once, each on a fresh env
    made by ``factory`` at ``open`` and dropped at ``close``.

    The actor's temporary files live under ``workdir`` (``tempfile.tempdir`` is pointed there,
    so an environment's workspaces land in it): a replacement actor for the same index empties
    it first, which removes whatever its killed predecessor left on disk; ``shutdown`` removes
    it."""

    def __init__(self, factory: EnvFactory, slots: int, index: int = 0, workdir: str | None = None):
        self.workdir = _fresh_dir(workdir) if workdir else None
        if self.workdir:
            tempfile.tempdir = self.workdir
        factory().close()  # fail here, loudly, on a bad factory
        self.factory, self.slots, self.index = factory, slots, index
        self.envs: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._start = self._window = time.monotonic()
        self._busy = self._busy_window = 0.0
        self.calls = 0

    def _env(self, slot: int) -> Any:
        if not isinstance(slot, int) or not 0 <= slot < self.slots:
            raise ValueError(f"env actor {self.index}: slot {slot!r} outside 0..{self.slots - 1}")
        env = self.envs.get(slot)
        if env is None:
            raise RuntimeError(f"env actor {self.index}: slot {slot} has no open episode")
        return env

    def _timed(self, fn, *args) -> Any:
        from forge_ray import telemetry

        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            now = time.monotonic()
            with self._lock:
                self._busy += now - t0
                self._busy_window += now - t0
                self.calls += 1
                report = now - self._window >= 1.0
                if report:
                    fraction = self._busy_window / ((now - self._window) * self.slots)
                    self._window, self._busy_window = now, 0.0
            if report:
                telemetry.record("env_busy_fraction", fraction, role="env")

    def open(self, slot: int, task: Task) -> Task:
        self.close(slot)  # a slot whose last episode was never closed
        env = self.factory()
        with self._lock:
            self.envs[slot] = env
        return self._timed(env.open, task)

    def step(self, slot: int, action: Any) -> StepResult:
        return self._timed(self._env(slot).step, action)

    def snapshot(self, slot: int) -> dict:
        return self._timed(self._env(slot).snapshot)

    def score(self, slot: int, task: Task, messages: list[dict]) -> RewardBreakdown:
        env = self._env(slot)
        return self._timed(env.score, task, messages, env.snapshot())

    def close(self, slot: int) -> None:
        with self._lock:
            env = self.envs.pop(slot, None)
        if env is not None:
            self._timed(env.close)

    def stats(self) -> dict[str, float]:
        wall = time.monotonic() - self._start
        return {"calls": self.calls, "busy_fraction": self._busy / max(wall * self.slots, 1e-9)}

    def ping(self) -> int:
        return self.index

    def shutdown(self) -> None:
        for slot in list(self.envs):
            try:
                self.close(slot)
            except Exception as e:  # noqa: BLE001 - closing the rest matters more
                log.warning("env actor %d: closing slot %d: %s", self.index, slot, e)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _fresh_dir(path: str) -> str:
    """``path`` emptied and re-created, searchable by the sandbox's own uid (bwrap as root)."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o711)
    return path


class EnvPoolManager:
    """Inside actor ``forge/env-pool``: the env actors, the lease cap, and replacements."""

    def __init__(self, spec: EnvPoolSpec):
        from forge_ray.cluster.actors import spawn_group

        self.spec = spec
        self.root = root = os.path.join(tempfile.gettempdir(), "forge-env", uuid.uuid4().hex[:12])
        self.handle = spawn_group(EnvHost, "env", spec.pool_size, {"CPU": ENV_ACTOR_CPUS},
                                  lambda rank: ((spec.factory, spec.slots, rank, os.path.join(root, f"actor-{rank}")), {}),
                                  max_concurrency=spec.slots)
        self.capacity = spec.pool_size * spec.slots
        self.free = [list(range(spec.slots)) for _ in range(spec.pool_size)]
        self.generation = [0] * spec.pool_size
        self.leased = self.waiting = self.failures = self.restarts = 0
        self._ids = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # made on the actor's event loop
            self._cond = asyncio.Condition()
        return self._cond

    async def ready(self) -> int:
        """Wait until every env actor answers; the number of slots."""
        await asyncio.gather(*(a.ping.remote() for a in self.handle.actors))
        return self.capacity

    async def lease(self) -> EnvLease:
        """A free slot on the least-loaded actor; waits while ``capacity`` leases are out.
        Invariant: free slots >= capacity - leased (a replacement frees all its slots while the
        old generation's leases still count until released), so a slot exists once admitted."""
        from forge_ray import telemetry

        cond = self._condition()
        async with cond:
            self.waiting += 1
            telemetry.record("env_leases_waiting", self.waiting, role="env")
            try:
                await cond.wait_for(lambda: self.leased < self.capacity)
            finally:
                self.waiting -= 1
                telemetry.record("env_leases_waiting", self.waiting, role="env")
            i = max(range(len(self.free)), key=lambda k: len(self.free[k]))
            slot = self.free[i].pop()
            self.leased += 1
            self._ids += 1
            return EnvLease(self._ids, i, self.generation[i], slot, self.handle.actors[i])

    async def release(self, lease: EnvLease) -> None:
        cond = self._condition()
        async with cond:
            self.leased -= 1
            if lease.generation == self.generation[lease.actor_index]:
                self.free[lease.actor_index].append(lease.slot)
            cond.notify()

    def report_failure(self, lease: EnvLease, reason: str) -> bool:
        """A call on ``lease`` failed. Replace its actor unless that generation was replaced
        already (no await in here: the check and the replacement are one step on the loop).
        True when this report caused the replacement."""
        from forge_ray import telemetry

        self.failures += 1
        telemetry.count("env_failures", 1, role="env")
        i = lease.actor_index
        if lease.generation != self.generation[i]:
            return False
        log.warning("env actor %d (generation %d) failed: %s; replacing it", i, lease.generation, reason)
        self.handle.respawn(i)  # kills it if it still runs: its other leases fail on their next call
        self.generation[i] += 1
        self.free[i] = list(range(self.spec.slots))
        self.restarts += 1
        return True

    def stats(self) -> PoolStats:
        return PoolStats(self.capacity, self.leased, self.waiting, self.failures, self.restarts, tuple(self.generation))

    def actors(self) -> list[Any]:
        return list(self.handle.actors)

    def workdirs(self) -> list[str]:
        """Each env actor's work dir (on its node), by actor index."""
        return [os.path.join(self.root, f"actor-{i}") for i in range(self.spec.pool_size)]

    async def shutdown(self) -> None:
        """Close every open episode and remove the actors' work dirs, then stop the actors."""
        closing = asyncio.gather(*(a.shutdown.remote() for a in self.handle.actors), return_exceptions=True)
        try:
            await asyncio.wait_for(closing, 60)
        except asyncio.TimeoutError:
            log.warning("env pool shutdown: env actors did not close their episodes within 60 s")
        self.handle.shutdown()


class EnvPool:
    """Client handle of the pool (picklable: pass it into rollout actors)."""

    def __init__(self, manager: Any, step_timeout_s: float):
        self.manager, self.step_timeout_s = manager, step_timeout_s

    @classmethod
    def create(cls, spec: EnvPoolSpec, timeout_s: float = 300.0) -> "EnvPool":
        """Start the manager (which spawns the env actors) and wait until every actor answers."""
        import ray

        from forge_ray.cluster.actors import on_driver_node

        manager = ray.remote(EnvPoolManager).options(name="forge/env-pool", max_concurrency=10_000, **on_driver_node()).remote(spec)
        try:
            capacity = ray.get(manager.ready.remote(), timeout=timeout_s)
        except Exception:
            ray.kill(manager, no_restart=True)
            raise
        log.info("env pool up: %d actors x %d slots of %s", spec.pool_size, spec.slots, spec.env_name)
        assert capacity == spec.pool_size * spec.slots
        return cls(manager, spec.step_timeout_s)

    async def lease(self) -> EnvLease:
        return await self.manager.lease.remote()

    async def release(self, lease: EnvLease) -> None:
        await self.manager.release.remote(lease)

    async def stats(self) -> PoolStats:
        return await self.manager.stats.remote()

    async def call(self, lease: EnvLease, method: str, *args: Any) -> Any:
        """``method(slot, *args)`` on the lease's actor, within ``step_timeout_s``. A dead actor
        or a timeout is reported to the manager and raised as ``EnvPoolError``; an exception the
        environment itself raised comes through as it is."""
        from ray.exceptions import RayActorError

        try:
            return await asyncio.wait_for(getattr(lease.actor, method).remote(lease.slot, *args), self.step_timeout_s)
        except (asyncio.TimeoutError, RayActorError) as e:
            reason = f"{method} timed out after {self.step_timeout_s:g} s" if isinstance(e, asyncio.TimeoutError) else f"{method}: {type(e).__name__}"
        try:
            await self.manager.report_failure.remote(lease, reason)
        except RayActorError as e:
            reason += f" (and the pool manager is gone: {type(e).__name__})"
        raise EnvPoolError(f"env actor {lease.actor_index} (generation {lease.generation}): {reason}")

    def shutdown(self) -> None:
        import ray

        try:
            ray.get(self.manager.shutdown.remote(), timeout=60)
        except Exception as e:  # a dead manager took its env actors with it
            log.warning("env pool shutdown: %s", e)
        ray.kill(self.manager, no_restart=True)


@dataclass
class EnvServices:
    """What ``rl_actors.spawn`` starts besides the engines: the env pool and the reward actor
    (each ``None`` when not configured), and the client the rollout workers score through."""

    pool: EnvPool | None = None
    reward: Any = None  # the RewardActor's handle
    scorer: Any = None  # RewardClient on it

    @classmethod
    def start(cls, job: Any, factory: EnvFactory) -> "EnvServices":
        env, services = job.env, cls()
        try:
            if env.pool_size != 0:  # a negative size fails in EnvPoolSpec
                services.pool = EnvPool.create(EnvPoolSpec(env.name, factory, env.pool_size, env.pool_slots, env.step_timeout_s))
            if job.reward.actor:
                from forge_ray.reward.actor import RewardClient, spawn_reward_actor

                services.reward = spawn_reward_actor(factory, timeout_s=env.step_timeout_s)
                services.scorer = RewardClient(services.reward, env.step_timeout_s)
        except BaseException:
            services.shutdown()
            raise
        return services

    def shutdown(self) -> None:
        import ray

        if self.pool is not None:
            self.pool.shutdown()
        if self.reward is not None:
            ray.kill(self.reward, no_restart=True)
