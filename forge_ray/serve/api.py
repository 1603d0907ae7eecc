"""The OpenAI chat-completions subset ``forge-ray serve`` speaks, as pure functions.

Request JSON in, prompt text out; sampled ids out of the engine, response JSON (or
server-sent-event chunks) back. The prompt is rendered the way the agent loop renders an
episode's opening (the checkpoint's chat template, with ``tools`` handed to it as given), and
the completion is parsed by ``forge_ray.chat.parse_action``, the parser RL's environments
score: what the server answers is what the policy was trained to write. A malformed
``<tool_call>`` comes back as plain content. No Ray, no vLLM, no HTTP here.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from forge_ray.chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_action, render_tool_call
from forge_ray.types import ToolCall

DONE = "data: [DONE]\n\n"
MAX_N = 16
TTS_SELECTORS = ("first", "majority", "mean_logprob", "agent_confidence")  # need only what a sample carries
_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r".*?" + re.escape(TOOL_CALL_CLOSE), re.S)


class RequestError(ValueError):
    """A request the server refuses (HTTP 400); the message says why."""


@dataclass(frozen=True)
class TtsSpec:
    """``forge_tts``: sample ``n`` completions per choice and return the one ``selector`` picks
    (``k``: top-k logprobs per token, used by ``agent_confidence`` only)."""

    n: int
    selector: str = "majority"
    k: int = 20


@dataclass(frozen=True)
class ChatRequest:
    """The fields of a ``/v1/chat/completions`` body that the server acts on."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    parse_tools: bool = True  # False with tool_choice "none": the text comes back as content
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None  # None: up to the end of the context
    n: int = 1
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    seed: int | None = None
    tts: TtsSpec | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling of one engine request."""

    max_tokens: int
    temperature: float
    top_p: float
    stop_token_ids: list[int]
    seed: int | None = None
    logprobs: int = 0  # top-k logprobs per token besides the sampled one's (0: just the sampled)


@dataclass
class Completion:
    """One sampled completion: ids (with the stop token when it ended on one), the sampled
    tokens' logprobs, their top-k logprobs when asked for, and its decoded text (no stop token)."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    topk: list[list[float]] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


def _number(body: dict, key: str, kind: type, default: Any, low: float, high: float) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise RequestError(f"'{key}' must be {'an integer' if kind is int else 'a number'}, not {value!r}")
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be in [{low}, {high}], not {value!r}")
    return kind(value)


def _tts(spec: Any) -> TtsSpec | None:
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise RequestError("'forge_tts' must be an object like {\"n\": 4, \"selector\": \"majority\"}")
    selector = spec.get("selector", "majority")
    if selector not in TTS_SELECTORS:
        raise RequestError(f"forge_tts selector must be one of {list(TTS_SELECTORS)}, not {selector!r}")
    return TtsSpec(_number(spec, "n", int, 4, 1, 32), selector, _number(spec, "k", int, 20, 1, 20))


def parse_request(body: Any) -> ChatRequest:
    """Check a request body and keep what the server acts on. Unknown fields are ignored, as
    OpenAI-compatible servers do; known ones this server cannot honour raise ``RequestError``."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise RequestError("'messages' must be a non-empty list of {role, content} objects")
    tools = body.get("tools") or None
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise RequestError("'tools' must be a list of OpenAI function tool objects")
    choice = body.get("tool_choice", "auto")
    if choice not in (None, "auto", "none"):
        raise RequestError(f"tool_choice {choice!r} is not supported (only 'auto' and 'none')")
    if body.get("stop"):
        raise RequestError("'stop' strings are not supported: the turn ends at the template's end-of-turn token")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    tts = _tts(body.get("forge_tts"))
    return ChatRequest(
        messages=messages, tools=tools, parse_tools=choice != "none",
        temperature=_number(body, "temperature", float, 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", float, 1.0, 1e-6, 1.0),
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", int, None, 1, 1 << 30),
        n=_number(body, "n", int, 1, 1, MAX_N), stream=bool(body.get("stream", False)),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage", False)),
        seed=_number(body, "seed", int, None, -(1 << 63), (1 << 63) - 1), tts=tts)


def _text(content: Any) -> str:
    """A message's content as text (OpenAI also sends a list of ``{"type": "text"}`` parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise RequestError("only text content parts are supported")
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError(f"message content must be a string or a list of text parts, not {type(content).__name__}")


def _call(call: Any) -> ToolCall:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise RequestError("an assistant tool_call needs function.name")
    args = fn.get("arguments") or "{}"
    try:
        args = json.loads(args) if isinstance(args, str) else args
    except ValueError as e:
        raise RequestError(f"tool_call {fn['name']!r}: arguments are not JSON: {e}") from None
    if not isinstance(args, dict):
        raise RequestError(f"tool_call {fn['name']!r}: arguments must be a JSON object")
    return ToolCall(fn["name"], args)


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI messages as the chat template's ``{role, content}`` turns: an assistant's
    ``tool_calls`` become ``<tool_call>`` blocks after its content, one a line, as
    ``render_tool_call`` writes them (the layout the SFT experts use)."""
    out = []
    for m in messages:
        content = _text(m.get("content"))
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "\n".join(render_tool_call(_call(c)) for c in m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": str(m["role"]), "content": content})
    return out


def render_prompt(tokenizer: Any, req: ChatRequest) -> str:
    """The prompt text, rendered as the agent loop renders an episode's opening. A template
    that refuses the conversation (``raise_exception`` in it, a bad role) is a ``RequestError``."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(template_messages(req.messages), tools=req.tools or None,
                                             add_generation_prompt=True, tokenize=False)
    except TemplateError as e:
        raise RequestError(f"the chat template refused the messages: {e}") from None


def sampling(req: ChatRequest, prompt_len: int, max_model_len: int, stop_token_ids: list[int],
             choice: int = 0, logprobs: int = 0) -> Sampling:
    """Engine sampling of choice number ``choice`` (seeded ``seed + choice``, so that the n
    choices of a seeded request differ). The completion is capped at the end of the context."""
    room = max_model_len - prompt_len
    if room < 1:
        raise RequestError(f"the prompt is {prompt_len} tokens; this server's context is {max_model_len}")
    seed = None if req.seed is None else req.seed + choice
    return Sampling(min(req.max_tokens or room, room), req.temperature, req.top_p, stop_token_ids, seed, logprobs)


def split_tool_calls(text: str, parse_tools: bool = True) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of an assistant turn. With well-formed ``<tool_call>`` blocks the
    content is the text around them (None when only whitespace is left); a malformed call, or
    none, leaves the whole text as content."""
    action = parse_action(text) if parse_tools else None
    if action is None or action.parse_error or not action.tool_calls:
        return text, []
    rest = strip_calls(text)
    return (rest if rest.strip() else None), action.tool_calls


def strip_calls(text: str) -> str:
    """``text`` without its ``<tool_call>`` blocks."""
    return _CALL_RE.sub("", text)


def tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """One call in OpenAI's shape (arguments as a JSON string); ``index`` for stream deltas."""
    out: dict[str, Any] = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                           "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
    return out if index is None else {"index": index, **out}


def finish_reason(reason: str | None, calls: list[ToolCall]) -> str:
    """OpenAI's finish reason: "tool_calls" for a turn that ended (was not cut off) with calls."""
    reason = reason or "length"
    return "tool_calls" if calls and reason != "length" else reason


def choice_json(index: int, completion: Completion, parse_tools: bool) -> dict[str, Any]:
    """One entry of a response's ``choices``."""
    content, calls = split_tool_calls(completion.text, parse_tools)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [tool_call_json(c) for c in calls]
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason(completion.finish_reason, calls)}


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completions: list[Completion]) -> dict[str, int]:
    sampled = sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": sampled, "total_tokens": prompt_tokens + sampled}


def response_json(rid: str, model: str, choices: list[dict], usage_: dict[str, int], created: int | None = None,
                  **extra: Any) -> dict[str, Any]:
    """A ``chat.completion`` object; ``extra`` adds fields (e.g. ``forge_tts``)."""
    return {"id": rid, "object": "chat.completion", "created": created or int(time.time()), "model": model,
            "choices": choices, "usage": usage_, **extra}


def models_json(model: str, created: int, root: str) -> dict[str, Any]:
    """``GET /v1/models``: the one served model."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "forge_ray", "root": root}]}


def error_json(message: str, kind: str = "invalid_request_error", code: int = 400) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def tts_pick(spec: TtsSpec, completions: list[Completion], parse_tools: bool) -> tuple[int, dict[str, Any]]:
    """The completion ``spec.selector`` picks among ``completions`` (``forge_ray.tts.selectors``)
    and what to report about it. A sample's answer is its normalised tool calls when it made
    well-formed ones, else its stripped text; ``agent_confidence`` reads the top-k logprobs."""
    from forge_ray.tts.selectors import Candidate, normalise_calls, select

    cands = []
    for i, c in enumerate(completions):
        _, calls = split_tool_calls(c.text, parse_tools)
        answer = normalise_calls(calls) if calls else c.text.strip()
        cands.append(Candidate(index=i, answer=answer, logprobs=list(c.logprobs), topk=list(c.topk), agent_tokens=len(c.token_ids)))
    kw = {"k": spec.k} if spec.selector == "agent_confidence" else {}
    chosen = select(spec.selector, cands, **kw)
    votes = sum(1 for c in cands if c.answer == cands[chosen].answer)
    return chosen, {"n": len(cands), "selector": spec.selector, "chosen": chosen, "votes": votes,
                    "distinct_answers": len({c.answer for c in cands})}
