"""Concrete environments, and the registry that builds them by name.

``ENVS`` maps an environment name to ``(module, Env class, TaskSource class)``; modules are
imported only when asked for, so importing ``envs`` stays cheap and one environment's
dependencies never load for another.
"""
from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

ENVS: dict[str, tuple[str, str, str]] = {
    "calculator": ("envs.calculator", "CalculatorEnv", "CalculatorTasks"),
    "tau2": ("envs.tau2", "Tau2Env", "Tau2Tasks"),  # kwargs: domain="retail" | "airline"
    "function_calling": ("envs.function_calling", "FunctionCallingEnv", "FunctionCallingTasks"),
    # multi-turn: BFCL's stateful back-ends and checker; or forge_ray's own (kwargs train: synthetic, step_share)
    "function_calling_multi_turn": ("envs.function_calling.multi_turn", "MultiTurnEnv", "MultiTurnTasks"),
    "swe": ("envs.swe", "SweEnv", "SweTasks"),  # a repository, bash + edit_via_str_replace, tests as reward
    "exercises": ("envs.exercises", "ExerciseEnv", "ExerciseTasks"),  # write a solution file, tests as reward
}


def _load(name: str, index: int) -> Any:
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; known: {', '.join(sorted(ENVS))}")
    entry = ENVS[name]
    return getattr(importlib.import_module(entry[0]), entry[index])


def make_env(name: str, **kwargs: Any) -> Any:
    """A fresh Env instance of environment ``name`` (kwargs go to its constructor)."""
    return _load(name, 1)(**kwargs)


def factory(name: str, kwargs: dict[str, Any] | None = None) -> Callable[[], Any]:
    """A picklable zero-argument maker of ``name``'s environments: what the pipeline hands to
    the rollout workers, the env pool and the reward actor (the core never imports ``envs``).
    Fails here, on the driver, for an unknown name or bad kwargs."""
    kwargs = dict(kwargs or {})
    make_env(name, **kwargs).close()
    return functools.partial(make_env, name, **kwargs)


def make_tasks(name: str, **kwargs: Any) -> Any:
    """The TaskSource of environment ``name`` (kwargs go to its constructor)."""
    return _load(name, 2)(**kwargs)
