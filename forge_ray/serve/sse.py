"""Streaming: sampled ids to text deltas, text deltas to OpenAI ``chat.completion.chunk`` events.

``TextDecoder`` turns the ids an engine streams into text increments (a multi-byte character
split across tokens is held back until complete). ``ToolStream`` sends content as it arrives
but holds it back from the first ``<tool_call>`` on: whether that is a call or plain text is
only known at the end of the turn, when ``forge_ray.chat.parse_action`` decides, exactly as it
does for a non-streamed response. Pure; no HTTP here.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

from forge_ray.chat import TOOL_CALL_OPEN
from forge_ray.serve.api import DONE, finish_reason, split_tool_calls, strip_calls, tool_call_json


class TextDecoder:
    """Incremental detokenisation of one completion; the stop tokens are not text."""

    def __init__(self, tokenizer: Any, stop_token_ids: list[int]):
        self.tokenizer = tokenizer
        self.stop = set(stop_token_ids)
        self.ids: list[int] = []
        self.text = ""  # what has been handed out so far

    def push(self, token_ids: list[int]) -> str:
        """The new text that ``token_ids`` complete ("" while a character is still partial)."""
        self.ids += [t for t in token_ids if t not in self.stop]
        full = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if full.endswith("\ufffd") or not full.startswith(self.text):
            return ""  # a split UTF-8 sequence (or a retokenised prefix): wait for more ids
        delta, self.text = full[len(self.text):], full
        return delta

    def flush(self) -> str:
        """Whatever is left at the end of the completion (a dangling partial character too)."""
        full = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        delta = full[len(self.text):] if full.startswith(self.text) else ""
        self.text = full
        return delta


class ToolStream:
    """Content deltas of one choice. Without tools every delta goes out as it comes; with
    tools, text from the first ``<tool_call>`` on (and a trailing prefix of it) waits for
    ``finish``, which sends it either as ``tool_calls`` or, when malformed, as content."""

    def __init__(self, parse_tools: bool):
        self.parse_tools = parse_tools
        self.text = ""
        self.sent = 0  # characters of ``text`` already sent as content
        self.held = False  # a <tool_call> opened: nothing more goes out before the end

    def push(self, delta: str) -> str:
        self.text += delta
        if not self.parse_tools:
            self.sent = len(self.text)
            return delta
        if self.held:
            return ""
        at = self.text.find(TOOL_CALL_OPEN, self.sent)
        if at >= 0:
            self.held = True
            end = at
        else:  # keep back a tail that may be the start of "<tool_call>"
            keep = next((k for k in range(len(TOOL_CALL_OPEN) - 1, 0, -1) if self.text.endswith(TOOL_CALL_OPEN[:k])), 0)
            end = len(self.text) - keep
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out

    def finish(self, reason: str | None) -> tuple[list[dict[str, Any]], str]:
        """The closing deltas (rest of the content, or the tool calls) and the finish reason."""
        _, calls = split_tool_calls(self.text, self.parse_tools)
        rest = self.text[self.sent:]
        deltas: list[dict[str, Any]] = []
        if calls:
            content = strip_calls(rest)
            if content and (self.text[:self.sent] + content).strip():
                deltas.append({"content": content})
            deltas.append({"tool_calls": [tool_call_json(c, i) for i, c in enumerate(calls)]})
        elif rest:
            deltas.append({"content": rest})
        self.sent = len(self.text)
        return deltas, finish_reason(reason, calls)


def chunk_json(rid: str, model: str, created: int, index: int, delta: dict[str, Any],
               reason: str | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}]}


def usage_chunk(rid: str, model: str, created: int, usage: dict[str, int]) -> dict[str, Any]:
    """The last chunk of a stream with ``stream_options.include_usage``: no choices, the usage."""
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage}


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(obj)}\n\n"


def response_chunks(response: dict[str, Any], include_usage: bool = False) -> Iterator[str]:
    """A finished ``chat.completion`` as a stream: per choice, the role, its content and tool
    calls in one delta, the finish reason; then ``[DONE]`` (what a streamed ``forge_tts``
    request gets: the choice is known only once every sample is in)."""
    rid, model, created = response["id"], response["model"], response.get("created", int(time.time()))
    for c in response["choices"]:
        yield sse(chunk_json(rid, model, created, c["index"], {"role": "assistant", "content": ""}))
        msg = c["message"]
        delta: dict[str, Any] = {}
        if msg.get("content"):
            delta["content"] = msg["content"]
        if msg.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]
        if delta:
            yield sse(chunk_json(rid, model, created, c["index"], delta))
        yield sse(chunk_json(rid, model, created, c["index"], {}, c["finish_reason"]))
    if include_usage:
        yield sse(usage_chunk(rid, model, created, response["usage"]))
    yield DONE
