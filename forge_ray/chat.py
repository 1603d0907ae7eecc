"""The chat format: ChatML turns with Hermes-style ``<tool_call>`` JSON.

Two jobs: parse an assistant turn into an ``Action`` (malformed calls become a parse error,
never an exception), and render environment observations as the text that follows an
assistant turn. ``TOOL_CHAT_TEMPLATE`` is the Jinja template that renders a whole conversation
the same way, for tokenizers (the tiny model ships it) and for serving; a unit test holds the
two in agreement so SFT data, RL rollouts and the template never drift apart.
"""
from __future__ import annotations

import json
import re

from forge_ray.types import Action, ToolCall

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"

_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S)

TOOL_CHAT_TEMPLATE = (
    # No whitespace control: every newline below is one the rendered text contains.
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n{% endif %}"
    "# Tools\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "</tools>\n"
    'Call a tool with <tool_call>{"name": NAME, "arguments": ARGS}</tool_call>.<|im_end|>\n'
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' %}"
    "{% elif message.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user\n"
    "{% else %}\n{% endif %}"
    "<tool_response>\n{{ message.content }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def parse_action(text: str) -> Action:
    """Parse an assistant turn. Every ``<tool_call>`` block must hold
    ``{"name": str, "arguments": object}``; anything else sets ``parse_error``."""
    calls: list[ToolCall] = []
    for raw in _CALL_RE.findall(text):
        try:
            obj = json.loads(raw)
        except ValueError as e:  # JSONDecodeError, and ints past Python's digit limit
            return Action(text, calls, f"tool call is not valid JSON: {str(e)[:120]} in {raw.strip()[:200]!r}")
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return Action(text, calls, f"tool call needs a string 'name': {raw.strip()[:200]!r}")
        args = obj.get("arguments", {})
        if not isinstance(args, dict):
            return Action(text, calls, f"tool call 'arguments' must be an object: {raw.strip()[:200]!r}")
        calls.append(ToolCall(obj["name"], args))
    if text.count(TOOL_CALL_OPEN) != text.count(TOOL_CALL_CLOSE):
        return Action(text, calls, "unbalanced <tool_call> tags")
    return Action(text, calls)


def render_tool_call(call: ToolCall) -> str:
    """The canonical text of one call, as the scripted experts write it."""
    return TOOL_CALL_OPEN + json.dumps({"name": call.name, "arguments": call.arguments}) + TOOL_CALL_CLOSE


def render_observation(messages: list[dict]) -> str:
    """Text that follows an assistant turn's ``<|im_end|>``: the observation turns, then the
    opening of the next assistant turn. Consecutive tool results share one user turn; a user
    message (a simulated user's reply) is a plain user turn. Matches ``TOOL_CHAT_TEMPLATE``
    byte for byte."""
    turns: list[str] = []
    results: list[str] = []
    for m in [*messages, None]:
        if m is not None and m["role"] == "tool":
            results.append(f"<tool_response>\n{m['content']}\n</tool_response>")
            continue
        if results:
            turns.append(f"{IM_START}user\n" + "\n".join(results) + f"{IM_END}\n")
            results = []
        if m is not None:
            turns.append(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n")
    return "\n" + "".join(turns) + f"{IM_START}assistant\n"
