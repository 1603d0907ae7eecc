"""The calculator environment: executes add/sub/mul tool calls and scores the final answer.

An episode is a run of tool turns ended by an assistant turn without tool calls, which is the
final answer. Anything malformed the model does (bad JSON, unknown tool, bad arguments)
becomes an ``error: ...`` observation it can recover from; nothing here raises on model output.

The reward is the outcome reward of Klear-AgentForge (Eq. 7): 1 iff the conversation is
well formatted and the final answer is right, else 0.
"""
from __future__ import annotations

import asyncio
import math
import random
import re
from typing import Any

from envs.calculator.tools import check_call, execute
from forge_ray.reward.stepwise import one_call_per_turn, stepwise_rewards
from forge_ray.chat import TOOL_CALL_OPEN, parse_action
from forge_ray.env.protocol import EnvBase
from forge_ray.types import Action, RewardBreakdown, StepResult, Task

# One "Answer: N" line; an optional trailing period is tolerated. The digit cap keeps int()
# away from Python's int-to-str digit limit (an absurd line just fails to match).
_ANSWER_LINE = re.compile(r"^\s*Answer:\s*(-?\d{1,40})\s*\.?\s*$")
_ANSWER_PREFIX = re.compile(r"^\s*Answer:")


def _tool_message(content: str) -> dict[str, Any]:
    return {"role": "tool", "content": content}


def _final_answer(text: str) -> int | None:
    """The integer of the single ``Answer: N`` line in ``text``; None if there is not exactly
    one line starting with ``Answer:`` or that line is not ``Answer: <int>``."""
    lines = [line for line in text.splitlines() if _ANSWER_PREFIX.match(line)]
    if len(lines) != 1:
        return None
    match = _ANSWER_LINE.match(lines[0])
    return int(match.group(1)) if match else None


def _safe_parse(text: Any) -> Action | None:
    """``parse_action`` that answers None instead of raising (non-string content, or JSON
    integers past Python's digit limit, which json raises on as a plain ValueError)."""
    if not isinstance(text, str):
        return None
    try:
        return parse_action(text)
    except Exception:  # noqa: BLE001 - scoring must never crash on model output
        return None


class CalculatorEnv(EnvBase):
    """Env for ``calculator`` tasks.

    ``max_tool_turns`` is how many non-final turns (tool calls or malformed calls) an episode
    may have: they all execute, and the episode still gets its answer turn after them. A turn
    past the budget that is not a final answer is not executed; it ends the episode with
    ``info={"truncated": True}``.
    """

    def __init__(self, max_tool_turns: int = 6, tool_latency_s: float = 0.0, tool_latency_sigma: float = 0.0, seed: int | None = None):
        if max_tool_turns < 0:
            raise ValueError(f"max_tool_turns must be >= 0, got {max_tool_turns}")
        if tool_latency_s < 0 or tool_latency_sigma < 0:
            raise ValueError(f"tool_latency_s and tool_latency_sigma must be >= 0, got {tool_latency_s}, {tool_latency_sigma}")
        self.max_tool_turns = max_tool_turns
        self.latency = (tool_latency_s, tool_latency_sigma)
        self.rng = random.Random(seed)
        self.task: Task | None = None
        self.tool_turns = 0

    async def astep(self, action: Action) -> StepResult:
        """``step``, after the time a real tool would take: log-normal with median
        ``tool_latency_s`` and shape ``tool_latency_sigma`` (heavy-tailed, as test runs and
        sandbox calls are); no wait when ``tool_latency_s`` is 0 or the turn runs no tool."""
        median, sigma = self.latency
        if median > 0 and action.tool_calls:
            await asyncio.sleep(median * math.exp(sigma * self.rng.gauss(0.0, 1.0)))
        return self.step(action)

    def open(self, task: Task) -> Task:
        self.task = task
        self.tool_turns = 0
        return task

    def step(self, action: Action) -> StepResult:
        if action.parse_error is None and not action.tool_calls:
            return StepResult(messages=[], done=True, info={"tool_turns": self.tool_turns})
        if self.tool_turns >= self.max_tool_turns:
            return StepResult(messages=[], done=True,
                              info={"truncated": True, "tool_turns": self.tool_turns})
        self.tool_turns += 1
        info = {"tool_turns": self.tool_turns}
        if action.parse_error is not None:
            # The calls parsed before the malformed one are not run: the model retries the turn.
            return StepResult([_tool_message(f"error: {action.parse_error}")], False, info)
        return StepResult([_tool_message(execute(call)) for call in action.tool_calls], False, info)

    def score(self, task: Task, messages: list[dict], snapshot: dict | None = None) -> RewardBreakdown:
        """Outcome reward: ``total = format * correct``; ``tool_calls`` (valid calls made) is
        informational. Malformed messages lower the score; a task without a usable gold
        answer sets ``error`` (the trajectory is then masked, not punished)."""
        parts = {"format": 0.0, "correct": 0.0, "tool_calls": 0.0}
        try:
            gold = int(task.answer["value"])
        except Exception as e:  # noqa: BLE001 - bad gold data is a scoring failure, not a 0
            return RewardBreakdown(0.0, parts, error=f"task has no integer answer['value']: {e!r}")
        if not isinstance(messages, (list, tuple)):
            messages = []
        turns = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
        actions = [_safe_parse(text) for text in turns]
        parts["tool_calls"] = float(sum(
            1 for a in actions if a is not None for c in a.tool_calls if check_call(c) is None))
        if not actions:
            return RewardBreakdown(0.0, parts)
        last, last_text = actions[-1], turns[-1]
        answer = _final_answer(last_text) if isinstance(last_text, str) else None
        well_formed = all(a is not None and a.parse_error is None for a in actions)
        final_is_answer = (last is not None and not last.tool_calls
                           and TOOL_CALL_OPEN not in last_text and answer is not None)
        parts["format"] = float(well_formed and final_is_answer)
        parts["correct"] = float(answer is not None and answer == gold)
        total = parts["format"] * parts["correct"]
        return RewardBreakdown(total, parts, per_turn=_turn_rewards(actions, task.answer.get("calls", []), total))


def _turn_rewards(actions: list, gold_calls: list, outcome: float) -> list[float]:
    """Step-wise reward (Klear-AgentForge Eq. 8, on-policy; ``forge_ray.reward.stepwise``):
    turn k earns 1 when it makes exactly the k-th gold call (name and every argument) and every
    earlier turn earned 1; the turn after the last gold call earns the outcome reward."""
    calls = [a.tool_calls if a is not None and a.parse_error is None else [] for a in actions]
    return stepwise_rewards(one_call_per_turn(gold_calls), calls, outcome)
