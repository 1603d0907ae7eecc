"""BFCL single-turn tasks, read from the installed ``bfcl-eval`` package's data files.

Nothing here touches the network: the questions (``data/BFCL_v4_<category>.json``) and the
possible answers (``data/possible_answer/BFCL_v4_<category>.json``) ship inside the wheel, one
JSON object per line. A bad line fails with the file and line number.

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
CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
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


def _check_row(path: Path, lineno: int, row: dict[str, Any]) -> None:
    question, functions = row.get("question"), row.get("function")
    if not (isinstance(question, list) and question and isinstance(question[0], list)):
        raise ValueError(f"{path}:{lineno}: 'question' must be a non-empty list of turns")
    if not (isinstance(functions, list) and all(isinstance(f, dict) and "name" in f for f in functions)):
        raise ValueError(f"{path}:{lineno}: 'function' must be a list of named function descriptions")


def load_category(category: str, limit: int | None = None, root: Path | None = None) -> list[Task]:
    """The BFCL tasks of ``category`` in file order (the first ``limit`` when given)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; supported: {', '.join(CATEGORIES)}")
    root = root or data_dir()
    prompt_path = root / f"{VERSION_PREFIX}_{category}.json"
    rows = read_jsonl(prompt_path)
    answers: dict[str, Any] = {}
    if category != "irrelevance":
        answer_path = root / "possible_answer" / f"{VERSION_PREFIX}_{category}.json"
        answers = {r["id"]: r.get("ground_truth") for _, r in read_jsonl(answer_path)}
    tasks = []
    for lineno, row in rows[:limit] if limit is not None else rows:
        _check_row(prompt_path, lineno, row)
        if category != "irrelevance" and not isinstance(answers.get(row["id"]), list):
            raise ValueError(f"{prompt_path}:{lineno}: no possible answer for {row['id']!r} in possible_answer/")
        tasks.append(Task(
            id=row["id"],
            env=ENV_NAME,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, *copy.deepcopy(row["question"][0])],
            tools=[to_tool_spec(f) for f in row["function"]],
            answer={"possible_answers": answers.get(row["id"], []), "functions": row["function"]},
            meta={"category": category, "bfcl_id": row["id"], "source": "bfcl"},
        ))
    return tasks


def function_names(categories: tuple[str, ...] = CATEGORIES) -> set[str]:
    """Every function name BFCL's ``categories`` define (for the synthetic generator's
    disjointness check)."""
    root = data_dir()
    return {f["name"] for c in categories for _, row in read_jsonl(root / f"{VERSION_PREFIX}_{c}.json") for f in row["function"]}
