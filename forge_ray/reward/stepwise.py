"""Step-wise tool-call reward (Klear-AgentForge Eq. 8), generic over environments.

Turn k of an episode earns 1 iff the tool call(s) it makes match the gold call(s) of turn k:
same multiset of calls, each equal by name and by every argument (``==``). The gold turns
before k are the context the turn is judged in. On-policy (``require_prefix=True``, the
default) the model's own history equals that gold prefix only while every earlier turn
matched, so a turn after a miss earns 0; with ``require_prefix=False`` every turn is judged on
its own (the history was the gold prefix anyway, e.g. teacher-forced data).

The turn right after the last gold turn is the answer turn: it earns ``outcome`` (when the
prefix held); turns beyond it earn 0.

    gold = [[{"name": "add", "arguments": {"a": 1, "b": 2}}], [{"name": "mul", ...}]]
    stepwise_rewards(gold, [[ToolCall("add", {"a": 1, "b": 2})], [...], []], outcome=1.0)
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from forge_ray.types import ToolCall

CallLike = Any  # a ToolCall, or a mapping with "name" and "arguments"


def _parts(call: CallLike) -> tuple[str, Any]:
    """``(name, arguments)`` of one call."""
    if isinstance(call, ToolCall):
        return call.name, call.arguments
    if isinstance(call, Mapping):
        if "name" not in call:
            raise ValueError(f"a gold or model call needs a 'name': {call!r}")
        return call["name"], call.get("arguments", {})
    raise TypeError(f"a call must be a ToolCall or a mapping with name/arguments, got {type(call).__name__}")


def calls_match(model: Sequence[CallLike] | None, gold: Sequence[CallLike]) -> bool:
    """Whether a turn's calls are exactly the gold calls, as a multiset (their order within the
    turn is free); ``None`` = no calls. Arguments compare with ``==`` (nested dicts, key order
    free). A turn with no gold calls never matches: it is an answer turn, not a tool turn."""
    model, gold = [_parts(c) for c in model or ()], [_parts(c) for c in gold]
    if not gold or len(model) != len(gold):
        return False
    unused = list(gold)
    for call in model:
        if call not in unused:
            return False
        unused.remove(call)
    return True


def stepwise_rewards(gold_turns: Sequence[Sequence[CallLike]], model_turns: Sequence[Sequence[CallLike] | None],
                     outcome: float = 0.0, *, require_prefix: bool = True) -> list[float]:
    """One reward per model turn (see the module docstring). ``model_turns[k]`` holds the calls
    of assistant turn k (``None`` or ``[]`` for a turn that made none or failed to parse)."""
    if isinstance(gold_turns, (str, bytes)) or isinstance(model_turns, (str, bytes)):
        raise TypeError("gold_turns and model_turns are sequences of per-turn call lists")
    rewards, prefix_ok = [], True
    for k, calls in enumerate(model_turns):
        if k < len(gold_turns):
            ok = calls_match(calls, gold_turns[k])
            prefix_ok = prefix_ok and ok
            rewards.append(float(prefix_ok if require_prefix else ok))
        else:
            rewards.append(float(outcome) if k == len(gold_turns) and (prefix_ok or not require_prefix) else 0.0)
    return rewards


def one_call_per_turn(gold_calls: Sequence[CallLike]) -> list[list[CallLike]]:
    """Gold data that lists one call per turn (as the calculator's does) as per-turn lists."""
    return [[c] for c in gold_calls]
