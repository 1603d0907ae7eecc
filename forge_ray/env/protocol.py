"""The environment protocol every environment in ``envs/`` implements.

An environment is a plain class; one instance plays one episode at a time:

    task = env.open(task)          # start: make the workspace (a repo copy, a DB, a user);
                                   # may return the task with opening messages appended
    result = env.step(action)      # each parsed assistant turn, until result.done
    snap = env.snapshot()          # what scoring needs beyond the messages (JSON-able)
    reward = env.score(task, messages, snap)
    env.close()                    # remove the workspace; idempotent, also after a failure

``score`` must give the same reward in the episode's own instance and in a fresh instance
handed the snapshot (that is how the reward actor scores: the episode's workspace stays
where it was played). Environments never see token ids, only messages.

``blocking = True`` says that ``open``/``step``/``score`` may take seconds (a test run, a
sandboxed command): the async adapters then run them in a thread, off the event loop that
drives generation. Environments that must await something (a simulated user served by an
engine) may also define ``async def aopen(task)`` / ``async def astep(action)``, which the
adapters prefer.

``EnvFactory`` is how the core gets environments without importing ``envs/``: the pipeline
and the driver build one (``envs.factory(name, kwargs)``) and hand it to the rollout workers,
the env pool and the reward actor; it must be picklable.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from forge_ray.types import Action, RewardBreakdown, StepResult, Task


@runtime_checkable
class Env(Protocol):
    blocking: bool

    def open(self, task: Task) -> Task:
        """Start an episode on ``task``; returns the task as the episode opens."""

    def step(self, action: Action) -> StepResult:
        """Execute the assistant's turn; malformed turns become error observations."""

    def snapshot(self) -> dict[str, Any]:
        """The episode's state that ``score`` needs besides the messages (JSON-able)."""

    def score(self, task: Task, messages: list[dict], snapshot: dict[str, Any] | None = None) -> RewardBreakdown:
        """Reward of a finished conversation (outcome reward and its parts)."""

    def close(self) -> None:
        """End the episode and remove whatever it created. Idempotent."""


class EnvBase:
    """Defaults for environments without a workspace: ``open`` remembers the task,
    ``snapshot`` is empty, ``close`` does nothing."""

    blocking = False
    task: Task | None = None

    def open(self, task: Task) -> Task:
        self.task = task
        return task

    def snapshot(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.task = None


EnvFactory = Callable[[], Env]


@runtime_checkable
class TaskSource(Protocol):
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """``n`` tasks of ``split`` ("train" or "heldout"), deterministic in ``seed``."""

    def expert(self, task: Task) -> list[dict]:
        """A correct conversation for ``task``: assistant turns and tool results as messages."""
