"""The multi-turn function-calling environment: BFCL's stateful back-ends, its user turns, and its
official multi-turn checker as the reward; or, for forge_ray's synthetic tasks
(``answer["backend"] == "forge_ray"``, ``mt_synthetic.py``), forge_ray's own back-ends
(``mt_tools.py``) and their state-based checker (``mt_exec.py``), and the one-reply step tasks
derived from them (``answer["kind"] == "step"``: Klear-AgentForge's step-wise reward).

A task (``multi_turn_data.py``) is an initial state (``initial_config`` of the
``involved_classes``), the user turns, and the gold calls of each turn. An episode:

- ``open`` loads the back-ends (BFCL's ``_load_scenario``) and starts turn 0 (the task's
  messages end with its user message);
- ``step``: an assistant reply with tool calls (forge_ray's ``<tool_call>`` JSON or Python call
  syntax, ``parsing.py``) has them executed, in order, on the back-ends; each result comes back as
  a ``tool`` message. A malformed call is an error observation, nothing runs, and the model may
  try again. A reply without a call ends the user turn: the next user turn is the observation,
  or, after the last one, the episode ends;
- BFCL's step limit (``MAXIMUM_STEP_LIMIT``, 20) holds per user turn: the step past it (the 21st
  with calls) still runs, then the episode ends, force-quit, as in BFCL's inference loop;
- ``snapshot``: the decoded call strings per turn and per step (what BFCL's checker reads), and
  whether the episode finished or was force-quit;
- ``score``: 1 iff BFCL's ``multi_turn_checker`` accepts the calls (state and execution results
  after every turn against the ground truth's, on fresh back-ends), else 0.

Reward parts: ``correct`` (the verdict; ``total`` is the same), ``turns`` (user turns),
``turns_passed`` (leading turns the checker accepts), ``turn_<k>`` (1 for each passed turn, 0
for the first failing one; later turns are not checked, as the checker stops there),
``force_quit``, ``calls`` (calls recorded) and ``parse_errors`` (malformed steps). forge_ray's
synthetic tasks have the same parts (their checker's verdict, ``mt_exec.judge_tools``) plus
``final_state`` (the replayed calls end in the gold final state); step tasks have ``format``,
``correct``, ``calls`` and ``step``, with ``total = format * correct``.
"""
from __future__ import annotations

import copy
from typing import Any

from envs.function_calling.mt_exec import (DEFAULT_STEP_LIMIT, ToolBackends, final_state_matches, forge_gold_replies, is_forge_task,
                                           is_step_task, judge_tools, record_step, step_parts, step_record)
from envs.function_calling.multi_turn_backend import Backends, Judgement, gold_tool_calls, judge, step_limit
from envs.function_calling.multi_turn_data import MULTI_TURN_CATEGORIES, sample_tasks
from envs.function_calling.parsing import parse_calls
from forge_ray.chat import render_tool_call
from forge_ray.env.protocol import EnvBase
from forge_ray.types import Action, RewardBreakdown, StepResult, Task

TURN_DONE_TEXT = "Done."
# The expert's reply on a turn whose gold has no call (a held-out function, a missing parameter).
CANNOT_TEXT = ("I can't do that yet: none of the available functions fits, or a parameter the request "
               "needs is missing. Please tell me more.")
_ANSWER_KEYS = ("entry_id", "initial_config", "involved_classes", "user_turns", "ground_truth")
_STEP_KEYS = ("entry_id", "gold_calls", "gold_reply")


def _answer(task: Task) -> dict[str, Any]:
    answer = task.answer if isinstance(task.answer, dict) else {}
    missing = [k for k in (_STEP_KEYS if is_step_task(answer) else _ANSWER_KEYS) if k not in answer]
    if missing:
        raise ValueError(f"task {task.id} is not a multi-turn task: answer lacks {', '.join(missing)}")
    return answer


def _entry(answer: dict[str, Any]) -> dict[str, Any]:
    """What the checker reads of the task (as it reads BFCL's test entry)."""
    from envs.function_calling.multi_turn_backend import safe_entry_id

    return {"id": safe_entry_id(str(answer["entry_id"])), "initial_config": answer["initial_config"],
            "involved_classes": answer["involved_classes"]}


def _tool(content: str) -> dict[str, str]:
    return {"role": "tool", "content": content}


class MultiTurnEnv(EnvBase):
    """Env of multi-turn function-calling tasks. ``step_limit``: steps with calls per user turn
    before the episode is force-quit (default BFCL's ``MAXIMUM_STEP_LIMIT``).

    ``blocking``: a step usually takes well under a millisecond, but BFCL's back-ends compute
    what they are asked (``power(base=10, exponent=10**9)``, ``logarithm(precision=10**8)``), so
    the adapters run steps and scoring in a thread, off the event loop that drives generation."""

    blocking = True

    def __init__(self, step_limit: int | None = None):
        if step_limit is not None and step_limit < 1:
            raise ValueError(f"step_limit must be >= 1, got {step_limit}")
        self.step_limit = step_limit
        self.task: Task | None = None
        self.backends: Backends | ToolBackends | None = None
        self.record: dict[str, Any] = {}
        self.turn = 0
        self.steps = 0

    def open(self, task: Task) -> Task:
        answer = _answer(task)
        self.close()
        self.task, self.turn, self.steps = task, 0, 0
        if is_step_task(answer):  # one reply after a teacher-forced prefix: nothing runs
            self.record = step_record()
            return task
        if is_forge_task(answer):
            self.backends = ToolBackends(answer["initial_config"], answer["involved_classes"])
        else:
            self.backends = Backends(str(answer["entry_id"]), answer["initial_config"], answer["involved_classes"])
        self.backends.start()
        self.record = {"turns": [[]], "finished": False, "force_quit": False, "calls": 0, "parse_errors": 0}
        return task

    def step(self, action: Action) -> StepResult:
        if self.task is None or (self.backends is None and self.record.get("kind") != "step"):
            raise RuntimeError("MultiTurnEnv.step before open()")
        if self.record["finished"] or self.record.get("force_quit"):
            return StepResult([], True, {"turn": self.turn})
        parsed = parse_calls(action.text)
        if self.record.get("kind") == "step":
            self.record = record_step(self.record, parsed.tool_calls, parsed.parse_error)
            return StepResult([], True, {"step_task": True, "calls": len(parsed.tool_calls), "parse_error": parsed.parse_error})
        if parsed.parse_error is None and not parsed.tool_calls:
            return self._end_turn()
        self.steps += 1
        info: dict[str, Any] = {"turn": self.turn, "step": self.steps}
        if parsed.parse_error is not None:
            self.record["parse_errors"] += 1
            info["parse_error"] = parsed.parse_error
            messages = [_tool(f"Error: the tool call could not be parsed, nothing was run: {parsed.parse_error}")]
        else:
            observations, recorded = self.backends.run(parsed.tool_calls)
            self.record["turns"][-1].append(recorded)
            self.record["calls"] += len(recorded)
            messages = [_tool(o) for o in observations]
        limit = self.step_limit or (DEFAULT_STEP_LIMIT if isinstance(self.backends, ToolBackends) else step_limit())
        if self.steps > limit:
            self.record["force_quit"] = True
            return StepResult(messages, True, {**info, "force_quit": True})
        return StepResult(messages, False, info)

    def _end_turn(self) -> StepResult:
        turns = _answer(self.task)["user_turns"]
        if self.turn + 1 >= len(turns):
            self.record["finished"] = True
            return StepResult([], True, {"turn": self.turn, "finished": True})
        self.turn, self.steps = self.turn + 1, 0
        self.record["turns"].append([])
        return StepResult(copy.deepcopy(turns[self.turn]), False, {"turn": self.turn})

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.record)

    def close(self) -> None:
        if self.backends is not None:
            self.backends.close()
        self.backends = None
        self.task = None

    # -- scoring ---------------------------------------------------------------------------------

    def _snapshot_for(self, task: Task, messages: list[dict] | None, snapshot: dict | None) -> dict[str, Any]:
        """``snapshot``; without one, this episode's own record (scored in its own instance), or
        else the assistant turns of ``messages`` replayed through a fresh env."""
        if snapshot and ("turns" in snapshot or "replied" in snapshot):
            return snapshot
        if self.task is not None and self.task.id == task.id and self.record:
            return self.snapshot()
        return replay_snapshot(task, messages or [], self.step_limit)

    def judgement(self, task: Task, messages: list[dict] | None = None, snapshot: dict | None = None) -> Judgement:
        """BFCL's verdict on the episode (its record as ``_snapshot_for`` finds it)."""
        answer = _answer(task)
        snap = self._snapshot_for(task, messages, snapshot)
        if is_step_task(answer):
            correct = bool(step_parts(answer, snap)["correct"])
            return Judgement(correct, 1, int(correct), None if correct else "step:mismatch",
                             None if correct else f"gold next reply: {answer['gold_reply'][:300]}")
        if is_forge_task(answer):
            return judge_tools(snap["turns"], answer, finished=bool(snap.get("finished")), force_quit=bool(snap.get("force_quit")))
        return judge(snap["turns"], answer["ground_truth"], _entry(answer), finished=bool(snap.get("finished")),
                     force_quit=bool(snap.get("force_quit")))

    def score(self, task: Task, messages: list[dict], snapshot: dict | None = None) -> RewardBreakdown:
        """The checker's verdict and its per-turn details (see the module docstring). A task
        without usable gold data sets ``error`` (the trajectory is masked, not punished)."""
        try:
            answer = _answer(task)
        except ValueError as e:
            return RewardBreakdown(0.0, {"correct": 0.0}, error=str(e))
        snap = self._snapshot_for(task, messages, snapshot)
        if is_step_task(answer):  # Klear-AgentForge Eq. 8: well-formed and an exact match
            parts = step_parts(answer, snap)
            return RewardBreakdown(parts["format"] * parts["correct"], parts)
        verdict = self.judgement(task, messages, snap)
        parts = {"correct": float(verdict.valid), "turns": float(verdict.turns), "turns_passed": float(verdict.turns_passed),
                 "force_quit": float(bool(snap.get("force_quit"))), "calls": float(snap.get("calls", 0)),
                 "parse_errors": float(snap.get("parse_errors", 0))}
        for k in range(min(verdict.turns_passed + 1, verdict.turns)):
            parts[f"turn_{k}"] = float(k < verdict.turns_passed)
        if is_forge_task(answer):
            parts["final_state"] = float(verdict.valid or final_state_matches(snap["turns"], answer))
        return RewardBreakdown(parts["correct"], parts)

    def verdict(self, task: Task, messages: list[dict] | None = None, snapshot: dict | None = None) -> dict[str, Any]:
        """Why the episode scores as it does: for logs and ``--details`` files."""
        v = self.judgement(task, messages, snapshot)
        return {"valid": v.valid, "turns": v.turns, "turns_passed": v.turns_passed, "error_type": v.error_type,
                "error_message": v.error_message}


def replay_snapshot(task: Task, messages: list[dict], limit: int | None = None) -> dict[str, Any]:
    """The snapshot an episode with these messages had: its assistant turns (after the task's
    opening messages) stepped through a fresh env."""
    env = MultiTurnEnv(limit)
    try:
        env.open(task)
        for message in messages[len(task.messages):]:
            if isinstance(message, dict) and message.get("role") == "assistant":
                if env.step(Action(str(message.get("content") or ""), [])).done:
                    break
        return env.snapshot()
    finally:
        env.close()


# -- gold and expert --------------------------------------------------------------------------------


def gold_replies(task: Task) -> list[str]:
    """Assistant replies that play the ground truth: per user turn, one reply with all of the
    turn's gold calls (``<tool_call>`` blocks, one per line) and a plain reply that ends the turn."""
    answer = _answer(task)
    if is_step_task(answer):
        return [answer["gold_reply"]]
    if is_forge_task(answer):
        return forge_gold_replies(answer)
    replies = []
    for calls in answer["ground_truth"]:
        if calls:
            replies.append("\n".join(render_tool_call(c) for c in gold_tool_calls(calls, answer["involved_classes"])))
        replies.append(TURN_DONE_TEXT if calls else CANNOT_TEXT)
    return replies


def play(task: Task, replies: list[str], step_limit: int | None = None) -> tuple[list[dict], dict[str, Any]]:
    """``replies`` played as the assistant turns of ``task``: the conversation after the task's
    messages (replies and observations) and the final snapshot."""
    env = MultiTurnEnv(step_limit)
    conversation: list[dict] = []
    try:
        env.open(task)
        for text in replies:
            conversation.append({"role": "assistant", "content": text})
            result = env.step(Action(text, []))
            if result.done:
                break
            conversation += result.messages
        return conversation, env.snapshot()
    finally:
        env.close()


class MultiTurnTasks:
    """TaskSource of the multi-turn environment.

    - ``categories``: BFCL's multi-turn categories of the BFCL splits (drawn round-robin, seeded);
    - ``train``: the training split: ``"synthetic"`` (forge_ray's own tasks, ``mt_synthetic.py``),
      ``"bfcl"`` (BFCL's entries themselves, which spoils them as a benchmark) or ``"none"``;
    - ``heldout``: ``"bfcl"`` (default) or ``"synthetic"`` (forge_ray's own, another draw);
    - ``step_share``: with ``train: synthetic``, the share of the training split that is
      teacher-forced step tasks (Klear-AgentForge Eq. 8); the rest are full multi-turn tasks
      with the outcome reward. The held-out split is never step tasks;
    - ``backends``: forge_ray back-ends of the synthetic tasks (``mt_tools.BACKENDS``; all by default).
    """

    def __init__(self, categories: list[str] | tuple[str, ...] = MULTI_TURN_CATEGORIES, train: str = "none",
                 heldout: str = "bfcl", step_share: float = 0.0, backends: list[str] | None = None):
        unknown = [c for c in categories if c not in MULTI_TURN_CATEGORIES]
        if unknown or not categories:
            raise ValueError(f"unknown BFCL multi-turn categories {unknown or categories}; supported: {', '.join(MULTI_TURN_CATEGORIES)}")
        if train not in ("none", "bfcl", "synthetic"):
            raise ValueError(f"train must be 'none', 'bfcl' or 'synthetic', got {train!r}")
        if heldout not in ("bfcl", "synthetic"):
            raise ValueError(f"heldout must be 'bfcl' or 'synthetic', got {heldout!r}")
        if isinstance(step_share, bool) or not isinstance(step_share, (int, float)) or not 0.0 <= step_share <= 1.0:
            raise ValueError(f"step_share must be a number between 0 and 1, got {step_share!r}")
        if step_share and train != "synthetic":
            raise ValueError(f"step_share needs train: synthetic (step tasks are derived from forge_ray's synthetic tasks), got train: {train!r}")
        if backends is not None and "synthetic" not in (train, heldout):
            raise ValueError("backends applies to synthetic tasks only: set train: synthetic or heldout: synthetic")
        self.categories, self.train, self.heldout, self.step_share = tuple(categories), train, heldout, float(step_share)
        self.synthetic = None
        if "synthetic" in (train, heldout):
            from envs.function_calling.mt_synthetic import SyntheticMultiTurn

            self.synthetic = SyntheticMultiTurn(backends)

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        if split == "train" and self.train == "none":
            raise ValueError("function_calling_multi_turn has no training tasks unless env.kwargs.train is 'synthetic' "
                             "(forge_ray's own) or 'bfcl' (BFCL's multi-turn entries, which then no longer measure held-out skill)")
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        if self.synthetic is not None and (self.train if split == "train" else self.heldout) == "synthetic":
            return self.synthetic.tasks(split, n, seed, self.step_share if split == "train" else 0.0)
        return sample_tasks(self.categories, n, seed)

    def expert(self, task: Task) -> list[dict]:
        """The gold played through the environment: replies and real observations (for a step
        task: the gold next reply)."""
        return play(task, gold_replies(task))[0]
