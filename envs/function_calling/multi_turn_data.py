"""BFCL's multi-turn categories as tasks of the multi-turn function-calling environment.

Read offline from the installed ``bfcl-eval`` package: the entries
(``data/BFCL_v4_multi_turn_<category>.json``: ``question`` -- the user turns --,
``initial_config``, ``involved_classes``, and for ``miss_func`` ``missed_function``), the
ground truth (``data/possible_answer/``: one list of call strings per user turn) and the
function docs of each back-end class (``data/multi_turn_func_doc/``), as BFCL's own loader
(``populate_test_cases_with_predefined_functions``) assembles them: the docs of every involved
class, minus the held-out ones of ``miss_func``.

A task (generic: nothing below the loader is BFCL-specific):

- ``messages``: a system prompt and the first user turn; ``tools``: the functions shown from the
  start, as JSON-schema specs (BFCL's Python hint added to their descriptions, as BFCL does);
- ``answer``: ``entry_id`` (the id the checker sees), ``initial_config``, ``involved_classes``,
  ``user_turns`` (the user messages of every turn, turn 0 included), ``ground_truth`` (call
  strings per turn) and ``revealed`` (``{turn: [function names]}``).

``miss_func``: BFCL holds some functions back and leaves the user turn where they come back
empty; at that turn its prompting handlers send the held-out docs followed by "I have updated
some more functions you can choose from. What about now?" (its FC handlers add them to the
tools and send the sentence alone). The tools of a forge_ray episode are fixed in its system
prompt, so that turn's user message is built here the prompting way: the held-out functions as
JSON specs inside ``<tools>``, then BFCL's sentence.
"""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

from envs.function_calling.bfcl_data import round_robin
from forge_ray.types import Task

ENV_NAME = "function_calling_multi_turn"
MULTI_TURN_CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")

SYSTEM_PROMPT = (
    "You are a function-calling assistant working with a user over several turns. At each turn, do what "
    "the user asks with the tools: reply with tool calls, one <tool_call> block per call, read their "
    "results, and keep calling until the request is fulfilled. When you have no more calls to make, "
    "reply in plain text without any tool call: the turn is then complete and the user's next request "
    "follows. If no tool fits the request, or the request lacks a parameter a tool needs, say so in "
    "plain text and make no call."
)


def _read_lines(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None
    return rows


def function_docs(class_name: str, root: Path | None = None) -> list[dict[str, Any]]:
    """BFCL's function docs of one back-end class (``multi_turn_func_doc/<file>.json``)."""
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    from envs.function_calling.bfcl_data import data_dir

    if class_name not in MULTI_TURN_FUNC_DOC_FILE_MAPPING:
        raise ValueError(f"no function docs for BFCL class {class_name!r}")
    path = (root or data_dir()) / "multi_turn_func_doc" / MULTI_TURN_FUNC_DOC_FILE_MAPPING[class_name]
    return [doc for _, doc in _read_lines(path)]


def reveal_message(functions: list[dict[str, Any]]) -> dict[str, str]:
    """The user message of a turn that brings held-out functions back (see the module docstring)."""
    from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC

    from envs.function_calling.bfcl_data import to_tool_spec

    specs = "\n".join(json.dumps(to_tool_spec(f, hint="")) for f in functions)  # BFCL adds no hint to them
    return {"role": "user", "content": f"<tools>\n{specs}\n</tools>\n{DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC}"}


def _entry_task(path: Path, lineno: int, row: dict[str, Any], ground_truth: Any, category: str, root: Path) -> Task:
    """One BFCL multi-turn entry as a task (see the module docstring); bad data raises."""
    from envs.function_calling.bfcl_data import to_tool_spec

    where = f"{path}:{lineno} ({row.get('id')})"
    question, classes = row.get("question"), row.get("involved_classes")
    if not (isinstance(question, list) and question and all(isinstance(t, list) for t in question)):
        raise ValueError(f"{where}: 'question' must be a non-empty list of turns")
    if not (isinstance(classes, list) and classes and isinstance(row.get("initial_config", {}), dict)):
        raise ValueError(f"{where}: needs 'involved_classes' (a list) and 'initial_config' (an object)")
    if not (isinstance(ground_truth, list) and len(ground_truth) == len(question)):
        raise ValueError(f"{where}: the ground truth needs one list of calls per user turn ({len(question)})")
    functions = [doc for c in classes for doc in function_docs(c, root)]
    by_name = {f["name"]: f for f in functions}
    turns = copy.deepcopy(question)
    revealed: dict[str, list[str]] = {}
    for turn, names in (row.get("missed_function") or {}).items():
        index = int(turn)
        if not 0 <= index < len(turns) or turns[index] or any(n not in by_name for n in names):
            raise ValueError(f"{where}: missed_function {turn}: {names} needs an empty user turn and known functions")
        turns[index] = [reveal_message([by_name[n] for n in names])]
        revealed[str(index)] = list(names)
    hidden = {n for names in revealed.values() for n in names}
    return Task(
        id=row["id"],
        env=ENV_NAME,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, *turns[0]],
        tools=[to_tool_spec(f) for f in functions if f["name"] not in hidden],
        answer={"entry_id": row["id"], "initial_config": row.get("initial_config", {}), "involved_classes": classes,
                "user_turns": turns, "ground_truth": ground_truth, "revealed": revealed},
        meta={"category": category, "bfcl_id": row["id"], "source": "bfcl", "turns": len(turns)},
    )


def load_multi_turn(category: str, limit: int | None = None, root: Path | None = None) -> list[Task]:
    """The tasks of BFCL multi-turn ``category`` in file order (the first ``limit`` when given)."""
    from envs.function_calling.bfcl_data import VERSION_PREFIX, data_dir

    if category not in MULTI_TURN_CATEGORIES:
        raise ValueError(f"unknown BFCL multi-turn category {category!r}; supported: {', '.join(MULTI_TURN_CATEGORIES)}")
    root = root or data_dir()
    path = root / f"{VERSION_PREFIX}_{category}.json"
    answers = {r.get("id"): r.get("ground_truth") for _, r in _read_lines(root / "possible_answer" / path.name)}
    rows = _read_lines(path)
    return [_entry_task(path, lineno, row, answers.get(row.get("id")), category, root)
            for lineno, row in (rows[:limit] if limit is not None else rows)]


def sample_tasks(categories: tuple[str, ...], n: int, seed: int) -> list[Task]:
    """``n`` tasks drawn round-robin over ``categories``, each category in a seeded order."""
    rng = random.Random(f"function_calling_multi_turn:bfcl:{seed}")
    queues = []
    for category in categories:
        tasks = load_multi_turn(category)
        rng.shuffle(tasks)
        queues.append(tasks)
    return round_robin(queues, n, f"BFCL multi-turn tasks; categories {list(categories)}")
