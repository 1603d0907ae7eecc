"""Tasks of the exercises environment, and its experts.

``ExerciseTasks(set="humaneval")`` serves the 164 HumanEval problems, all in the "heldout"
split (HumanEval is an evaluation set: asking for "train" is an error).
``ExerciseTasks(set="/path/to/exercises")`` serves a directory in the exercise format
(``format.py``); each exercise is "heldout" or "train" by a stable hash of its name and
``split_seed`` (the ``round(heldout_fraction * N)`` names whose hash is smallest), or by an
explicit ``heldout`` list of names.
Membership never depends on the ``seed`` given to ``tasks()``, so SFT, RL and evaluation,
which draw with different seeds, always agree on the split.

A task carries its whole exercise in ``task.answer["exercise"]`` (starter, tests, support and
reference files: JSON), so the reward actor scores it without reading any disk.

``expert(task)`` is the two-turn demonstration Klear-AgentForge trains on: a first attempt
that fails (the reference with one procedural mutation: a flipped comparison or boolean
operator, an off-by-one constant, a swapped ``+``/``-``, a dropped return value), the real
test output the environment answers it with, then the reference solution. It is produced by
playing the episode through ``ExerciseEnv`` and checked to score 1. When no mutant fails the
tests, it is the one-turn expert (``expert_one_turn``: the reference alone).
"""
from __future__ import annotations

import ast
import copy
import hashlib
import logging
import os
import random
from pathlib import Path
from typing import Iterator, Sequence

from envs.exercises.env import SYSTEM_PROMPT, ExerciseEnv, exercise_of, format_reply
from envs.exercises.format import Exercise, ExerciseFormatError, exercise_to_dict, load_exercises
from forge_ray.types import Task

log = logging.getLogger(__name__)

SPLITS = ("train", "heldout")
ENV_NAME = "exercises"


def user_message(ex: Exercise) -> str:
    """The opening user turn: the instructions, then the starter file."""
    path = ex.solution_paths[0]
    return (f"{ex.instructions}\n\n####\n\nThe current content of `{path}`:\n\n```python\n{ex.starter[path].rstrip()}\n```\n\n"
            f"Reply with the complete new content of `{path}` in one ```python block.")


def _name_hash(name: str, split_seed: int) -> float:
    digest = hashlib.sha1(f"exercises:{split_seed}:{name}".encode()).hexdigest()
    return int(digest[:15], 16) / 16 ** 15


class ExerciseTasks:
    """TaskSource of coding exercises (see the module docstring).

    ``set``: "humaneval" or a directory of exercises. ``heldout_fraction`` / ``heldout`` /
    ``split_seed``: the split of a directory set. ``backend``, ``timeout_s``: sandbox backend
    and test-run limit of the experts' episodes. ``expert_tries``: mutants tried before the
    expert falls back to one turn. ``heldout_set``: another set ("humaneval" or a directory)
    that is the held-out split, this one then being all train (mined exercises for training,
    HumanEval for evaluation).
    """

    def __init__(self, set: str = "humaneval", heldout_fraction: float = 0.2, heldout: Sequence[str] | None = None,
                 split_seed: int = 0, backend: str = "auto", timeout_s: float = 20.0, expert_tries: int = 12,
                 heldout_set: str | None = None):
        if not 0.0 <= heldout_fraction <= 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
        self.set = str(set)
        self.heldout_fraction, self.split_seed = float(heldout_fraction), int(split_seed)
        self.heldout_names = None if heldout is None else [str(h) for h in heldout]
        self.backend, self.timeout_s, self.expert_tries = backend, float(timeout_s), int(expert_tries)
        self._exercises: list[Exercise] | None = None
        self._heldout_by_hash: set[str] | None = None
        self.heldout_source = None if heldout_set is None else ExerciseTasks(heldout_set, heldout_fraction=1.0, backend=backend,
                                                                              timeout_s=timeout_s, expert_tries=expert_tries)

    @property
    def label(self) -> str:
        """The set's name in task ids: "humaneval", or the directory's name."""
        return "humaneval" if self.set == "humaneval" else Path(self.set).resolve().name.removesuffix(".tar.gz")

    @property
    def exercises(self) -> list[Exercise]:
        """The set's exercises, loaded once, in name order."""
        if self._exercises is None:
            if self.set == "humaneval":
                from envs.exercises.humaneval import humaneval_exercises

                loaded = humaneval_exercises()
            elif os.path.isdir(self.set) or (self.set.endswith(".tar.gz") and os.path.isfile(self.set)):
                loaded = load_exercises(self.set)
            else:
                raise ValueError(f"exercise set {self.set!r}: not 'humaneval', a directory of exercises, or its .tar.gz")
            for ex in loaded:
                if len(ex.solution_paths) != 1:
                    raise ExerciseFormatError(f"exercise {ex.name} ({ex.source}): needs exactly one solution file, has {ex.solution_paths}")
            self._check_heldout(loaded)
            self._exercises = loaded
        return self._exercises

    def _check_heldout(self, exercises: list[Exercise]) -> None:
        if self.heldout_names is not None:
            unknown = sorted(set(self.heldout_names) - {ex.name for ex in exercises})
            if unknown:
                raise ValueError(f"heldout names not in exercise set {self.set!r}: {unknown}")

    def split_of(self, ex: Exercise) -> str:
        if self.set == "humaneval":
            return "heldout"
        if self.heldout_source is not None:
            return "train"
        if self.heldout_names is not None:
            return "heldout" if ex.name in self.heldout_names else "train"
        if self._heldout_by_hash is None:  # the round(fraction * N) names of smallest hash
            ranked = sorted(self.exercises, key=lambda e: _name_hash(e.name, self.split_seed))
            self._heldout_by_hash = {e.name for e in ranked[:round(self.heldout_fraction * len(ranked))]}
        return "heldout" if ex.name in self._heldout_by_hash else "train"

    def task_of(self, ex: Exercise) -> Task:
        split = self.split_of(ex)
        return Task(
            id=f"{self.label}/{ex.name}", env=ENV_NAME,
            messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_message(ex)}],
            tools=[], answer={"set": self.set, "exercise": exercise_to_dict(ex)},
            meta={"split": split, "set": self.label, "exercise": ex.name, "category": self.label},
        )

    def all_tasks(self, split: str | None = None) -> list[Task]:
        """Every task of ``split`` (all splits when None), in exercise-name order."""
        if self.heldout_source is not None and split == "heldout":
            return self.heldout_source.all_tasks("heldout")
        if self.heldout_source is not None and split is None:
            return self.all_tasks("train") + self.heldout_source.all_tasks("heldout")
        return [self.task_of(ex) for ex in self.exercises if split is None or self.split_of(ex) == split]

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """``n`` tasks of ``split`` in an order shuffled by ``seed``. Past the end of the split,
        the exercises repeat in a new shuffle, with ``@1``, ``@2``... added to their ids (task ids
        stay unique); the first ``k`` tasks of a call are those of the call with ``n = k``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split == "heldout" and self.heldout_source is not None:
            return self.heldout_source.tasks(split, n, seed)
        pool = self.all_tasks(split)
        if not pool and n > 0:
            if self.set == "humaneval":
                raise ValueError("the humaneval exercise set is for evaluation only: all 164 problems are in the "
                                 "'heldout' split and 'train' is empty; train on a directory of exercises (set=DIR)")
            raise ValueError(f"exercise set {self.set!r} has no {split!r} exercises (heldout_fraction={self.heldout_fraction}, "
                             f"heldout={self.heldout_names})")
        out: list[Task] = []
        for epoch in range(-(-n // len(pool)) if pool else 0):
            order = list(pool)
            random.Random(f"exercises:{split}:{seed}:{epoch}").shuffle(order)
            out += [t if epoch == 0 else Task(f"{t.id}@{epoch}", t.env, copy.deepcopy(t.messages), [], copy.deepcopy(t.answer),
                                              dict(t.meta)) for t in order]
        return out[:n]

    # ---------------------------------------------------------------- experts

    def _env(self) -> ExerciseEnv:
        return ExerciseEnv(backend=self.backend, timeout_s=self.timeout_s, max_attempts=2)

    def expert_one_turn(self, task: Task) -> list[dict]:
        """The reference solution as one reply, checked to score 1 (else ValueError: a broken exercise)."""
        ex = exercise_of(task)
        path = ex.solution_paths[0]
        reply = {"role": "assistant", "content": format_reply(path, ex.reference[path])}
        env = self._env()
        try:
            env.open(task)
            env.step(reply["content"])
            reward = env.score(task, [*task.messages, reply], env.snapshot())
        finally:
            env.close()
        if reward.total != 1.0:
            raise ValueError(f"task {task.id}: the reference solution does not pass the tests ({reward})")
        return [reply]

    def expert(self, task: Task) -> list[dict]:
        """Klear's two-turn demonstration (a failing mutant, its real test output, the
        reference), or the one-turn expert when no mutant among ``expert_tries`` fails."""
        ex = exercise_of(task)
        path = ex.solution_paths[0]
        final = {"role": "assistant", "content": format_reply(path, ex.reference[path])}
        for mutant in list(mutants(ex.reference[path], f"exercises:mutant:{task.id}"))[:self.expert_tries]:
            first = {"role": "assistant", "content": format_reply(path, mutant)}
            env = self._env()
            try:
                env.open(task)
                failed = env.step(first["content"])
                if failed.done or failed.info.get("timed_out"):
                    continue  # the mutant passes (or loops): not a useful first attempt
                fixed = env.step(final["content"])
                conversation = [first, *failed.messages, final]
                reward = env.score(task, [*task.messages, *conversation], env.snapshot())
            finally:
                env.close()
            if fixed.done and reward.total == 1.0:
                return conversation
            raise ValueError(f"task {task.id}: the reference solution does not pass the tests after a failed try ({reward})")
        log.info("exercises: no failing mutant for %s among %d tries; one-turn expert", task.id, self.expert_tries)
        return self.expert_one_turn(task)


# ---------------------------------------------------------------- mutations


class _Edits(ast.NodeVisitor):
    """Collects ``(node, replacement source)`` for every single-point mutation of a module."""

    _FLIP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
             ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
    _ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.FloorDiv: ast.Mult, ast.Mod: ast.FloorDiv}

    def __init__(self) -> None:
        self.edits: list[tuple[ast.AST, str]] = []

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        return None  # positions inside f-strings are unreliable before Python 3.12

    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            if type(op) in self._FLIP:
                ops = list(node.ops)
                ops[i] = self._FLIP[type(op)]()
                self.edits.append((node, "(" + ast.unparse(ast.Compare(node.left, ops, node.comparators)) + ")"))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if type(node.op) in self._ARITH:
            self.edits.append((node, "(" + ast.unparse(ast.BinOp(node.left, self._ARITH[type(node.op)](), node.right)) + ")"))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        flipped = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.edits.append((node, "(" + ast.unparse(ast.BoolOp(flipped, node.values)) + ")"))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, int) and not isinstance(node.value, bool) and abs(node.value) < 10 ** 6:
            self.edits.append((node, str(node.value + 1)))
            if node.value > 0:
                self.edits.append((node, str(node.value - 1)))
        elif isinstance(node.value, bool):
            self.edits.append((node, str(not node.value)))

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self.edits.append((node, "return None"))
        self.generic_visit(node)


def _apply(source: bytes, lines: list[int], node: ast.AST, text: str) -> bytes:
    """``source`` with ``node``'s span replaced by ``text`` (ast columns are UTF-8 byte offsets)."""
    start = lines[node.lineno - 1] + node.col_offset
    end = lines[node.end_lineno - 1] + node.end_col_offset
    return source[:start] + text.encode() + source[end:]


def mutants(code: str, seed: str) -> Iterator[str]:
    """Single-point mutants of ``code`` that still parse, in an order shuffled by ``seed``."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return
    visitor = _Edits()
    visitor.visit(tree)
    source = code.encode()
    lines = [0]
    for line in source.splitlines(keepends=True):
        lines.append(lines[-1] + len(line))
    order = list(range(len(visitor.edits)))
    random.Random(seed).shuffle(order)
    for i in order:
        node, text = visitor.edits[i]
        mutant = _apply(source, lines, node, text).decode("utf-8", "replace")
        try:
            ast.parse(mutant)
        except SyntaxError:
            continue
        if mutant != code:
            yield mutant

