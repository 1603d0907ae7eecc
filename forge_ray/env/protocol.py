"""The Env protocol every environment in ``envs/`` implements.

An environment is a plain class. The agent loop calls ``reset`` once per episode, then
``step`` with each parsed assistant turn until ``done``; ``score`` turns the finished
conversation into a reward. Environments never see token ids, only messages.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from forge_ray.types import Action, RewardBreakdown, StepResult, Task


@runtime_checkable
class Env(Protocol):
    def reset(self, task: Task) -> None:
        """Start an episode on ``task``."""

    def step(self, action: Action) -> StepResult:
        """Execute the assistant's turn; malformed calls become error observations."""

    def score(self, task: Task, messages: list[dict]) -> RewardBreakdown:
        """Reward of a finished conversation (outcome reward and its parts)."""


@runtime_checkable
class TaskSource(Protocol):
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """``n`` tasks of ``split`` ("train" or "heldout"), deterministic in ``seed``."""

    def expert(self, task: Task) -> list[dict]:
        """A correct conversation for ``task``: assistant turns and tool results as messages."""
