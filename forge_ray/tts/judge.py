"""The tournament's pairwise judge: which of two attempts at a task is correct?

    EngineJudge     a model on a forge_ray vLLM engine (the policy's own, or a judge folder's):
                    scores the one-letter continuations "A" and "B", so no free text is parsed
    EndpointJudge   any OpenAI-compatible endpoint (``forge-ray serve``, vLLM, a hosted API):
                    a greedy reply of a few tokens; B wins iff it starts with "B"

``make_judge`` builds one from ``forge-ray tts --judge`` (a model folder, or an ``http(s)://``
URL ending in ``/v1``). Both give ``for_task(task, trajs)``: the synchronous ``judge(a, b)``
the ``tournament`` selector calls from worker threads (ties: A).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from forge_ray.tts.selectors import Candidate
from forge_ray.types import Task, Trajectory

log = logging.getLogger(__name__)

SYSTEM = "You compare two attempts at the same task. Reply with the letter of the attempt that is correct: A or B."


def question(task: Task, attempt_a: str, attempt_b: str) -> list[dict[str, str]]:
    """The judge's chat: the task's messages, then both attempts."""
    asked = "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in task.messages)
    user = f"Task:\n{asked}\n\nAttempt A:\n{attempt_a}\n\nAttempt B:\n{attempt_b}\n\nWhich attempt is correct? Reply A or B."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def transcript(task: Task, traj: Trajectory) -> str:
    """What the attempt did after the task's messages, one ``role: content`` line per message."""
    return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in traj.messages[len(task.messages):] if isinstance(m, dict))


class PairJudge:
    """``compare(task, a, b) -> 0 | 1`` (1: b wins) on the event loop ``loop``; ``calls`` counts them."""

    loop: asyncio.AbstractEventLoop
    calls: int = 0

    async def compare(self, task: Task, a: Trajectory, b: Trajectory) -> int:
        raise NotImplementedError

    def for_task(self, task: Task, trajs: Sequence[Trajectory]) -> Callable[[Candidate, Candidate], int]:
        """A synchronous ``judge(a, b)`` for ``tournament``, run from a worker thread while the
        loop runs (the candidates' indices are ``trajs`` positions)."""
        cache: dict[tuple[int, int], int] = {}

        def judge(a: Candidate, b: Candidate) -> int:
            key = (a.index, b.index)
            if key not in cache:
                fut = asyncio.run_coroutine_threadsafe(self.compare(task, trajs[a.index], trajs[b.index]), self.loop)
                cache[key] = fut.result()
            return cache[key]

        return judge


class EngineJudge(PairJudge):
    """The attempt whose letter the judge model finds more likely wins (``VLLMEngine.score_prompt``);
    each transcript keeps its end (where the answer is) within half the context left."""

    def __init__(self, engine: Any, tokenizer: Any, max_len: int, loop: asyncio.AbstractEventLoop):
        self.engine, self.tokenizer, self.max_len, self.loop = engine, tokenizer, max_len, loop
        self.letters = [tokenizer.encode(x, add_special_tokens=False) for x in ("A", "B")]
        self.calls = 0

    def _render(self, task: Task, ta: str, tb: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(question(task, ta, tb), add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _tail(self, text: str, budget: int) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.decode(ids if len(ids) <= budget else ids[-budget:])

    def prompt(self, task: Task, a: Trajectory, b: Trajectory) -> list[int]:
        letter = max(map(len, self.letters))
        budget = max((self.max_len - len(self._render(task, "", "")) - letter - 2) // 2, 0)
        ids = self._render(task, self._tail(transcript(task, a), budget), self._tail(transcript(task, b), budget))
        return ids[-(self.max_len - letter - 1):]  # decoding may add a token or two

    async def compare(self, task: Task, a: Trajectory, b: Trajectory) -> int:
        ids = self.prompt(task, a, b)
        scores = []
        for letter in self.letters:
            logprobs, _ = await self.engine.score_prompt(ids + letter, 0)
            scores.append(sum(logprobs[len(ids):]))
        self.calls += 1
        return int(scores[1] > scores[0])


class EndpointJudge(PairJudge):
    """A judge served behind an OpenAI-compatible ``base_url`` (``.../v1``): greedy, ``max_tokens``
    of reply; B wins iff the reply starts with "B". Transcripts keep their last ``max_chars``."""

    def __init__(self, base_url: str, model: str, loop: asyncio.AbstractEventLoop, *, api_key: str | None = None,
                 max_chars: int = 4000, max_tokens: int = 4, timeout_s: float = 120.0):
        self.base_url, self.model, self.loop, self.api_key = base_url, model, loop, api_key
        self.max_chars, self.max_tokens, self.timeout_s = max_chars, max_tokens, timeout_s
        self.calls = 0

    async def compare(self, task: Task, a: Trajectory, b: Trajectory) -> int:
        from forge_ray.openai_http import chat

        ta, tb = (transcript(task, t)[-self.max_chars:] for t in (a, b))
        body = {"model": self.model, "messages": question(task, ta, tb), "temperature": 0.0, "max_tokens": self.max_tokens}
        reply = await asyncio.to_thread(chat, self.base_url, body, self.api_key, self.timeout_s)
        self.calls += 1
        return int(reply.lstrip(" *([\"'").upper().startswith("B"))


def is_endpoint(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


async def make_judge(spec: str, model: str, worker: Any, engine_kwargs: Callable[[str], dict], max_len: int) -> tuple[PairJudge, Any]:
    """The judge ``spec`` names, and the engine started for it (None when there is none of its
    own): an endpoint URL (``model``: its model name, "" = the first it lists); the policy's
    own folder (its engine); another folder (its engine, after the policy's is shut down)."""
    loop = asyncio.get_running_loop()
    if is_endpoint(spec):
        from forge_ray.openai_http import first_model

        name = model or await asyncio.to_thread(first_model, spec)
        log.info("tournament judge: %s at %s", name, spec)
        return EndpointJudge(spec, name, loop), None
    path = str(Path(spec).resolve())
    if path == worker.model_path:
        return EngineJudge(worker.engine, worker.tokenizer, max_len, loop), None
    from transformers import AutoTokenizer

    from forge_ray.rollout.engine import VLLMEngine

    worker.shutdown()  # free the policy's memory for the judge
    kw = engine_kwargs(path)
    engine = VLLMEngine(path, **kw)
    try:
        log.info("judge engine ready in %.1f s", await engine.start())
        return EngineJudge(engine, AutoTokenizer.from_pretrained(path), kw["max_model_len"], loop), engine
    except BaseException:
        engine.shutdown()
        raise
