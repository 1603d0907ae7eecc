"""Joint multi-task RL (``env.mix`` in a ``domains:`` job; docs/merging.md): one policy trained on
several domains, every RL step on one domain's groups, the domains taking turns by a step
schedule that repeats:

    env:
      mix: [function_calling, function_calling, function_calling, calculator]   # 3 : 1

Step k trains only on groups of ``schedule[(k - 1) % len(schedule)]``, so the data ratio is the
schedule's, exactly. The pieces:

    tag, domain_of   a task's domain travels in its id (``<domain>::<id>``): the prompt pool, the
                     feeder's admission and the buffer's ``take`` need nothing else
    step_domain, due the schedule: the domain of step k, and how many of steps 1..k are a domain's
    MixedEnv         one environment per episode, made by its task's domain's factory
    MixedTasks       the domains' task sources as one (each domain's own counts and seed)
    mix_job          the job the joint RL runs: engines sized for the longest domain, each
                     domain's episode limits carried by its tasks
    MixedGuard       a collapse guard per domain (rewards and lengths differ between domains)
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable

from forge_ray.types import Task

if TYPE_CHECKING:
    from forge_ray.config import JobConfig

SEP = "::"
# The episode limits a domain keeps inside a mix (task.meta["episode"], rollout.group applies them).
EPISODE_LIMITS = {"max_new_tokens": "max_new_tokens", "max_context": "max_context", "episode_timeout_s": "timeout_s"}


def domain_of(task_id: str) -> str:
    """The domain a mixed task belongs to; "" for a task of a single-environment run."""
    return task_id.split(SEP, 1)[0] if SEP in task_id else ""


def tag(domain: str, tasks: list[Task], episode: dict[str, Any] | None = None) -> list[Task]:
    """``tasks`` as members of ``domain``: id ``<domain>::<id>``, ``meta["domain"]`` (evaluations
    report per domain) and ``meta["episode"]``, the domain's episode limits."""
    meta = {"domain": domain, **({"episode": dict(episode)} if episode else {})}
    return [dataclasses.replace(t, id=f"{domain}{SEP}{t.id}", meta={**t.meta, **meta}) for t in tasks]


def untag(task: Task) -> Task:
    """The domain's own task (its original id)."""
    return dataclasses.replace(task, id=task.id.split(SEP, 1)[1]) if SEP in task.id else task


def step_domain(schedule: list[str], step: int) -> str:
    """The domain RL step ``step`` (1-based) trains on; "" without a schedule."""
    return schedule[(step - 1) % len(schedule)] if schedule else ""


def due(schedule: list[str], domain: str, steps: int) -> int:
    """How many of steps 1..``steps`` train on ``domain`` (all of them without a schedule)."""
    if not schedule:
        return max(steps, 0)
    full, rest = divmod(max(steps, 0), len(schedule))
    return full * schedule.count(domain) + schedule[:rest].count(domain)


# ---------------------------------------------------------------- environments and tasks


class MixedEnv:
    """An ``Env`` of a mix: ``open`` makes the episode's environment with its task's domain's
    factory, every later call goes to it. ``score`` on a fresh instance (the reward actor) makes
    one for the task's domain, scores, and closes it."""

    def __init__(self, factories: dict[str, Callable[[], Any]], blocking: bool = False):
        self.factories, self.blocking = factories, blocking
        self.env: Any = None

    def _make(self, task: Task) -> Any:
        domain = domain_of(task.id)
        if domain not in self.factories:
            raise ValueError(f"task {task.id}: no environment for domain {domain!r} in this mix ({', '.join(self.factories)})")
        return self.factories[domain]()

    def open(self, task: Task) -> Task:
        self.close()
        self.env = self._make(task)
        return self.env.open(task)

    async def aopen(self, task: Task) -> Task:
        self.close()
        self.env = self._make(task)
        if hasattr(self.env, "aopen"):
            return await self.env.aopen(task)
        return await self._call(self.env.open, task)

    def step(self, action: Any) -> Any:
        return self.env.step(action)

    async def astep(self, action: Any) -> Any:
        if hasattr(self.env, "astep"):
            return await self.env.astep(action)
        return await self._call(self.env.step, action)

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args) if getattr(self.env, "blocking", False) else fn(*args)

    def snapshot(self) -> dict[str, Any]:
        return self.env.snapshot() if self.env is not None else {}

    def score(self, task: Task, messages: list[dict], snapshot: dict[str, Any] | None = None) -> Any:
        if self.env is not None:
            return self.env.score(task, messages, snapshot)
        env = self._make(task)
        try:
            return env.score(task, messages, snapshot)
        finally:
            env.close()

    def close(self) -> None:
        env, self.env = self.env, None
        if env is not None:
            env.close()


def mixed_factory(factories: dict[str, Callable[[], Any]]) -> Callable[[], MixedEnv]:
    """A picklable maker of ``MixedEnv``; blocking when any domain's environment is."""
    def blocking(factory: Callable[[], Any]) -> bool:
        env = factory()
        try:
            return bool(getattr(env, "blocking", False))
        finally:
            env.close()

    return functools.partial(MixedEnv, dict(factories), any(blocking(f) for f in factories.values()))


class MixedTasks:
    """The task sources of a mix as one ``TaskSource``. ``tasks(split, n, seed)`` gives every
    domain's tasks, tagged, each domain with its own ``env.train_tasks`` / ``env.eval_tasks``
    and ``env.seed`` (``n`` and ``seed`` are the mix job's, and unused)."""

    def __init__(self, parts: dict[str, tuple[Any, Any, dict[str, Any]]]):
        self.parts = parts  # domain -> (its TaskSource, its EnvConfig, its episode limits)

    def tasks(self, split: str, n: int = 0, seed: int = 0) -> list[Task]:
        out: list[Task] = []
        for domain, (source, env, episode) in self.parts.items():
            count = env.train_tasks if split == "train" else env.eval_tasks
            out += tag(domain, source.tasks(split, count, env.seed), episode)
        return out

    def expert(self, task: Task) -> list[dict]:
        return self.parts[domain_of(task.id)][0].expert(untag(task))


# ---------------------------------------------------------------- the job


def mix_domains(job: JobConfig) -> dict[str, JobConfig]:
    """The domains ``env.mix`` names, in order of first mention, each as its own job sees it."""
    from forge_ray.config import domain_job

    by_name = {d.name: d for d in job.domains}
    return {name: domain_job(job, by_name[name]) for name in dict.fromkeys(job.env.mix)}


def episode_limits(djob: JobConfig) -> dict[str, Any]:
    """A domain's episode limits as ``EpisodeSpec`` fields (``task.meta["episode"]``)."""
    return {spec_key: getattr(djob.rollout, key) for key, spec_key in EPISODE_LIMITS.items()}


def mix_job(job: JobConfig) -> JobConfig:
    """The job the joint RL runs: the job's own rollout, learner and run sections, its engines
    sized for the longest episodes of any mixed domain (each task keeps its domain's limits)."""
    djobs = list(mix_domains(job).values())
    rollout = dataclasses.replace(job.rollout, max_context=max(j.rollout.max_context for j in djobs),
                                  max_new_tokens=max(j.rollout.max_new_tokens for j in djobs),
                                  episode_timeout_s=max(j.rollout.episode_timeout_s for j in djobs))
    return dataclasses.replace(job, rollout=rollout)


# ---------------------------------------------------------------- metrics and the guard


def step_columns(domain: str, groups: list, consumed: dict[str, int]) -> dict[str, Any]:
    """A mixed step's columns: its domain, the domain's reward and response length this step,
    and every domain's share of the prompts consumed so far (``consumed``: the prompt ledger's;
    a consumed prompt was trained on, or dropped for a group without signal)."""
    metas = [m for g in groups for m in g.metas]
    n = max(len(metas), 1)
    trained: dict[str, int] = {}
    for task_id, k in consumed.items():
        trained[domain_of(task_id)] = trained.get(domain_of(task_id), 0) + k
    total = max(sum(trained.values()), 1)
    return {"mix_domain": domain, f"by_domain/{domain}/reward_mean": sum(m.reward for m in metas) / n,
            f"by_domain/{domain}/tokens_mean": sum(m.num_tokens for m in metas) / n,
            **{f"by_domain/{d}/prompt_share": k / total for d, k in trained.items()}}


class MixedGuard:
    """One ``CollapseGuard`` per domain, each fed only its domain's steps: a reward that falls
    from 0.9 on one domain to 0.2 on the next is the schedule, not a collapse. A rollback goes to
    the newest step that no domain's guard suspects."""

    def __init__(self, cfg: Any, domains: list[str]):
        from forge_ray.guard import CollapseGuard

        self.guards = {d: CollapseGuard(cfg) for d in dict.fromkeys(domains)}

    def observe(self, step: int, metrics: dict[str, Any]) -> Any:
        return self.guards[metrics["mix_domain"]].observe(step, metrics)

    @property
    def last_good_step(self) -> int | None:
        steps = [g.last_good_step for g in self.guards.values() if g.last_good_step is not None]
        return min(steps) if steps else None

    def rewind(self) -> None:
        for g in self.guards.values():
            g.rewind()

    def state_dict(self) -> dict[str, Any]:
        return {d: g.state_dict() for d, g in self.guards.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for d, s in state.items():
            self.guards[d].load_state_dict(s)
