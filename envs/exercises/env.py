"""The coding-exercise environment: Aider-Polyglot's whole-file protocol, two tries.

The user turn gives the instructions and the starter file; the model replies with the whole
solution file in exactly one fenced ```python block (text around it is ignored). Each reply
is one try:

- not exactly one python block: a format-error observation (it uses the try);
- otherwise the tests run on the file in a fresh sandbox (``runner.py``): all pass -> done;
  a failure on the first try -> the (truncated) test output and "fix the code so the tests
  pass", once; a failure on the last try -> done.

``snapshot()`` is ``{"solution": {path: text}, "attempts": n}``, the file as the last
well-formed reply left it; ``score`` re-runs the tests on it in a fresh sandbox, so a fresh
instance scores a snapshot exactly as the episode's own instance does. Without a snapshot
the same file is taken from the conversation (the last reply with exactly one python block).
Reward: 1 iff all tests pass; parts ``passed``, ``attempts``, ``format_ok``.
"""
from __future__ import annotations

import re
from typing import Any

from envs.exercises.format import Exercise, ExerciseFormatError, exercise_from_dict
from envs.exercises.runner import DEFAULT_OUTPUT_CHARS, ExerciseRun, run_exercise_tests, sanitize
from forge_ray.env.protocol import EnvBase
from forge_ray.types import Action, RewardBreakdown, StepResult, Task

SYSTEM_PROMPT = (
    "You are an expert Python programmer. You are given a coding exercise and the current content "
    "of its solution file. Reply with the complete new content of the solution file in exactly one "
    "fenced code block that starts with ```python and ends with ```. Write the whole file, not a diff. "
    "Keep the names of existing functions and classes: tests import them. Use only the standard library. "
    "If the tests fail you will be shown their output once, and may reply with a corrected file."
)

PYTHON_TAGS = ("python", "py", "python3")
# A fence line: up to 3 spaces, 3+ backticks, then an optional info string (CommonMark).
_FENCE = re.compile(r"^ {0,3}(`{3,})\s*([^`\s]*)[^`]*$")


def fenced_blocks(text: str) -> tuple[list[tuple[str, str]], bool]:
    """``([(language tag, code)], unclosed)`` of the fenced blocks of ``text``. A block closes
    at a fence line of at least as many backticks with nothing after them."""
    blocks: list[tuple[str, str]] = []
    tag, ticks, body = None, "", []
    for line in text.splitlines():
        match = _FENCE.match(line)
        if tag is None:
            if match:
                tag, ticks, body = match.group(2).lower(), match.group(1), []
            continue
        if match and match.group(1).startswith(ticks) and not match.group(2) and line.strip() == match.group(1):
            blocks.append((tag, "\n".join(body) + "\n"))
            tag = None
            continue
        body.append(line)
    return blocks, tag is not None


def extract_solution(text: Any) -> tuple[str | None, str | None]:
    """``(code, None)`` when ``text`` holds exactly one python block, else ``(None, why)``."""
    if not isinstance(text, str):
        return None, "the reply is not text"
    blocks, unclosed = fenced_blocks(text)
    python = [code for tag, code in blocks if tag in PYTHON_TAGS]
    if len(python) == 1:
        return sanitize(python[0]), None
    if len(python) > 1:
        return None, f"the reply has {len(python)} ```python blocks; send exactly one, holding the whole file"
    if unclosed:
        return None, "the reply has a code block that is never closed with ```"
    if blocks:
        return None, "the reply has no ```python block (label the code block ```python)"
    return None, "the reply has no ```python code block"


def format_reply(path: str, code: str) -> str:
    """A well-formed reply carrying ``code`` as the file ``path`` (what the experts send)."""
    return f"{path}\n```python\n{code.rstrip()}\n```"


def solution_from_messages(messages: Any, path: str) -> tuple[dict[str, str], int, bool]:
    """``(solution, replies, all well formed)`` from a conversation: the code of the last
    assistant reply with exactly one python block, as the file ``path``."""
    solution: dict[str, str] = {}
    replies, well_formed = 0, True
    for m in messages if isinstance(messages, (list, tuple)) else []:
        if not isinstance(m, dict) or m.get("role") != "assistant":
            continue
        replies += 1
        code, _ = extract_solution(m.get("content"))
        if code is None:
            well_formed = False
        else:
            solution = {path: code}
    return solution, replies, well_formed and replies > 0


class ExerciseEnv(EnvBase):
    """Env for ``exercises`` tasks (``task.answer`` holds the exercise, see ``tasks.py``).

    ``max_attempts`` tries per episode (Aider's benchmark: 2); ``timeout_s`` bounds one test
    run; ``backend`` is the sandbox backend; ``max_output_chars`` caps the test output shown.
    """

    blocking = True  # every step runs a test suite

    def __init__(self, backend: str = "auto", timeout_s: float = 20.0, max_attempts: int = 2,
                 max_output_chars: int = DEFAULT_OUTPUT_CHARS):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.backend, self.timeout_s = backend, float(timeout_s)
        self.max_attempts, self.max_output_chars = int(max_attempts), int(max_output_chars)
        self._clear()

    def _clear(self) -> None:
        self.task: Task | None = None
        self.exercise: Exercise | None = None
        self.attempts = 0
        self.solution: dict[str, str] = {}
        self.done = False

    def open(self, task: Task) -> Task:
        """Start an episode; ``ExerciseFormatError`` when the task carries no valid exercise."""
        self._clear()
        self.exercise = exercise_of(task)
        if len(self.exercise.solution_paths) != 1:
            raise ExerciseFormatError(f"exercise {self.exercise.name!r}: this environment needs exactly one solution "
                                      f"file, it has {self.exercise.solution_paths}")
        self.task = task
        return task

    def _run(self, ex: Exercise, solution: dict[str, str]) -> ExerciseRun:
        return run_exercise_tests(ex, solution, backend=self.backend, timeout_s=self.timeout_s,
                                  max_output_chars=self.max_output_chars)

    def step(self, action: Action | str) -> StepResult:
        if self.exercise is None:
            raise RuntimeError("ExerciseEnv.step before open()")
        if self.done:
            return StepResult([], True, {"attempts": self.attempts})
        self.attempts += 1
        last = self.attempts >= self.max_attempts
        path = self.exercise.solution_paths[0]
        code, problem = extract_solution(action if isinstance(action, str) else getattr(action, "text", None))
        info: dict[str, Any] = {"attempts": self.attempts, "format_ok": code is not None}
        if code is None:
            self.done = last
            info["passed"] = False
            text = f"Format error: {problem}. Reply with the complete content of `{path}` in one ```python block."
            return StepResult([] if last else [{"role": "user", "content": text}], last, info)
        self.solution = {path: code}
        run = self._run(self.exercise, self.solution)
        info.update(passed=run.passed, timed_out=run.timed_out)
        self.done = run.passed or last
        if self.done:
            return StepResult([], True, info)
        text = (f"{run.output}\n\n####\n\nThe tests failed (output above). The tests are correct: do not change them. "
                f"Fix the code in `{path}` so the tests pass, and reply with the complete corrected file in one "
                f"```python block.")
        return StepResult([{"role": "user", "content": text}], False, info)

    def snapshot(self) -> dict[str, Any]:
        return {"solution": dict(self.solution), "attempts": self.attempts}

    def score(self, task: Task, messages: list[dict], snapshot: dict[str, Any] | None = None) -> RewardBreakdown:
        """1 iff the tests pass on the snapshot's file (or the conversation's last file); a
        task without a valid exercise, or a sandbox that cannot start, sets ``error``."""
        parts = {"passed": 0.0, "attempts": 0.0, "format_ok": 0.0}
        try:
            ex = exercise_of(task)
        except ExerciseFormatError as e:
            return RewardBreakdown(0.0, parts, error=f"task {getattr(task, 'id', '?')}: {e}")
        path = ex.solution_paths[0]
        solution, replies, well_formed = solution_from_messages(messages, path)
        if isinstance(snapshot, dict) and isinstance(snapshot.get("solution"), dict):
            solution = {p: sanitize(t) for p, t in snapshot["solution"].items() if p in ex.starter}
            if isinstance(snapshot.get("attempts"), int):
                replies = snapshot["attempts"]
        parts.update(attempts=float(replies), format_ok=float(well_formed))
        if not solution:
            return RewardBreakdown(0.0, parts)
        try:
            run = self._run(ex, solution)
        except Exception as e:  # noqa: BLE001 - no sandbox is a scoring failure (masked), not a 0
            return RewardBreakdown(0.0, parts, error=f"test run failed: {type(e).__name__}: {e}")
        parts["passed"] = float(run.passed)
        return RewardBreakdown(parts["passed"], parts)

    def close(self) -> None:
        self._clear()


def exercise_of(task: Task) -> Exercise:
    """The exercise a task carries in ``task.answer["exercise"]``."""
    answer = getattr(task, "answer", None)
    if not isinstance(answer, dict) or "exercise" not in answer:
        raise ExerciseFormatError(f"task {getattr(task, 'id', '?')}: answer has no 'exercise' (build tasks with ExerciseTasks)")
    return exercise_from_dict(answer["exercise"])
