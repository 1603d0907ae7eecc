"""The function-calling environment: one assistant turn, its tool calls checked by BFCL's
official AST checker.

Episodes are single-turn. ``step`` parses the turn (Hermes ``<tool_call>`` JSON or Python call
syntax, see ``parsing.py``), records the calls or the parse error, and ends the episode; no
tool is executed. ``score`` re-parses the last assistant turn and asks the checker.

Reward parts:

- ``correct``: BFCL's verdict. For the AST categories, the calls match the possible answers
  (a malformed turn has no decodable calls and fails); for ``irrelevance``, no decodable call
  was made (a plain-text answer, an empty call list, or -- as in BFCL -- an undecodable one).
  This is the figure ``forge-ray eval bfcl`` reports as accuracy.
- ``format``: the turn parsed without error (prose counts as well formed).
- ``calls``: how many calls were decoded (informational).

``total = format * correct``, so RL never rewards a malformed call, even on irrelevance tasks.
"""
from __future__ import annotations

from typing import Any

from envs.function_calling.checker import check_calls
from envs.function_calling.parsing import parse_calls
from forge_ray.env.protocol import EnvBase
from forge_ray.types import Action, RewardBreakdown, StepResult, Task


def _last_assistant(messages: Any) -> Any:
    if not isinstance(messages, (list, tuple)):
        return None
    turns = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    return turns[-1] if turns else None


class FunctionCallingEnv(EnvBase):
    """Env of ``function_calling`` tasks (BFCL or synthetic; see ``tasks.py``)."""

    def __init__(self) -> None:
        self.task: Task | None = None
        self.action: Action | None = None

    def open(self, task: Task) -> Task:
        self.task = task
        self.action = None
        return task

    def step(self, action: Action) -> StepResult:
        """Record the turn's calls (re-parsed, so Python call syntax counts too) and end."""
        self.action = parse_calls(action.text)
        info = {"calls": len(self.action.tool_calls)}
        if self.action.parse_error is not None:
            info["parse_error"] = self.action.parse_error
        return StepResult(messages=[], done=True, info=info)

    def score(self, task: Task, messages: list[dict], snapshot: dict | None = None) -> RewardBreakdown:
        """BFCL verdict of the last assistant turn (see the module docstring). A task without
        usable gold data sets ``error`` (the trajectory is masked, not punished)."""
        try:
            category = str(task.meta["category"])
            functions = list(task.answer["functions"])
            possible = list(task.answer["possible_answers"])
        except Exception as e:  # noqa: BLE001 - bad gold data is a scoring failure, not a 0
            return RewardBreakdown(0.0, {"format": 0.0, "correct": 0.0, "calls": 0.0}, error=f"task {task.id} lacks gold data: {e!r}")
        text = _last_assistant(messages)
        # No assistant turn (the agent loop drops a turn cut off by the token budget): no call.
        action = parse_calls(text) if text is not None else Action("", [], "no assistant turn")
        calls = [] if action.parse_error else action.tool_calls
        verdict = check_calls(calls, functions, possible, category)
        parts = {"format": float(action.parse_error is None), "correct": float(verdict.valid), "calls": float(len(calls))}
        return RewardBreakdown(parts["format"] * parts["correct"], parts, error=None)

    def verdict(self, task: Task, text: str) -> dict[str, Any]:
        """Why ``text`` scores as it does: for logs and ``--details`` files."""
        action = parse_calls(text)
        calls = [] if action.parse_error else action.tool_calls
        result = check_calls(calls, list(task.answer["functions"]), list(task.answer["possible_answers"]), str(task.meta["category"]))
        return {"valid": result.valid, "error": result.error, "error_type": result.error_type, "parse_error": action.parse_error,
                "calls": [{"name": c.name, "arguments": c.arguments} for c in calls]}
