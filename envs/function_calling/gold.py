"""Gold answers as text: the possible answers of a task rendered in forge_ray's chat format.

Both BFCL tasks and synthetic tasks carry BFCL-style possible answers,
``[{func_name: {param: [allowed values...]}}, ...]``, where ``""`` among the allowed values
marks an argument that may be left out. The gold call takes the first allowed value of each
argument and leaves the argument out when that value is ``""``; dictionary values (and lists
of dictionaries) hold allowed values per key, resolved the same way, recursively.

For BFCL's own tasks, ``forge_ray.eval.bfcl.gold_answer`` first moves ``""`` behind the other
allowed values of required parameters (``simple_python_200`` lists ``""`` first for the required
``fuel_efficiency``). One non-live entry still cannot be answered, whatever the model:
``parallel_multiple_26`` names a ``type`` parameter the function does not have (199/200).
"""
from __future__ import annotations

from typing import Any

from forge_ray.chat import render_tool_call
from forge_ray.types import Task, ToolCall

NO_CALL_TEXT = "None of the available functions can do what is asked, so I will not call any of them."


def _choose(allowed: Any) -> tuple[bool, Any]:
    """``(present, value)`` for one argument's list of allowed values."""
    if not isinstance(allowed, list) or not allowed:
        return True, allowed
    return (allowed[0] != ""), _concrete(allowed[0])


def _concrete(option: Any) -> Any:
    """An allowed value with nested allowed-value lists resolved (dicts, lists of dicts)."""
    if isinstance(option, dict):
        chosen = {k: _choose(v) for k, v in option.items()}
        return {k: v for k, (present, v) in chosen.items() if present}
    if isinstance(option, list):
        return [_concrete(x) if isinstance(x, dict) else x for x in option]
    return option


def gold_calls(possible_answers: list[dict[str, Any]]) -> list[ToolCall]:
    """One call per possible-answer entry (see the module docstring)."""
    calls = []
    for entry in possible_answers:
        ((name, params),) = entry.items()
        calls.append(ToolCall(name, _concrete(params)))
    return calls


def gold_text(task: Task) -> str:
    """The assistant turn that answers ``task`` correctly: its gold calls as ``<tool_call>``
    blocks, one per line, or a plain refusal when no function fits."""
    calls = gold_calls(task.answer.get("possible_answers") or [])
    if task.meta.get("category") == "irrelevance" or not calls:
        return NO_CALL_TEXT
    return "\n".join(render_tool_call(c) for c in calls)
