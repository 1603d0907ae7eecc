"""BFCL single-turn tasks, read from the installed ``bfcl-eval`` package's data files.

Nothing here touches the network: the questions (``data/BFCL_v4_<category>.json``) and the
possible answers (``data/possible_answer/BFCL_v4_<category>.json``) ship inside the wheel, one
JSON object per line. A bad line fails with the file and line number.

Categories: BFCL v4's Python single-turn ones, non-live (``NON_LIVE_CATEGORIES``) and live
(``LIVE_CATEGORIES``, user-contributed questions). The irrelevance and relevance categories have
no possible answers: BFCL judges them only on whether a call was made (``checker.py``). A live
question's single turn may hold a system message and earlier user/assistant messages; it is laid
out as BFCL's prompting handlers lay it out (``render_question``).

BFCL describes functions in its own dialect of JSON schema (``"dict"``, ``"float"``,
``"tuple"``, ``"any"``). The model is shown standard JSON-schema tool specs
(``to_tool_spec``); the official checker gets the original descriptions, kept in
``Task.answer["functions"]``, because its type checks are written against BFCL's names.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

from forge_ray.types import Task

ENV_NAME = "function_calling"
NON_LIVE_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
LIVE_CATEGORIES = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance",
                   "live_relevance")
CATEGORIES = NON_LIVE_CATEGORIES + LIVE_CATEGORIES  # every category forge_ray can load
NO_ANSWER_CATEGORIES = ("irrelevance", "live_irrelevance", "live_relevance")  # no possible_answer/ file
VERSION_PREFIX = "BFCL_v4"
INSTALL_HINT = "pip install --no-deps bfcl-eval==2026.3.23 (see requirements/bfcl-nodeps.txt)"

SYSTEM_PROMPT = (
    "You are a function-calling assistant. When one or more of the tools fit the request, "
    "reply with only the tool calls, one <tool_call> block per call, passing every argument "
    "the request gives. When no tool fits, say so in plain text and make no call."
)
# BFCL appends this hint to every Python function description it shows a model.
LANGUAGE_HINT = " Note that the provided function is in Python 3 syntax."

# BFCL type name -> JSON-schema type name ("any" has no JSON-schema type: left untyped).
_JSON_TYPES = {"dict": "object", "float": "number", "tuple": "array", "any": None}
_DROPPED_KEYS = ("optional",)  # BFCL-only markers with no JSON-schema meaning


def data_dir() -> Path:
    """The ``data`` folder of the installed ``bfcl_eval`` package (located, not imported)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the BFCL data needs the bfcl_eval package: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a JSON-lines file; a malformed row raises naming the file
    and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'id'")
            rows.append((lineno, row))
    return rows


def _convert_schema(schema: Any) -> Any:
    """BFCL's parameter schema as JSON schema (recursively through properties and items)."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "type" and isinstance(value, str):
            mapped = _JSON_TYPES.get(value, value)
            if mapped is not None:
                out["type"] = mapped
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _convert_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert_schema(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def to_tool_spec(function: dict[str, Any], hint: str = LANGUAGE_HINT) -> dict[str, Any]:
    """One BFCL function description as an OpenAI-style JSON-schema tool spec."""
    params = _convert_schema(function.get("parameters") or {"type": "dict", "properties": {}})
    params.setdefault("type", "object")
    return {
        "type": "function",
        "function": {
            "name": function["name"],
            "description": (function.get("description") or "") + hint,
            "parameters": params,
        },
    }


_ROLES = ("system", "user", "assistant")


def _check_row(path: Path, lineno: int, row: dict[str, Any]) -> None:
    question, functions = row.get("question"), row.get("function")
    if not (isinstance(question, list) and len(question) == 1 and isinstance(question[0], list) and question[0]):
        raise ValueError(f"{path}:{lineno}: 'question' must hold exactly one non-empty turn (a single-turn category)")
    for i, message in enumerate(question[0]):
        if not (isinstance(message, dict) and message.get("role") in _ROLES and isinstance(message.get("content"), str)):
            raise ValueError(f"{path}:{lineno}: message {i} needs a role in {_ROLES} and a string 'content'")
        if message["role"] == "system" and i > 0:
            raise ValueError(f"{path}:{lineno}: a system message may only open the turn (message {i} is one)")
    if question[0][-1]["role"] != "user":
        raise ValueError(f"{path}:{lineno}: the turn must end with a user message")
    if not (isinstance(functions, list) and all(isinstance(f, dict) and "name" in f for f in functions)):
        raise ValueError(f"{path}:{lineno}: 'function' must be a list of named function descriptions")


def render_question(turn: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat messages of a question's turn, with forge_ray's system prompt in front.

    As BFCL's prompting handlers do (``system_prompt_pre_processing_chat_model``), a turn that
    opens with its own system message keeps a single system message: ours, a blank line, then
    the question's. Every other message (several user messages, earlier assistant replies) is
    kept as it is, in order. Chat templates render one leading system message, so two would
    lose the question's."""
    messages = copy.deepcopy(turn)
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = SYSTEM_PROMPT + "\n\n" + messages[0]["content"]
        return messages
    return [{"role": "system", "content": SYSTEM_PROMPT}, *messages]


def _possible_answers(root: Path, category: str) -> dict[str, Any]:
    """``{id: ground_truth}`` of a category (empty for the ones judged on call presence)."""
    if category in NO_ANSWER_CATEGORIES:
        return {}
    answer_path = root / "possible_answer" / f"{VERSION_PREFIX}_{category}.json"
    return {r["id"]: r.get("ground_truth") for _, r in read_jsonl(answer_path)}


def load_category(category: str, limit: int | None = None, root: Path | None = None) -> list[Task]:
    """The BFCL tasks of ``category`` in file order (the first ``limit`` when given)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; supported: {', '.join(CATEGORIES)}")
    root = root or data_dir()
    prompt_path = root / f"{VERSION_PREFIX}_{category}.json"
    rows = read_jsonl(prompt_path)
    answers = _possible_answers(root, category)
    tasks = []
    for lineno, row in rows[:limit] if limit is not None else rows:
        _check_row(prompt_path, lineno, row)
        if category not in NO_ANSWER_CATEGORIES and not isinstance(answers.get(row["id"]), list):
            raise ValueError(f"{prompt_path}:{lineno}: no possible answer for {row['id']!r} in possible_answer/")
        tasks.append(Task(
            id=row["id"],
            env=ENV_NAME,
            messages=render_question(row["question"][0]),
            tools=[to_tool_spec(f) for f in row["function"]],
            answer={"possible_answers": answers.get(row["id"], []), "functions": row["function"]},
            meta={"category": category, "bfcl_id": row["id"], "source": "bfcl"},
        ))
    return tasks


def category_size(category: str, root: Path | None = None) -> int:
    """How many tasks a category holds (its question file's rows)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; supported: {', '.join(CATEGORIES)}")
    return len(read_jsonl((root or data_dir()) / f"{VERSION_PREFIX}_{category}.json"))


def function_names(categories: tuple[str, ...] = CATEGORIES) -> set[str]:
    """Every function name BFCL's ``categories`` define (for the synthetic generator's
    disjointness check)."""
    root = data_dir()
    return {f["name"] for c in categories for _, row in read_jsonl(root / f"{VERSION_PREFIX}_{c}.json") for f in row["function"]}


def round_robin(queues: list[list[Task]], n: int, what: str) -> list[Task]:
    """``n`` tasks taken round-robin over ``queues`` (one per category, each already in its seeded
    order); ``what`` names the categories in the error when they hold fewer than ``n``."""
    total = sum(len(q) for q in queues)
    if n > total:
        raise ValueError(f"asked for {n} {what} hold {total}")
    out: list[Task] = []
    depth = 0
    while len(out) < n:
        out += [q[depth] for q in queues if depth < len(q)][: n - len(out)]
        depth += 1
    return out
