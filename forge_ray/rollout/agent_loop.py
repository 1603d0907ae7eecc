"""The multi-turn agent loop: one episode of model turns and environment observations.

Token-in/token-out: the prompt is tokenized once with the chat template; every assistant turn
is appended exactly as the engine sampled it (ids and logprobs); observations are appended as
the ids of their rendered text. The history is never re-tokenized, so what the learner trains
on is exactly what the engine saw. ``loss_mask`` is 1 on sampled ids and 0 elsewhere.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

from forge_ray.chat import parse_action, render_observation
from forge_ray.env.adapters import AsyncEnv
from forge_ray.types import Generation, RewardBreakdown, Status, Task, Trajectory, Turn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeSpec:
    """Limits and sampling of one episode."""

    max_new_tokens: int = 64  # tokens per assistant turn
    max_context: int = 640  # tokens of the whole episode
    temperature: float = 1.0
    top_p: float = 1.0
    timeout_s: float = 120.0  # wall-clock limit of the episode
    topk: int = 0  # > 0: ask the engine for each sampled token's top-k logprobs (Trajectory.topk; test-time selection)


Generate = Callable[..., Awaitable[Generation]]


async def run_episode(
    generate: Generate,
    env: AsyncEnv,
    task: Task,
    tokenizer: Any,
    spec: EpisodeSpec,
    *,
    group_id: str,
    sample_index: int,
    seed: int | None = None,
) -> Trajectory:
    """Play ``task`` to the end: open the env, play, score in the episode's own state, close.
    Returns the scored trajectory. Never raises for environment faults: they end the episode
    with ``Status.ENV_FAILURE``. The time limit starts once the env is open (setting up a
    workspace is not the policy's time)."""
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    traj = Trajectory(task.id, group_id, sample_index, 0, [], [], [], [], Status.OK, list(task.messages))
    t_open = time.monotonic()
    try:
        t0 = time.monotonic()
        task = await env.open(task)
        traj.env_seconds += time.monotonic() - t0
        _start(traj, tokenizer, task)
        traj.status = await _play(generate, env, tokenizer, spec, traj, stop_id, time.monotonic() + spec.timeout_s, seed)
    except asyncio.TimeoutError:
        traj.status = Status.TIMED_OUT
    except Exception as e:  # an environment fault is data, not a crash
        traj.status = Status.ENV_FAILURE
        traj.reward = RewardBreakdown(0.0, error=f"{type(e).__name__}: {e}")
    try:
        if traj.reward is None:
            t0 = time.monotonic()
            traj.reward = await _score(env, task, traj)
            traj.score_seconds = time.monotonic() - t0
    finally:
        await _close(env)
        traj.wall_seconds = time.monotonic() - t_open
    return traj


def _start(traj: Trajectory, tokenizer: Any, task: Task) -> None:
    """Lay the opened task's prompt into ``traj`` (an env may have added opening messages)."""
    prompt = tokenizer.apply_chat_template(task.messages, tools=task.tools or None, add_generation_prompt=True, tokenize=False)
    traj.tokens = tokenizer.encode(prompt, add_special_tokens=False)
    traj.prompt_len = len(traj.tokens)
    traj.logprobs, traj.loss_mask = [0.0] * len(traj.tokens), [0] * len(traj.tokens)
    traj.messages = list(task.messages)


async def _close(env: AsyncEnv) -> None:
    try:
        await env.close()
    except Exception as e:  # noqa: BLE001 - the trajectory is done; a leak is logged, not raised
        log.warning("closing the environment failed: %s: %s", type(e).__name__, e)


async def _play(generate, env, tokenizer, spec, traj, stop_id, deadline, seed) -> Status:
    turn = 0
    while True:
        budget = min(spec.max_new_tokens, spec.max_context - len(traj.tokens))
        if budget <= 0:
            return Status.TRUNCATED
        start = len(traj.tokens)
        gen = await _sample_turn(generate, spec, traj, budget, stop_id, deadline, None if seed is None else seed + turn)
        if gen.finish_reason != "stop":
            return Status.TRUNCATED  # the turn was cut off by the token budget
        ids = traj.tokens[start:]
        ids = ids[:-1] if ids and ids[-1] == stop_id else ids
        text = tokenizer.decode(ids, skip_special_tokens=False)
        traj.messages.append({"role": "assistant", "content": text})
        t0 = time.monotonic()
        result = await asyncio.wait_for(env.step(parse_action(text)), timeout=max(deadline - t0, 0.001))
        traj.env_seconds += time.monotonic() - t0
        if result.info.get("truncated"):
            return Status.TRUNCATED
        if result.done:
            return Status.OK
        obs = tokenizer.encode(render_observation(result.messages), add_special_tokens=False)
        traj.messages += result.messages
        traj.tokens += obs
        traj.logprobs += [0.0] * len(obs)
        traj.loss_mask += [0] * len(obs)
        turn += 1


async def _sample_turn(generate, spec, traj, budget, stop_id, deadline, seed) -> Any:
    """Sample one assistant turn into ``traj`` (tokens, logprobs, loss mask, a ``Turn``); returns
    the last engine call. An engine call aborted by a weight update (``finish_reason ==
    "abort"``, an interruptible engine) keeps what it sampled, with that version's logprobs,
    and the turn goes on from there under the new weights: ``Turn.version`` is its first
    token's version, ``Turn.resumed`` where each later version took over."""
    start, segments = len(traj.tokens), []  # (position, version) where each engine call's tokens begin
    while True:
        t0 = time.monotonic()
        extra = {"topk": spec.topk} if spec.topk > 0 else {}  # only when asked: other generate callables lack it
        gen = await asyncio.wait_for(
            generate(traj.tokens, max_tokens=budget - (len(traj.tokens) - start), temperature=spec.temperature,
                     top_p=spec.top_p, stop_token_ids=[stop_id], seed=seed, **extra),
            timeout=max(deadline - t0, 0.001),
        )
        traj.gen_seconds += time.monotonic() - t0
        if gen.token_ids:
            segments.append((len(traj.tokens), gen.version))
        traj.tokens += gen.token_ids
        traj.logprobs += gen.logprobs
        traj.loss_mask += [1] * len(gen.token_ids)
        if spec.topk > 0:
            traj.topk += gen.topk
        if gen.finish_reason != "abort" or len(traj.tokens) - start >= budget:
            finish = "length" if gen.finish_reason == "abort" else gen.finish_reason
            version = segments[0][1] if segments else gen.version
            traj.turns.append(Turn(start, len(traj.tokens), version, finish, tuple(segments[1:])))
            return replace(gen, finish_reason=finish)


async def _score(env: AsyncEnv, task: Task, traj: Trajectory) -> RewardBreakdown:
    try:
        return await env.score(task, traj.messages)
    except Exception as e:  # a failure to score is recorded, never a silent zero
        return RewardBreakdown(0.0, error=f"score failed: {type(e).__name__}: {e}")


def render_conversation(tokenizer: Any, task: Task, continuation: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and loss mask of a finished conversation (e.g. an expert's), laid out exactly
    as ``run_episode`` lays out a sampled one: assistant turns end with ``<|im_end|>`` and are
    masked 1; the prompt and observations are masked 0."""
    stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompt = tokenizer.apply_chat_template(task.messages, tools=task.tools or None, add_generation_prompt=True, tokenize=False)
    tokens = tokenizer.encode(prompt, add_special_tokens=False)
    mask = [0] * len(tokens)
    i = 0
    while i < len(continuation):
        msg = continuation[i]
        if msg["role"] == "assistant":
            ids = tokenizer.encode(msg["content"], add_special_tokens=False) + [stop_id]
            tokens += ids
            mask += [1] * len(ids)
            i += 1
            continue
        j = i
        while j < len(continuation) and continuation[j]["role"] in ("tool", "user"):  # observations
            j += 1
        if j == i:
            raise ValueError(f"task {task.id}: unexpected {msg['role']!r} message in a continuation")
        ids = tokenizer.encode(render_observation(continuation[i:j]), add_special_tokens=False)
        tokens += ids
        mask += [0] * len(ids)
        i = j
    return tokens, mask
