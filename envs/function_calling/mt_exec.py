"""Running forge_ray's own back-ends (``mt_tools.py``) in the multi-turn environment, their
state-based checker, and the step-wise reward of teacher-forced step tasks.

A synthetic multi-turn task's ``answer`` (``mt_synthetic.py`` makes them):
``backend: "forge_ray"``, ``entry_id``, ``initial_config`` (``{class: state}``),
``involved_classes``, ``user_turns``, ``ground_truth`` (per user turn, the gold *steps*: each
step one assistant reply's calls, ``{"name", "arguments"}``; a later step may use an earlier
step's result) and ``gold_answers`` (per user turn, the plain reply that closes it).

**Execution** (``ToolBackends``): a call names a tool of an involved class; its arguments are
checked against the tool's parameters (names, required, JSON types) and the method runs; the
observation is the JSON dump of its result, or of ``{"error": ...}``. Arguments are first put
through JSON (a tuple becomes a list), so the call recorded in the snapshot is the call run.

**Outcome reward** (``judge_tools``): the model's recorded calls and the gold steps are replayed
on two fresh copies of the initial state, turn by turn. Turn k passes iff the back-end state
after it equals the gold state after it and every result the gold calls of turn k produced is
among the model's results of turn k (a multiset inclusion), as BFCL's checker compares state
and execution results. ``correct`` = the episode finished (not force-quit, not cut off) and
every turn passes: the final state is the gold's and every turn's gold results were produced.

**Step tasks** (``answer.kind == "step"``): the episode is one assistant reply after a
teacher-forced prefix. Reward (Klear-AgentForge Eq. 8): 1 iff the reply parses and its calls
equal the gold next calls exactly (``forge_ray.reward.stepwise.calls_match``: names, every
argument and value, order within the reply free); when the gold next reply is plain text (the
turn is done), 1 iff the reply parses and makes no call.
"""
from __future__ import annotations

import copy
import json
from collections import Counter
from typing import Any

from envs.function_calling.multi_turn_backend import Judgement
from envs.function_calling.mt_tools import ToolBackend, ToolError, backend_class
from forge_ray.types import ToolCall

BACKEND = "forge_ray"  # answer["backend"] of tasks on these back-ends (BFCL's tasks have none)
DEFAULT_STEP_LIMIT = 20  # steps with calls per user turn, as BFCL's MAXIMUM_STEP_LIMIT
_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}


def is_forge_task(answer: Any) -> bool:
    return isinstance(answer, dict) and answer.get("backend") == BACKEND


def is_step_task(answer: Any) -> bool:
    return is_forge_task(answer) and answer.get("kind") == "step"


def call_dict(call: ToolCall | dict[str, Any]) -> dict[str, Any]:
    """``{"name", "arguments"}`` of a call, its arguments put through JSON (JSON-able, and the
    exact values the back-end will see)."""
    name, arguments = (call.name, call.arguments) if isinstance(call, ToolCall) else (call.get("name"), call.get("arguments", {}))
    return {"name": name, "arguments": json.loads(json.dumps(arguments, default=repr))}


def result_text(result: Any) -> str:
    return json.dumps(result)


class ToolBackends:
    """The back-end instances of one episode (or one checker replay)."""

    def __init__(self, initial_config: dict[str, Any], involved_classes: list[str]):
        if not isinstance(initial_config, dict) or not involved_classes:
            raise ValueError("a forge_ray task needs initial_config (an object) and involved_classes (a non-empty list)")
        self.initial_config = initial_config
        self.involved_classes = list(involved_classes)
        self.instances: dict[str, ToolBackend] = {}
        self.owners: dict[str, str] = {}

    def start(self) -> None:
        for name in self.involved_classes:
            instance = backend_class(name)()
            instance.load(self.initial_config.get(name, {}))
            self.instances[name] = instance
            self.owners.update({method: name for method in instance.tools()})

    def execute(self, call: dict[str, Any]) -> Any:
        """The result of one call (an ``{"error": ...}`` dict when it is refused or fails)."""
        name, arguments = call.get("name"), call.get("arguments")
        if not isinstance(name, str) or name not in self.owners:
            return {"error": f"unknown function {name!r}; available: {', '.join(sorted(self.owners))}"}
        instance = self.instances[self.owners[name]]
        problem = _argument_problem(name, instance.tools()[name][1], arguments)
        if problem:
            return {"error": problem}
        try:
            return getattr(instance, name)(**arguments)
        except ToolError as e:
            return {"error": str(e)}
        except Exception as e:  # noqa: BLE001 - a model's odd values must not crash the episode
            return {"error": f"{name} failed: {type(e).__name__}: {str(e)[:200]}"}

    def run(self, calls: list[ToolCall] | list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
        """``(observations, recorded)``: one result string per call, in order, and the calls as
        run (what the checker replays)."""
        recorded = [call_dict(c) for c in calls]
        return [result_text(self.execute(c)) for c in recorded], recorded

    def state(self) -> dict[str, Any]:
        return {name: instance.state() for name, instance in self.instances.items()}

    def close(self) -> None:
        self.instances, self.owners = {}, {}


def _argument_problem(name: str, params: dict[str, tuple[str, str]], arguments: Any) -> str | None:
    if not isinstance(arguments, dict):
        return f"arguments of {name} must be an object"
    unknown = [k for k in arguments if k not in params]
    if unknown:
        return f"{name} has no parameter {unknown[0]!r}; parameters: {', '.join(params) or 'none'}"
    missing = [k for k in params if k not in arguments]
    if missing:
        return f"{name} needs {', '.join(missing)}"
    for key, (kind, _) in params.items():
        value = arguments[key]
        if not isinstance(value, _TYPES[kind]) or (kind != "boolean" and isinstance(value, bool)):
            return f"{name}: {key} must be a JSON {kind}, got {json.dumps(value)}"
    return None


# -- outcome checker ---------------------------------------------------------------------------------


def _run_turn(backends: ToolBackends, steps: list[list[dict[str, Any]]]) -> list[str]:
    return [text for step in steps for text in backends.run(step)[0]]


def gold_trace(answer: dict[str, Any]) -> tuple[list[list[list[str]]], list[dict[str, Any]]]:
    """The gold execution: result strings per turn and step, and the state after each turn."""
    backends = ToolBackends(answer["initial_config"], answer["involved_classes"])
    backends.start()
    results, states = [], []
    for steps in answer["ground_truth"]:
        results.append([backends.run(step)[0] for step in steps])
        states.append(backends.state())
    return results, states


def _turn_verdict(model_results: list[str], gold_results: list[str], model_state: dict, gold_state: dict) -> str | None:
    if model_state != gold_state:
        return "state_mismatch"
    missing = Counter(gold_results) - Counter(model_results)
    return f"missing_result: {next(iter(missing))[:200]}" if missing else None


def judge_tools(decoded: list[list[list[dict[str, Any]]]], answer: dict[str, Any], *, finished: bool, force_quit: bool) -> Judgement:
    """The outcome verdict of an episode (see the module docstring). ``decoded``: the model's
    recorded calls per turn and step (the snapshot's ``turns``)."""
    turns = len(answer["ground_truth"])
    played = len(decoded) if finished and not force_quit else max(len(decoded) - 1, 0)
    model = ToolBackends(answer["initial_config"], answer["involved_classes"])
    model.start()
    gold_results, gold_states = gold_trace(answer)
    passed, error = 0, None
    for k in range(min(played, turns)):
        verdict = _turn_verdict(_run_turn(model, decoded[k]), [r for step in gold_results[k] for r in step],
                                model.state(), gold_states[k])
        if verdict is not None:
            error = (f"multi_turn:{verdict.split(':')[0]}", f"turn {k}: {verdict}")
            break
        passed += 1
    if passed == turns and finished and not force_quit and len(decoded) == turns:
        return Judgement(True, turns, turns)
    if error is None:
        reason = "the step limit of a user turn" if force_quit else "the end of the episode (token budget or timeout)"
        error = ("multi_turn:force_terminated", f"played {len(decoded)} of {turns} turns; stopped by {reason}")
    return Judgement(False, turns, passed, error[0], error[1])


def final_state_matches(decoded: list[list[list[dict[str, Any]]]], answer: dict[str, Any]) -> bool:
    """Whether replaying every recorded call ends in the gold execution's final state."""
    model = ToolBackends(answer["initial_config"], answer["involved_classes"])
    model.start()
    for steps in decoded:
        _run_turn(model, steps)
    return model.state() == gold_trace(answer)[1][-1]


# -- step tasks ----------------------------------------------------------------------------------------


def step_record() -> dict[str, Any]:
    return {"kind": "step", "finished": False, "calls": [], "parse_error": None, "replied": False}


def record_step(record: dict[str, Any], calls: list[ToolCall], parse_error: str | None) -> dict[str, Any]:
    out = copy.deepcopy(record)
    out.update(finished=True, replied=True, calls=[call_dict(c) for c in calls], parse_error=parse_error)
    return out


def step_parts(answer: dict[str, Any], record: dict[str, Any]) -> dict[str, float]:
    """Eq. 8 on the recorded reply: ``format`` (it parsed), ``correct`` (exact match of the gold
    next call(s); no call where the gold reply is plain text) and ``calls``."""
    from forge_ray.reward.stepwise import calls_match

    gold = answer["gold_calls"]
    calls = record.get("calls") or []
    well_formed = bool(record.get("replied")) and record.get("parse_error") is None
    match = calls_match(calls, gold) if gold else not calls
    return {"format": float(well_formed), "correct": float(well_formed and match), "calls": float(len(calls)), "step": 1.0}


# -- gold replies ----------------------------------------------------------------------------------------


def forge_gold_replies(answer: dict[str, Any], done_text: str = "Done.") -> list[str]:
    """Assistant replies that play a synthetic task's gold: per user turn, one reply per gold
    step (its calls as ``<tool_call>`` blocks, one per line), then the turn's closing answer."""
    from forge_ray.chat import render_tool_call

    replies = []
    closing = answer.get("gold_answers") or [done_text] * len(answer["ground_truth"])
    for steps, text in zip(answer["ground_truth"], closing):
        replies += ["\n".join(render_tool_call(ToolCall(c["name"], c["arguments"])) for c in step) for step in steps]
        replies.append(text)
    return replies
