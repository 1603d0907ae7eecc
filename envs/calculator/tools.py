"""The calculator's three tools: their JSON-schema specs and their checked execution.

Shared by the task generator (gold calls, expert results) and the environment (executing the
model's calls), so the numbers an expert shows and the numbers the env answers never differ.
"""
from __future__ import annotations

from typing import Any, Callable

from forge_ray.types import ToolCall

OPS: dict[str, Callable[[int, int], int]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
}

_DESCRIPTIONS = {
    "add": "Add two integers: returns a + b.",
    "sub": "Subtract two integers: returns a - b.",
    "mul": "Multiply two integers: returns a * b.",
}

# Legitimate intermediates stay below 99**4; the bound keeps a model from feeding ever larger
# products back in until str() of the result hits Python's int-to-str digit limit and raises.
MAX_ABS = 10**12

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": _DESCRIPTIONS[name],
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "description": "first operand"},
                    "b": {"type": "integer", "description": "second operand"},
                },
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    }
    for name in OPS
]


def _short(value: Any) -> str:
    """A repr short enough to echo back to the model."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_call(call: ToolCall) -> str | None:
    """Why ``call`` cannot run, as an observation text, or None when it is valid."""
    if call.name not in OPS:
        return f"error: unknown tool {_short(call.name)}; available tools: {', '.join(OPS)}"
    args = call.arguments
    if not isinstance(args, dict):
        return f"error: {call.name} arguments must be an object, got {_short(args)}"
    missing = [k for k in ("a", "b") if k not in args]
    if missing:
        return f"error: {call.name} is missing argument(s): {', '.join(missing)}"
    extra = sorted(str(k) for k in args if k not in ("a", "b"))
    if extra:
        return f"error: {call.name} got unexpected argument(s): {', '.join(_short(k) for k in extra)}"
    for key in ("a", "b"):
        value = args[key]
        # bool is an int subclass in Python, but JSON true/false is not an integer argument.
        if not isinstance(value, int) or isinstance(value, bool):
            return f"error: {call.name} argument '{key}' must be an integer, got {_short(value)}"
        if abs(value) > MAX_ABS:
            return f"error: {call.name} argument '{key}' is out of range (|value| <= 10^12)"
    return None


def execute(call: ToolCall) -> str:
    """The observation text for ``call``: its integer result, or an ``error: ...`` line.
    Never raises."""
    problem = check_call(call)
    if problem is not None:
        return problem
    return str(OPS[call.name](call.arguments["a"], call.arguments["b"]))
