"""Tool calls out of an assistant turn, in either of the two formats models use.

1. forge_ray's chat format: Hermes-style ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
   blocks, parsed by ``forge_ray.chat.parse_action`` (the parser RL rollouts use).
2. Python call syntax, as BFCL's prompting models answer: ``[func(a=1, b="x"), mod.other(c=2)]``,
   a bare ``func(a=1)``, optionally inside a ```` ```python ```` fence. It is read with ``ast``
   and ``ast.literal_eval``; nothing is ever evaluated. Keyword arguments only; an argument
   that is a bare name (``unit=meters``) becomes the string ``"meters"``, as BFCL's decoder
   treats variables.

A turn with ``<tool_call>`` tags is read as format 1; otherwise a turn that starts like a call
list (``[name(``, even if cut off) or is one bare call is read as format 2; anything else is
prose (no calls). Malformed calls give an ``Action`` with
``parse_error`` set and never raise.
"""
from __future__ import annotations

import ast
import re
from typing import Any

from forge_ray.chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_action
from forge_ray.types import Action, ToolCall

_FENCE = re.compile(r"^```[A-Za-z_]*[ \t]*\n?(.*?)\n?```$", re.S)
_BARE_CALL = re.compile(r"^[A-Za-z_][\w.]*\(")
_LIST_OF_CALLS = re.compile(r"^\[\s*[A-Za-z_][\w.]*\s*\(")  # "[name(" : a call list, even if cut off
MAX_PYTHON_CHARS = 20_000  # longer "call lists" are not parsed (ast recursion and memory)


class _CallSyntaxError(ValueError):
    pass


def parse_calls(text: Any) -> Action:
    """The tool calls of one assistant turn (see the module docstring). Never raises."""
    if not isinstance(text, str):
        return Action(str(text), [], f"assistant content is not text: {type(text).__name__}")
    if TOOL_CALL_OPEN in text or TOOL_CALL_CLOSE in text:
        try:
            return parse_action(text)
        except Exception as e:  # noqa: BLE001 - e.g. ints past Python's digit limit
            return Action(text, [], f"tool call could not be parsed: {type(e).__name__}: {str(e)[:120]}")
    source = python_source(text)
    if source is None:
        return Action(text, [])
    try:
        return Action(text, python_calls(source))
    except _CallSyntaxError as e:
        return Action(text, [], str(e))


def python_source(text: str) -> str | None:
    """The call-list source of ``text`` when it looks like one (fences stripped), else None."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if _LIST_OF_CALLS.match(body) or body == "[]":
        return body
    if _BARE_CALL.match(body) and body.endswith(")"):
        return body
    return None


def python_calls(source: str) -> list[ToolCall]:
    """Calls of a Python call list or single call; raises ``_CallSyntaxError`` with a message
    fit for the model otherwise."""
    if len(source) > MAX_PYTHON_CHARS:
        raise _CallSyntaxError(f"call list too long ({len(source)} characters)")
    try:
        tree = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise _CallSyntaxError(f"tool calls are not valid Python call syntax: {str(e)[:120]} in {source[:200]!r}") from None
    nodes = tree.elts if isinstance(tree, (ast.List, ast.Tuple)) else [tree]
    return [_call(node) for node in nodes]


def _call(node: ast.AST) -> ToolCall:
    if not isinstance(node, ast.Call):
        raise _CallSyntaxError(f"expected a function call, got {_src(node)!r}")
    name = _dotted(node.func)
    if name is None:
        raise _CallSyntaxError(f"function name must be a plain or dotted name: {_src(node.func)!r}")
    if node.args:
        raise _CallSyntaxError(f"{name}: pass arguments by keyword (name=value), not by position")
    arguments: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise _CallSyntaxError(f"{name}: **kwargs is not supported")
        if kw.arg in arguments:
            raise _CallSyntaxError(f"{name}: argument {kw.arg!r} is given twice")
        arguments[kw.arg] = _value(name, kw.arg, kw.value)
    return ToolCall(name, arguments)


def _value(func: str, arg: str, node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        pass
    dotted = _dotted(node)
    if dotted is not None:  # a variable: BFCL reads it as its name
        return dotted
    raise _CallSyntaxError(f"{func}: argument {arg!r} must be a literal value, got {_src(node)!r}")


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _src(node: ast.AST) -> str:
    try:
        return ast.unparse(node)[:80]
    except Exception:  # noqa: BLE001 - only for messages
        return type(node).__name__
