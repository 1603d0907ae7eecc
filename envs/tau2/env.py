"""The τ²-bench environment: tool calls run against the domain DB, plain messages go to the
user simulator, and τ²'s evaluator gives the reward.

An episode follows τ²'s orchestrator: the conversation opens with τ²'s fixed agent greeting
and the simulated user's first message (``aopen`` asks the simulator for it); then each agent
turn either calls tools (each call runs on the domain's ``Environment`` and its response is
the observation) or talks to the user (the simulator's reply is the observation). It ends
when the agent or the user writes a stop token (``###STOP###``, ``###TRANSFER###``,
``###OUT-OF-SCOPE###``), after ``max_errors`` failed tool calls, or after ``max_steps``
messages (τ²'s limits). Malformed calls, unknown tools and bad arguments are error
observations; nothing the model writes raises.

``open``/``step`` are the synchronous ``Env`` protocol; the agent loop's ``LocalEnv`` prefers
``aopen``/``astep``, which await the simulator instead of blocking the event loop on it.
``snapshot`` hands the termination to the reward actor, which scores like this env would.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any, Coroutine

from envs.tau2.domain import load_domain, score_messages, user_scenario
from envs.tau2.users import UserContextExceeded, is_stop, make_user, user_system_prompt
from forge_ray.env.protocol import EnvBase
from forge_ray.types import Action, RewardBreakdown, StepResult, Task


def _run_sync(coro: Coroutine) -> Any:
    """Run ``coro`` to completion from synchronous code, also under a running event loop (in
    a helper thread; fine for simulators that do not need the caller's loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Tau2Env(EnvBase):
    """Env for ``tau2`` tasks of one domain.

    ``user`` is a ``UserSimulator`` (or a spec for ``users.make_user``); without one the user
    says ``###STOP###`` at its first turn. ``max_steps`` counts messages as τ²'s orchestrator
    does (each agent turn, each batch of tool answers, each user turn); reaching it truncates
    the episode. ``max_errors`` failed tool calls end it (τ² scores both 0).
    """

    def __init__(self, domain: str = "retail", user: Any = None, max_steps: int = 200, max_errors: int = 10):
        self.domain = load_domain(domain)
        self.user = make_user(user)
        self.max_steps, self.max_errors = max_steps, max_errors
        self.task: Task | None = None
        self.tau2_env: Any = None
        self.user_history: list[dict[str, str]] = []
        self.steps = self.errors = 0
        self.termination: str | None = None

    # ------------------------------------------------------------------ episode set-up

    def tau2_task(self, task: Task) -> Any:
        return self.domain.tasks[task.answer["tau2_task_id"]]

    def _begin(self, task: Task) -> None:
        """Start an episode; the user side is rebuilt from the text turns of ``task.messages``."""
        self.task = task
        self.tau2_env = None  # built at the first tool call: a DB copy costs ~0.1-0.3 s
        self.steps = self.errors = 0
        self.termination = None
        system = {"role": "system", "content": user_system_prompt(user_scenario(self.tau2_task(task)))}
        flipped = {"assistant": "user", "user": "assistant"}
        self.user_history = [system] + [
            {"role": flipped[m["role"]], "content": m["content"]} for m in task.messages if m.get("role") in flipped
        ]

    async def aopen(self, task: Task) -> Task:
        """Start an episode: ``task`` with the simulated user's opening message appended (after
        τ²'s greeting), or as it is when it already ends with one. Raises
        ``UserContextExceeded`` when the simulator's prompt does not fit its model."""
        self._begin(task)
        if task.messages and task.messages[-1].get("role") == "user":
            return task  # already opened
        text = await self.user.reply(self.user_history)
        opened = dataclasses.replace(task, messages=[*task.messages, {"role": "user", "content": text}])
        self._begin(opened)
        return opened

    def open(self, task: Task) -> Task:
        return _run_sync(self.aopen(task))

    def snapshot(self) -> dict[str, Any]:
        return {"termination": self.termination or "unfinished"} if self.task is not None else {}

    def close(self) -> None:
        """Drop the episode's DB copy; ``termination`` stays readable."""
        self.tau2_env = None

    # ------------------------------------------------------------------------ stepping

    def _end(self, termination: str, messages: list | None = None, truncated: bool = False) -> StepResult:
        self.termination = termination
        info = {"termination": termination, "steps": self.steps, "errors": self.errors}
        if truncated:
            info["truncated"] = True
        return StepResult(messages or [], True, info)

    def _tools(self, action: Action) -> StepResult:
        """Run the turn's tool calls (or report its malformed call) as tool observations."""
        from tau2.data_model.message import ToolCall

        if self.tau2_env is None:
            self.tau2_env = self.domain.make_env()
        if action.parse_error is not None:
            self.errors += 1
            out = [{"role": "tool", "content": f"Error: {action.parse_error}"}]
        else:
            out = []
            for k, call in enumerate(action.tool_calls):
                answer = self.tau2_env.get_response(ToolCall(id=f"c{k}", name=call.name, arguments=call.arguments))
                self.errors += bool(answer.error)
                out.append({"role": "tool", "content": answer.content if answer.content is not None else ""})
        self.steps += 1
        if self.errors >= self.max_errors:
            return self._end("too_many_errors", out)
        return StepResult(out, False, {"steps": self.steps, "errors": self.errors})

    def _act(self, action: Action) -> StepResult | None:
        """Everything a turn does before the user answers; None when the user must answer."""
        if self.task is None:
            raise RuntimeError("step() before open()")
        if self.termination is not None:
            return self._end(self.termination)
        self.steps += 1
        if action.parse_error is not None or action.tool_calls:
            return self._truncate_or(self._tools(action))
        if is_stop(action.text):
            return self._end("agent_stop")
        self.user_history.append({"role": "user", "content": action.text})
        return self._truncate_or(None)

    def _truncate_or(self, result: StepResult | None) -> StepResult | None:
        if (result is None or not result.done) and self.steps >= self.max_steps:
            return self._end("max_steps", result.messages if result else [], truncated=True)
        return result

    def _after_user(self, reply: str | BaseException) -> StepResult:
        if isinstance(reply, UserContextExceeded):
            return self._end("user_context_exceeded", truncated=True)
        self.steps += 1
        self.user_history.append({"role": "assistant", "content": reply})
        message = [{"role": "user", "content": reply}]
        if is_stop(reply):
            return self._end("user_stop", message)
        if self.steps >= self.max_steps:
            return self._end("max_steps", message, truncated=True)
        return StepResult(message, False, {"steps": self.steps, "errors": self.errors})

    def step(self, action: Action) -> StepResult:
        result = self._act(action)
        if result is not None:
            return result
        try:
            reply = _run_sync(self.user.reply(list(self.user_history)))
        except UserContextExceeded as e:
            reply = e
        return self._after_user(reply)

    async def astep(self, action: Action) -> StepResult:
        result = self._act(action)
        if result is not None:
            return result
        try:
            reply = await self.user.reply(list(self.user_history))
        except UserContextExceeded as e:
            reply = e
        return self._after_user(reply)

    # ------------------------------------------------------------------------- scoring

    def score(self, task: Task, messages: list[dict], snapshot: dict | None = None) -> RewardBreakdown:
        """τ²'s reward of the conversation. An episode that did not end by a stop token scores
        0 (as in τ²): its termination comes from ``snapshot`` (the reward actor's case) or from
        this env if it played ``task``; a conversation scored with neither is taken as
        finished."""
        tau2_task = self.tau2_task(task)
        played = self.task is not None and self.task.id == task.id
        if snapshot and "termination" in snapshot:
            termination = snapshot["termination"]
        else:
            termination = (self.termination or "unfinished") if played else None
        try:
            result = score_messages(self.domain, tau2_task, messages, termination)
        except Exception as e:  # a conversation τ² cannot replay is a scoring failure
            return RewardBreakdown(0.0, error=f"tau2 scoring failed: {type(e).__name__}: {str(e)[:300]}")
        return RewardBreakdown(result.reward, result.parts)


__all__ = ["Tau2Env"]
