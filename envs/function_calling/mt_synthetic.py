"""Synthetic multi-turn tool tasks on forge_ray's own back-ends, and the step tasks derived from
them (Klear-AgentForge's outcome and step-wise RL data, and multi-turn SFT data).

**Generator** (seeded, deterministic: task ``i`` of ``(split, seed)`` depends on nothing else).
A task draws 1 or 2 back-ends of ``mt_tools.py``, a fresh initial state for each
(``mt_intents.INITIAL_STATES``), and 2-4 user turns. Each turn is one intent of one back-end
(``mt_intents.INTENTS``), or a follow-up on what the previous turn produced ("move that
booking"); the intent runs its gold calls on the live back-ends step by step (look an id up,
then act on it) and phrases the request from one of several templates. A task with two
back-ends uses both.

**Filters**: a drafted task is kept only if (``task_problems``)

- ``execution``: its gold calls replayed on a fresh back-end all succeed (no error result; a
  gold call that fails while drafting drops the draft at once);
- ``grounding``: every value of every gold argument is written in the user turns so far or in
  the result of an earlier gold call (strings verbatim, numbers as numbers);
- ``format``: every gold reply parses back (``parsing.parse_calls``) to exactly its calls, every
  closing answer parses as no call, no text carries chat markup (``<|im_start|>``,
  ``<tool_call>``, ...), and the gold conversation rendered by ``forge_ray.chat``'s template
  is byte for byte the agent loop's layout (prompt, replies, ``render_observation``);
- ``outcome``: the gold conversation played through ``MultiTurnEnv`` scores 1.

**Step tasks** (``step_tasks``): for each assistant reply T of a task's gold conversation, the
prompt is the task's messages plus the gold conversation before T (gold calls, their real
observations, later user turns: a teacher-forced prefix); the answer is reply T's calls
(``gold_calls``; ``[]`` for a closing plain-text reply). ``mt_exec.step_parts`` scores them.

``SyntheticMultiTurn.tasks(split, n, seed, step_share)``: ``round(n * step_share)`` step tasks
(each from its own multi-turn task, one of its steps drawn uniformly) and the rest full
multi-turn tasks, in a seeded order.
"""
from __future__ import annotations

import functools
import json
import random
import re
from collections import Counter
from typing import Any

from envs.function_calling.mt_exec import BACKEND, ToolBackends, gold_trace
from envs.function_calling.mt_intents import FOLLOW_UPS, INITIAL_STATES, INTENTS, Draft, GoldCallFailed
from envs.function_calling.mt_tools import BACKENDS, backend_class
from envs.function_calling.multi_turn_data import ENV_NAME, SYSTEM_PROMPT
from forge_ray.types import Task

CATEGORY, STEP_CATEGORY = "synthetic_multi_turn", "synthetic_step"
MAX_ATTEMPTS = 50
_MARKUP = ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<tools>", "</tools>")


# -- drafting ------------------------------------------------------------------------------------------


def _turn(d: Draft, class_name: str) -> tuple[str, str, str] | None:
    """``(request, closing answer, intent name)`` of one turn on ``class_name``: a follow-up on
    the previous turn when one applies (60%), else a base intent; None if nothing fits."""
    follow = [fn for key, fn in FOLLOW_UPS[class_name] if key in d.memory]
    base = list(INTENTS[class_name])
    d.rng.shuffle(base)
    order = ([d.rng.choice(follow)] if follow and d.rng.random() < 0.6 else []) + base
    for intent in order:
        made = intent(d)
        if made is not None:
            return made[0], made[1], intent.__name__
        if d.steps or d.fresh:
            raise RuntimeError(f"intent {intent.__name__} ran calls and then gave up")
    return None


def draft(rng: random.Random, classes: list[str], turns: int, entry_id: str) -> tuple[dict[str, Any], list[str]] | None:
    """The answer of one task (see ``mt_exec``) and its intents, or None when a turn found nothing to do."""
    initial = {c: INITIAL_STATES[c](rng) for c in classes}
    backends = ToolBackends(initial, classes)
    backends.start()
    d = Draft(rng, backends)
    order = [classes[t % len(classes)] for t in range(turns)]  # every back-end gets a turn
    rng.shuffle(order)
    user_turns, ground_truth, answers, intents = [], [], [], []
    for class_name in order:
        made = _turn(d, class_name)
        if made is None:
            return None
        user_turns.append([{"role": "user", "content": made[0]}])
        ground_truth.append(d.steps)
        answers.append(made[1])
        intents.append(made[2])
        d.steps, d.memory, d.fresh = [], d.fresh, {}
    answer = {"backend": BACKEND, "entry_id": entry_id, "initial_config": initial, "involved_classes": classes,
              "user_turns": user_turns, "ground_truth": ground_truth, "gold_answers": answers}
    return answer, intents


def to_task(answer: dict[str, Any], split: str, intents: list[str]) -> Task:
    classes = answer["involved_classes"]
    return Task(
        id=answer["entry_id"], env=ENV_NAME,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, *answer["user_turns"][0]],
        tools=[spec for c in classes for spec in backend_class(c).tool_specs()],
        answer=answer,
        meta={"category": CATEGORY, "source": "synthetic", "split": split, "turns": len(answer["user_turns"]),
              "backends": list(classes), "intents": intents},
    )


# -- filters -------------------------------------------------------------------------------------------


def _number_forms(value: int | float) -> set[str]:
    forms = {str(value)}
    if isinstance(value, float):
        forms |= {f"{value:.2f}", f"{value:g}"} | ({str(int(value))} if value.is_integer() else set())
    return forms


def mentioned(value: Any, known: str) -> bool:
    """Whether ``value`` (a gold argument) is written in ``known``: strings verbatim, numbers
    as whole numbers (``14`` is not found inside ``140`` or ``1.4``), containers item by item."""
    if isinstance(value, bool):
        return True  # no back-end takes a boolean; nothing to look for
    if isinstance(value, str):
        return value in known
    if isinstance(value, (int, float)):
        return any(re.search(rf"(?<![\w.]){re.escape(f)}(?!\.?\d)", known) for f in _number_forms(value))
    if isinstance(value, list):
        return all(mentioned(v, known) for v in value)
    if isinstance(value, dict):
        return all(mentioned(v, known) for v in value.values())
    return False


def _execution_problems(answer: dict[str, Any]) -> tuple[list[str], list[list[list[str]]]]:
    results, _ = gold_trace(answer)
    problems = []
    for k, (steps, texts) in enumerate(zip(answer["ground_truth"], results)):
        for calls, outs in zip(steps, texts):
            problems += [f"execution: turn {k}: {c['name']} -> {o[:160]}" for c, o in zip(calls, outs) if '"error"' in o[:12]]
    return problems, results


def _grounding_problems(answer: dict[str, Any], results: list[list[list[str]]]) -> list[str]:
    known, problems = "", []
    for k, steps in enumerate(answer["ground_truth"]):
        known += "\n" + "\n".join(m["content"] for m in answer["user_turns"][k])
        for calls, outs in zip(steps, results[k]):
            for call in calls:
                problems += [f"grounding: turn {k}: {call['name']}({key}={value!r}) is neither in the requests nor in an earlier result"
                             for key, value in call["arguments"].items() if not mentioned(value, known)]
            known += "\n" + "\n".join(outs)
    return problems


@functools.lru_cache(maxsize=1)
def _template() -> Any:
    from jinja2 import Template

    from forge_ray.chat import TOOL_CHAT_TEMPLATE

    return Template(TOOL_CHAT_TEMPLATE)


def render_layout(task: Task, conversation: list[dict[str, Any]]) -> str:
    """The text the agent loop builds for ``conversation`` (``run_episode``/``render_conversation``:
    the prompt, each reply and ``<|im_end|>``, the observations via ``render_observation``)."""
    from forge_ray.chat import IM_END, render_observation

    text = _template().render(messages=task.messages, tools=task.tools or None, add_generation_prompt=True)
    i = 0
    while i < len(conversation):
        if conversation[i]["role"] == "assistant":
            text += conversation[i]["content"] + IM_END
            i += 1
            continue
        j = i
        while j < len(conversation) and conversation[j]["role"] in ("tool", "user"):
            j += 1
        text += render_observation(conversation[i:j])
        i = j
    return text


def _format_problems(task: Task, conversation: list[dict[str, Any]]) -> list[str]:
    from envs.function_calling.mt_exec import call_dict
    from envs.function_calling.multi_turn import gold_replies
    from envs.function_calling.parsing import parse_calls

    answer, problems = task.answer, []
    expected = [step for steps in answer["ground_truth"] for step in [*steps, []]]  # each turn closes with a plain reply
    for reply, calls in zip(gold_replies(task), expected):
        parsed = parse_calls(reply)
        if parsed.parse_error or [call_dict(c) for c in parsed.tool_calls] != calls:
            problems.append(f"format: reply {reply[:80]!r} does not parse back to {json.dumps(calls)[:120]}")
    texts = ([m["content"] for m in conversation if m["role"] != "assistant"] + list(answer["gold_answers"])
             + [m["content"] for t in answer["user_turns"] for m in t])  # replies with calls: checked above
    problems += [f"format: chat markup {tag!r} in {t[:80]!r}" for t in texts for tag in _MARKUP if tag in t]
    full = _template().render(messages=task.messages + conversation, tools=task.tools or None, add_generation_prompt=False)
    if full != render_layout(task, conversation) + "\n":
        problems.append("format: the chat template and the agent loop's layout differ for this conversation")
    return problems


def task_problems(task: Task) -> list[str]:
    """Why a drafted task must be dropped (see the module docstring); empty when it is kept."""
    from envs.function_calling.multi_turn import MultiTurnEnv, gold_replies, play

    answer = task.answer
    problems, results = _execution_problems(answer)
    if problems:
        return problems
    problems = _grounding_problems(answer, results)
    conversation, snapshot = play(task, gold_replies(task))
    problems += _format_problems(task, conversation)
    reward = MultiTurnEnv().score(task, [*task.messages, *conversation], snapshot)
    if reward.total != 1.0:
        problems.append(f"outcome: the gold conversation scores {reward.total} ({reward.error or reward.parts})")
    return problems


# -- step tasks ----------------------------------------------------------------------------------------


def step_tasks(task: Task, conversation: list[dict[str, Any]] | None = None) -> list[Task]:
    """One teacher-forced step task per assistant reply of ``task``'s gold conversation."""
    from envs.function_calling.mt_exec import call_dict
    from envs.function_calling.multi_turn import gold_replies, play
    from envs.function_calling.parsing import parse_calls

    conversation = conversation if conversation is not None else play(task, gold_replies(task))[0]
    replies = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    out = []
    for step, index in enumerate(replies):
        turn = sum(1 for m in conversation[:index] if m["role"] == "user")
        reply = conversation[index]["content"]
        out.append(Task(
            id=f"{task.id}-step{step}", env=task.env, messages=[*task.messages, *conversation[:index]], tools=task.tools,
            answer={"backend": BACKEND, "kind": "step", "entry_id": f"{task.id}-step{step}", "source_task": task.id,
                    "gold_calls": [call_dict(c) for c in parse_calls(reply).tool_calls], "gold_reply": reply,
                    "step": step, "steps": len(replies), "turn": turn},
            meta={**task.meta, "category": STEP_CATEGORY, "step": step, "turn": turn},
        ))
    return out


# -- the task source -------------------------------------------------------------------------------------


class SyntheticMultiTurn:
    """Synthetic multi-turn tasks on ``backends`` (names of ``mt_tools.BACKENDS``; all by
    default); ``stats`` counts the drafts made and dropped (by reason) so far."""

    def __init__(self, backends: list[str] | tuple[str, ...] | None = None):
        chosen = list(backends) if backends is not None else list(BACKENDS)
        unknown = [b for b in chosen if b not in BACKENDS]
        if unknown or not chosen:
            raise ValueError(f"backends: unknown forge_ray back-ends {unknown or chosen}; known: {', '.join(BACKENDS)}")
        self.backends = chosen
        self.stats: Counter[str] = Counter()

    def multi_turn_task(self, split: str, seed: int, index: int) -> Task:
        """Task ``index`` of ``(split, seed)``: the first draft that passes the filters."""
        for attempt in range(MAX_ATTEMPTS):
            rng = random.Random(f"forge_ray:mt_synthetic:{split}:{seed}:{index}:{attempt}")
            classes = rng.sample(self.backends, 2 if len(self.backends) > 1 and rng.random() < 0.4 else 1)
            self.stats["drafted"] += 1
            try:
                drafted = draft(rng, classes, rng.randint(2, 4), f"mt-syn-{split}-{seed}-{index}")
            except GoldCallFailed:
                self.stats["dropped:execution"] += 1
                continue
            if drafted is None:
                self.stats["dropped:infeasible"] += 1
                continue
            task = to_task(drafted[0], split, drafted[1])
            problems = task_problems(task)
            if not problems:
                self.stats["kept"] += 1
                return task
            for kind in {p.split(":", 1)[0] for p in problems}:
                self.stats[f"dropped:{kind}"] += 1
        raise RuntimeError(f"no synthetic multi-turn task {split}/{seed}/{index} passed the filters in {MAX_ATTEMPTS} drafts")

    def tasks(self, split: str, n: int, seed: int, step_share: float = 0.0) -> list[Task]:
        """``n`` tasks of ``split``: ``round(n * step_share)`` step tasks, the rest multi-turn."""
        if split not in ("train", "heldout"):
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        if not 0.0 <= step_share <= 1.0:
            raise ValueError(f"step_share must be between 0 and 1, got {step_share!r}")
        rng = random.Random(f"forge_ray:mt_synthetic:mix:{split}:{seed}")
        n_steps = round(n * step_share)
        kinds = [True] * n_steps + [False] * (n - n_steps)
        rng.shuffle(kinds)
        out = []
        for index, is_step in enumerate(kinds):
            task = self.multi_turn_task(split, seed, index)
            out.append(rng.choice(step_tasks(task)) if is_step else task)
        return out
