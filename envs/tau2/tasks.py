"""τ²-bench tasks as forge_ray ``Task``s, and the gold replay (the ``expert``).

A task opens with the agent's system prompt (instructions, then the domain policy), the tool
specs, and τ²'s fixed greeting as the first assistant turn. The simulated user's opening
message is not part of it: it depends on the simulator, so ``Tau2Env.aopen`` appends it.

Gold replay rule (``gold_conversation``): every gold action of the task's evaluation criteria,
in order, as one assistant turn of forge_ray ``<tool_call>`` text that goes through
``parse_action`` and ``Tau2Env.step`` like a model's turn; then one plain assistant message
that states each ``communicate_info`` string (the facts τ²'s ``CommunicateEvaluator`` looks
for in the agent's messages; a fixed closing line when there are none), to which the scripted
user answers ``###STOP###``.
"""
from __future__ import annotations

import random
from typing import Any

from envs.tau2.domain import DOMAINS, GREETING, SPLITS, communicate_info, gold_actions, load_domain, system_prompt
from forge_ray.chat import parse_action, render_tool_call
from forge_ray.types import Task, ToolCall

GOLD_OPENING = "Hi, I need help with a request."
GOLD_CLOSING = "Your request has been taken care of."


def make_task(domain_name: str, tau2_task: Any) -> Task:
    """The forge_ray ``Task`` of one τ² task (unopened: no user message yet)."""
    domain = load_domain(domain_name)
    crit = tau2_task.evaluation_criteria
    return Task(
        id=f"{domain_name}/{tau2_task.id}",
        env="tau2",
        messages=[{"role": "system", "content": system_prompt(domain)}, {"role": "assistant", "content": GREETING}],
        tools=domain.tools,
        answer={"domain": domain_name, "tau2_task_id": tau2_task.id},
        meta={
            "num_actions": len(gold_actions(tau2_task)),
            "reward_basis": [str(getattr(b, "value", b)) for b in (crit.reward_basis if crit else [])],
        },
    )


def load_tasks(domain_name: str, split: str = "all", with_actions_only: bool = False) -> list[Task]:
    """Every task of ``split`` ("all", "train", "heldout"/"test"), in τ²'s file order."""
    if split not in SPLITS:
        raise ValueError(f"unknown tau2 split {split!r}; known: {', '.join(SPLITS)}")
    domain = load_domain(domain_name)
    ids = domain.splits[SPLITS[split]]
    tasks = [domain.tasks[i] for i in ids if i in domain.tasks]
    if with_actions_only:
        tasks = [t for t in tasks if gold_actions(t)]
    return [make_task(domain_name, t) for t in tasks]


def gold_turns(task: Task) -> list[str]:
    """The assistant texts of the gold replay: one ``<tool_call>`` per gold action, then the
    message that communicates the required information."""
    domain = load_domain(task.answer["domain"])
    tau2_task = domain.tasks[task.answer["tau2_task_id"]]
    turns = [render_tool_call(ToolCall(a.name, dict(a.arguments))) for a in gold_actions(tau2_task)]
    info = communicate_info(tau2_task)
    turns.append("\n".join(info) if info else GOLD_CLOSING)
    return turns


def gold_conversation(task: Task, max_steps: int = 200) -> tuple[Task, list[dict], Any]:
    """Replay ``task``'s gold turns through forge_ray's path (text -> ``parse_action`` ->
    ``Tau2Env.step``). Returns the opened task, the continuation after its messages, and the
    env (which holds the termination and can ``score``)."""
    from envs.tau2.env import Tau2Env
    from envs.tau2.users import ScriptedUser

    opened_already = bool(task.messages) and task.messages[-1].get("role") == "user"
    user = ScriptedUser([] if opened_already else [GOLD_OPENING])
    env = Tau2Env(task.answer["domain"], user=user, max_steps=max_steps, max_errors=10**6)
    opened = env.open(task)
    continuation: list[dict] = []
    for text in gold_turns(task):
        continuation.append({"role": "assistant", "content": text})
        result = env.step(parse_action(text))
        if result.done:
            break
        continuation += result.messages
    return opened, continuation, env


class Tau2Tasks:
    """TaskSource of one τ² domain (``domain`` = "retail" or "airline").

    ``tasks(split, n, seed)``: split "train" / "heldout" are τ²'s train / test splits, "all"
    its base set; the tasks are shuffled by ``seed`` (seed < 0 keeps file order) and the first
    ``n`` returned (``n <= 0``: all). ``expert`` is the gold replay.
    """

    def __init__(self, domain: str = "retail", with_actions_only: bool = False):
        if domain not in DOMAINS:
            raise ValueError(f"unknown tau2 domain {domain!r}; known: {', '.join(DOMAINS)}")
        self.domain = domain
        self.with_actions_only = with_actions_only

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        tasks = load_tasks(self.domain, split, self.with_actions_only)
        if seed >= 0:
            random.Random(seed).shuffle(tasks)
        return tasks if n <= 0 else tasks[:n]

    def expert(self, task: Task) -> list[dict]:
        """The gold continuation after ``task.messages``: assistant turns and tool results (an
        unopened task gets no user message in it; the gold turns do not depend on one)."""
        return gold_conversation(task)[1]
