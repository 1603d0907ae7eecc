"""Task source of the SWE environment: the instances of a tasks folder as ``Task``s.

A tasks folder (``forge-ray swe make-tasks``) holds ``train.parquet`` and ``heldout.parquet``
(one row per instance: instance_id, repo, problem_statement, patch, bug_patch, FAIL_TO_PASS,
PASS_TO_PASS, ...) and the clean repositories under ``repos/`` (folders or ``.tar.gz``). A task opens with the system
prompt (mini-swe-agent-plus's instructions, adapted: THOUGHT + one bash block, the edit tool,
the submit command, what not to edit, the recommended workflow) and the problem statement;
its ``answer`` is the row plus ``tasks_dir``, all ``SweEnv`` needs to play and score it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Iterator

from envs.swe.protocol import SUBMIT_COMMAND
from forge_ray.types import Task

SPLITS = ("train", "heldout")
REQUIRED = ("instance_id", "repo", "problem_statement", "patch", "bug_patch", "FAIL_TO_PASS", "PASS_TO_PASS")

SYSTEM_PROMPT = """You are a software engineer fixing a problem in a Python repository. You work in a \
Linux shell: each reply runs ONE shell command, you read its output, and you continue until the \
problem is fixed. Then you submit.

Every reply has exactly this shape: a THOUGHT section, then ONE bash code block with ONE command.

THOUGHT: what you know so far and why you run the command below.

```bash
your_command_here
```

Rules:
- Exactly one ```bash block per reply, holding one command; chain steps with && or ||. A reply \
with no block, several blocks or no THOUGHT section is rejected (and still costs a step).
- Every command runs in a fresh shell in the repository (/work): `cd` and variables do not carry \
over. A command is stopped after {timeout} seconds. Never start interactive programs (editors, \
pagers, a bare python prompt).
- You have {steps} commands in total, the submission included.
- Change source files only. Do NOT change tests or configuration files (tests/, test_*.py, \
conftest.py, pyproject.toml, setup.cfg, tox.ini, pytest.ini): changes to them are discarded.

Recommended workflow:
1. Find and read the relevant code: grep -rn "name" --include="*.py" . and nl -ba FILE | sed -n '10,40p'
2. Reproduce the problem: run a related test (python3 -m pytest -q TEST_ID) or a small script.
3. Fix the source with edit_via_str_replace.
4. Run the test or script again to check the fix; think about edge cases.
5. Submit.

Editing: `edit_via_str_replace FILE -- OLD NEW` replaces the text OLD in FILE by NEW. OLD must \
occur exactly once in FILE: exit code 2 means it was not found (check spaces and indentation), \
exit code 3 means it occurs several times (their line numbers are printed; include more \
surrounding lines). On success it prints the edited lines with their numbers. Pass multi-line \
text like this:

```bash
old=$(cat <<'OLD'
def area(width, height):
    return width + height
OLD
) && new=$(cat <<'NEW'
def area(width, height):
    return width * height
NEW
) && edit_via_str_replace shapes.py -- "$old" "$new"
```

A new file: cat <<'EOF' > path/new_file.py ... EOF

Submitting: when the problem is fixed, or when you cannot make more progress, reply with this \
command alone (you cannot run anything after it):

```bash
{submit}
```"""

USER_TEMPLATE = """<pr_description>
{problem}
</pr_description>

The repository is in /work, your current directory. Change its non-test source files so that \
the problem described above is fixed."""


def system_prompt(step_limit: int = 30, command_timeout_s: float = 60.0) -> str:
    return SYSTEM_PROMPT.format(timeout=f"{command_timeout_s:g}", steps=step_limit, submit=SUBMIT_COMMAND)


def _check_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """The row with its id lists as plain lists; ``ValueError`` naming ``where`` otherwise."""
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)}")
    for key in ("instance_id", "repo", "problem_statement", "patch", "bug_patch"):
        if not isinstance(row[key], str) or (key != "problem_statement" and not row[key].strip()):
            raise ValueError(f"{where}: {key} must be a non-empty string, got {row[key]!r:.80}")
    out = dict(row)
    for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
        value = row[key]
        if value is None or isinstance(value, str) or not all(isinstance(t, str) and t for t in value):
            raise ValueError(f"{where}: {key} must be a list of pytest node ids, got {value!r:.120}")
        out[key] = list(value)
    if not out["FAIL_TO_PASS"]:
        raise ValueError(f"{where}: FAIL_TO_PASS is empty")
    return out


class SweTasks:
    """TaskSource over a tasks folder.

    ``tasks(split, n, seed)``: ``n`` instances of ``split`` in an order shuffled by ``seed``
    (deterministic; the same seed gives the same list); when ``n`` exceeds the split's size,
    all of them. ``step_limit``/``command_timeout_s`` are written into the system prompt and,
    with ``backend``/``root``/``test_timeout_s``, configure the ``SweEnv`` the expert plays in:
    give the values the environment of the job uses.

    Expert conversations are played once and kept in ``expert_cache`` (default
    ``<tasks_dir>/experts/``, one JSON file per instance, keyed by its gold patch): playing one
    takes seconds of sandboxed commands, and SFT and the tiny model's tokenizer ask for
    hundreds. An unwritable cache is skipped.
    """

    def __init__(self, tasks_dir: str, backend: str = "auto", root: str | None = None, step_limit: int = 30,
                 command_timeout_s: float = 60.0, test_timeout_s: float = 300.0, expert_cache: str | None = None) -> None:
        self.tasks_dir = Path(tasks_dir).resolve()
        if not self.tasks_dir.is_dir():
            raise ValueError(f"SweTasks: tasks folder {self.tasks_dir} does not exist "
                             "(make one with `forge-ray swe make-tasks`)")
        self.env_kwargs = {"backend": backend, "root": root, "step_limit": step_limit,
                           "command_timeout_s": command_timeout_s, "test_timeout_s": test_timeout_s}
        self.system_prompt = system_prompt(step_limit, command_timeout_s)
        self.expert_cache = Path(expert_cache) if expert_cache else self.tasks_dir / "experts"
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def rows(self, split: str) -> list[dict[str, Any]]:
        """The checked rows of ``split``, sorted by instance_id (cached)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if split not in self._rows:
            import pyarrow.parquet as pq

            path = self.tasks_dir / f"{split}.parquet"
            if not path.is_file():
                raise ValueError(f"SweTasks: {path} does not exist")
            raw = pq.read_table(path).to_pylist()
            rows = [_check_row(r, f"{path}, row {i} ({r.get('instance_id', '?')!r})") for i, r in enumerate(raw)]
            ids = [r["instance_id"] for r in rows]
            if len(set(ids)) != len(ids):
                raise ValueError(f"{path}: duplicate instance_id {next(i for i in ids if ids.count(i) > 1)!r}")
            self._rows[split] = sorted(rows, key=lambda r: r["instance_id"])
        return self._rows[split]

    def task(self, row: dict[str, Any], split: str = "train") -> Task:
        answer = {**row, "tasks_dir": str(self.tasks_dir)}
        messages = [{"role": "system", "content": self.system_prompt},
                    {"role": "user", "content": USER_TEMPLATE.format(problem=row["problem_statement"].strip())}]
        return Task(id=row["instance_id"], env="swe", messages=messages, tools=[], answer=answer,
                    meta={"split": split, "repo": row["repo"]})

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rows = list(self.rows(split))
        random.Random(seed).shuffle(rows)
        return [self.task(r, split) for r in rows[:n]]

    def expert(self, task: Task) -> list[dict]:
        """The scripted expert's continuation of ``task.messages`` (assistant turns and their
        real observations), checked to reach reward 1; ``ExpertError`` otherwise."""
        from envs.swe.expert import expert_conversation

        key = hashlib.sha1(task.answer["patch"].encode()).hexdigest()[:12]
        path = self.expert_cache / f"{task.id}.{key}.json"
        if path.is_file():
            return json.loads(path.read_text())
        conversation = expert_conversation(task, self.env_kwargs)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(conversation))
            os.replace(tmp, path)
        except OSError:  # a read-only tasks folder: play it again next time
            pass
        return conversation

    def verify_expert(self, task: Task) -> float:
        """Replay the expert and return its reward."""
        from envs.swe.expert import play_expert

        return play_expert(task, self.env_kwargs)[1].total


def expert_episodes(tasks_dir: str, split: str = "train", limit: int | None = None) -> Iterator[tuple[str, str, list[dict], bool]]:
    """``(package, task id, messages, passed)`` of the scripted expert's episode on each task of
    ``split`` (played in the sandbox once, then read from the expert cache; each replayed to
    reward 1 when cached): environment-native mid-training data (``forge-ray data build-mt
    swe-experts:TASKS_DIR``)."""
    source = SweTasks(tasks_dir)
    for row in source.rows(split)[:limit]:
        task = source.task(row, split)
        yield row.get("package") or row["repo"], task.id, task.messages + source.expert(task), True
