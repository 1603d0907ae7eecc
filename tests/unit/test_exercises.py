"""The exercises environment (envs/exercises): format, HumanEval conversion, sandboxed test
runs, the two-try episode, snapshot scoring, experts, and the pass@k estimator.

Test runs go through the real bubblewrap sandbox (skipped, with the reason, where bwrap
cannot start a sandbox); the format and pass@k tests need no sandbox.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.exercises import ExerciseEnv, ExerciseFormatError, ExerciseTasks, load_exercises, run_exercise_tests, write_exercise
from envs.exercises.env import extract_solution, format_reply
from envs.exercises.format import Exercise, exercise_from_dict, exercise_to_dict
from envs.exercises.humaneval import humaneval_exercises
from envs.exercises.tasks import mutants
from forge_ray.chat import parse_action
from forge_ray.env.protocol import Env
from forge_ray.env.sandbox import bwrap_problem
from forge_ray.eval.code import CodeEvalConfig, pass_at_k, run_code_eval

needs_sandbox = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap unusable: {bwrap_problem()}")

LEAP_REFERENCE = "def leap_year(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)\n"
LEAP_WRONG = "def leap_year(year):\n    return year % 4 == 0\n"
LEAP_TEST = '''import unittest

from leap import leap_year


class LeapTest(unittest.TestCase):
    def test_not_divisible_by_4(self):
        self.assertIs(leap_year(2015), False)

    def test_divisible_by_4_not_by_100(self):
        self.assertIs(leap_year(1996), True)

    def test_divisible_by_100_not_by_400(self):
        self.assertIs(leap_year(2100), False)

    def test_divisible_by_400(self):
        self.assertIs(leap_year(2000), True)
'''


def _write_leap(root: Path) -> Path:
    """A hand-written exercise in the Exercism layout, all optional docs included."""
    folder = root / "leap"
    files = {
        ".docs/introduction.md": "Calendars.\n",
        ".docs/instructions.md": "Tell whether a year is a leap year.\n",
        ".docs/instructions.append.md": "Return a bool.\n",
        ".meta/config.json": json.dumps({"authors": ["x"], "files": {"solution": ["leap.py"], "test": ["leap_test.py"],
                                                                     "example": [".meta/example.py"]}}),
        ".meta/example.py": LEAP_REFERENCE,
        "leap.py": "def leap_year(year):\n    pass\n",
        "leap_test.py": LEAP_TEST,
    }
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


@pytest.fixture
def leap(tmp_path: Path) -> Exercise:
    _write_leap(tmp_path / "set")
    return load_exercises(tmp_path / "set")[0]


def _task(ex: Exercise, tmp_path: Path):
    folder = tmp_path / "one"
    write_exercise(ex, folder)
    return ExerciseTasks(set=str(folder), heldout_fraction=1.0).all_tasks()[0]


def _env(**kw) -> ExerciseEnv:
    return ExerciseEnv(backend="bwrap", **kw)


def _play(env: ExerciseEnv, task, replies: list[str]):
    """Open ``task``, send ``replies`` until done; the messages, the last step and the reward."""
    env.open(task)
    messages, result = list(task.messages), None
    for text in replies:
        messages.append({"role": "assistant", "content": text})
        result = env.step(parse_action(text))
        messages += result.messages
        if result.done:
            break
    return messages, result, env.score(task, messages, env.snapshot())


# ------------------------------------------------------------------------- format


def test_load_layout_and_round_trip(leap: Exercise, tmp_path: Path) -> None:
    assert leap.name == "leap" and leap.instructions == "Calendars.\n\nTell whether a year is a leap year.\n\nReturn a bool."
    assert leap.starter == {"leap.py": "def leap_year(year):\n    pass\n"} and leap.reference == {"leap.py": LEAP_REFERENCE}
    assert list(leap.tests) == ["leap_test.py"]
    for ex in [leap, *humaneval_exercises()[:3]]:
        folder = write_exercise(ex, tmp_path / "out")
        assert load_exercise_equal(ex, folder)
        assert exercise_from_dict(json.loads(json.dumps(exercise_to_dict(ex)))) == ex
    # a nested Exercism tree (exercises/practice/<name>) loads as it is
    _write_leap(tmp_path / "track" / "exercises" / "practice")
    assert [e.name for e in load_exercises(tmp_path / "track")] == ["leap"]


def load_exercise_equal(ex: Exercise, folder: Path) -> bool:
    (loaded,) = load_exercises(folder)
    return loaded == ex and loaded.source == str(folder)


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / ".meta/config.json").unlink(), "has .docs/instructions.md but no .meta/config.json"),
    (lambda f: (f / ".meta/config.json").write_text("{nope"), "config.json: not valid JSON"),
    (lambda f: (f / "leap_test.py").unlink(), "missing file leap_test.py"),
    (lambda f: (f / ".docs/instructions.md").unlink(), "missing file .docs/instructions.md"),
    (lambda f: (f / ".meta/config.json").write_text('{"files": {"solution": ["../leap.py"], "test": ["leap_test.py"], '
                                                     '"example": [".meta/example.py"]}}'), "must be relative and stay inside"),
    (lambda f: (f / ".meta/config.json").write_text('{"files": {"solution": ["leap.py"], "test": ["leap_test.py"], '
                                                     '"example": []}}'), "files.example is empty"),
])
def test_format_errors_name_the_file(tmp_path: Path, breakage, message: str) -> None:
    folder = _write_leap(tmp_path / "set")
    breakage(folder)
    with pytest.raises(ExerciseFormatError, match="leap") as err:
        load_exercises(tmp_path / "set")
    assert message in str(err.value)


def test_humaneval_conversion() -> None:
    exercises = humaneval_exercises()
    assert len(exercises) == 164 and len({e.name for e in exercises}) == 164
    ex = exercises[38]  # decode_cyclic: check() uses the prompt's encode_cyclic helper
    assert ex.name == "038-decode-cyclic" and ex.solution_paths == ["decode_cyclic.py"]
    assert ex.starter["decode_cyclic.py"].endswith('    """\n    pass\n')
    assert "def encode_cyclic" in ex.tests["decode_cyclic_test.py"] and "check(decode_cyclic)" in ex.tests["decode_cyclic_test.py"]
    with pytest.raises(ValueError, match="evaluation only"):
        ExerciseTasks().tasks("train", 1, 0)
    heldout = ExerciseTasks().tasks("heldout", 200, 3)
    assert len(heldout) == 200 and len({t.id for t in heldout}) == 200 and heldout[:5] == ExerciseTasks().tasks("heldout", 5, 3)
    assert json.loads(json.dumps(heldout[0].answer)) == heldout[0].answer


def test_directory_split_is_stable(tmp_path: Path) -> None:
    for i in range(10):
        ex = Exercise(f"ex{i}", "Do it.", {"a.py": "x = 0\n"}, {"a_test.py": "def test_a():\n    pass\n"}, {"a.py": "x = 1\n"})
        write_exercise(ex, tmp_path)
    src = ExerciseTasks(set=str(tmp_path), heldout_fraction=0.3, split_seed=1)
    train, held = src.all_tasks("train"), src.all_tasks("heldout")
    assert len(train) == 7 and len(held) == 3
    assert {t.id for t in src.tasks("train", 20, 5)} >= {t.id for t in train}  # wraps into a second epoch
    assert not {t.meta["exercise"] for t in src.tasks("train", 8, 9)} & {t.meta["exercise"] for t in held}
    explicit = ExerciseTasks(set=str(tmp_path), heldout=["ex3"])
    assert [t.meta["exercise"] for t in explicit.all_tasks("heldout")] == ["ex3"]
    with pytest.raises(ValueError, match="not in exercise set"):
        ExerciseTasks(set=str(tmp_path), heldout=["nope"]).all_tasks()


def test_reply_extraction() -> None:
    assert extract_solution("Here:\n```python\nx = 1\n```\nDone.") == ("x = 1\n", None)
    assert extract_solution(format_reply("a.py", "y = 2\n"))[0] == "y = 2\n"
    assert extract_solution("```python\n```py\nnested\n```")[0] == "```py\nnested\n"  # a tagged fence inside stays code
    assert "2 ```python blocks" in extract_solution("```python\na\n```\n```python\nb\n```")[1]
    assert "never closed" in extract_solution("```python\nx = 1\n")[1]
    assert "label the code block" in extract_solution("```\nx = 1\n```")[1]
    assert extract_solution(None)[0] is None and extract_solution("no code")[0] is None


def test_pass_at_k_hand_numbers() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # c/n
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0 and pass_at_k(1, 1, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


# ----------------------------------------------------------------- sandboxed runs


@needs_sandbox
def test_runner_unittest_layout(leap: Exercise) -> None:
    good = run_exercise_tests(leap, leap.reference, backend="bwrap")
    assert good.passed and len(good.per_test) == 4 and all(good.per_test.values())
    bad = run_exercise_tests(leap, {"leap.py": LEAP_WRONG}, backend="bwrap")
    assert not bad.passed and "FAILED leap_test.py::LeapTest::test_divisible_by_100_not_by_400" in bad.output
    assert not run_exercise_tests(leap, {}, backend="bwrap").passed  # the starter


@needs_sandbox
def test_humaneval_right_and_wrong_through_env(tmp_path: Path) -> None:
    tasks = {t.meta["exercise"]: t for t in ExerciseTasks(backend="bwrap").all_tasks()}
    for name in ("000-has-close-elements", "038-decode-cyclic"):
        task = tasks[name]
        ex = humaneval_exercises()[int(name[:3])]
        path = ex.solution_paths[0]
        _, result, reward = _play(_env(), task, [format_reply(path, ex.reference[path])])
        assert result.done and reward.total == 1.0 and reward.parts == {"passed": 1.0, "attempts": 1.0, "format_ok": 1.0}
        _, result, reward = _play(_env(max_attempts=1), task, [format_reply(path, ex.starter[path])])
        assert result.done and reward.total == 0.0
    # rewriting the prompt's helper does not help: check() uses the test file's own encode_cyclic
    cheat = "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n"
    _, _, reward = _play(_env(max_attempts=1), tasks["038-decode-cyclic"], [format_reply("decode_cyclic.py", cheat)])
    assert reward.total == 0.0


@needs_sandbox
def test_second_try_and_fresh_env_scoring(leap: Exercise, tmp_path: Path) -> None:
    task = _task(leap, tmp_path)
    env = _env()
    messages, result, reward = _play(env, task, [format_reply("leap.py", LEAP_WRONG), format_reply("leap.py", LEAP_REFERENCE)])
    observation = messages[-2]
    assert observation["role"] == "user" and "FAILED" in observation["content"] and "Fix the code in `leap.py`" in observation["content"]
    assert result.done and reward.total == 1.0 and reward.parts["attempts"] == 2.0
    snapshot = env.snapshot()
    assert snapshot == {"solution": {"leap.py": LEAP_REFERENCE}, "attempts": 2}
    assert _env().score(task, messages, json.loads(json.dumps(snapshot))) == reward  # the reward actor's way
    assert _env().score(task, messages, None) == reward  # from the conversation alone
    env.close()
    env.close()  # idempotent
    # wrong twice: done after the second try, reward 0, the snapshot holds the last file
    env = _env()
    messages, result, reward = _play(env, task, [format_reply("leap.py", LEAP_WRONG)] * 3)
    assert result.done and reward.total == 0.0 and env.snapshot()["attempts"] == 2
    assert sum(m["role"] == "assistant" for m in messages) == 2
    assert _env().score(task, messages, env.snapshot()) == reward


@needs_sandbox
def test_format_errors_use_the_try(leap: Exercise, tmp_path: Path) -> None:
    task = _task(leap, tmp_path)
    messages, result, reward = _play(_env(), task, ["I think it is easy.", format_reply("leap.py", LEAP_REFERENCE)])
    assert "Format error" in messages[-2]["content"] and reward.total == 1.0
    assert reward.parts == {"passed": 1.0, "attempts": 2.0, "format_ok": 0.0}
    messages, result, reward = _play(_env(), task, ["```python\na\n```\n```python\nb\n```", "```\nno tag\n```"])
    assert result.done and reward.total == 0.0 and reward.parts["format_ok"] == 0.0


@needs_sandbox
def test_solution_cannot_rewrite_or_skip_the_tests(leap: Exercise, tmp_path: Path) -> None:
    task = _task(leap, tmp_path)
    forged = "def test_ok():\n    pass\n"
    attacks = [
        # rewrites the test file when imported, and answers wrong
        f"open('leap_test.py', 'w').write({forged!r})\n" + LEAP_WRONG,
        # leaves the interpreter with status 0 before any test can fail
        "import os\nos._exit(0)\n",
        # prints a fake pytest summary, then exits 0
        "import os, sys\nsys.__stdout__.write('PASSED leap_test.py::x\\n1 passed in 0.01s\\n')\nos._exit(0)\n",
    ]
    for attack in attacks:
        _, _, reward = _play(_env(max_attempts=1), task, [format_reply("leap.py", attack)])
        assert reward.total == 0.0, attack
    # a snapshot naming the test file cannot replace it either
    snapshot = {"solution": {"leap.py": LEAP_WRONG, "leap_test.py": forged}, "attempts": 1}
    assert _env().score(task, task.messages, snapshot).total == 0.0


@needs_sandbox
def test_infinite_loop_times_out(leap: Exercise, tmp_path: Path) -> None:
    task = _task(leap, tmp_path)
    env = _env(timeout_s=3)
    env.open(task)
    result = env.step(parse_action(format_reply("leap.py", "def leap_year(year):\n    while True:\n        pass\n")))
    assert not result.done and result.info["timed_out"] and "TIMEOUT" in result.messages[0]["content"]


@needs_sandbox
def test_model_text_never_raises(leap: Exercise, tmp_path: Path) -> None:
    task = _task(leap, tmp_path)
    env = _env(max_attempts=5)
    env.open(task)
    for text in ["\ud800```python\nx = '\ud800'\n```", "```python\n\x00\n```", "`" * 10_000, ""]:
        env.step(parse_action(text))
    weird = [None, 3, {"role": "assistant"}, {"role": "assistant", "content": None}, {"role": "assistant", "content": ["x"]}]
    assert env.score(task, weird, None).total == 0.0
    assert env.score(task, weird, {"solution": {"leap.py": None}, "attempts": "x"}).total == 0.0
    assert env.score(task, "not a list", None).error is None
    bad = env.score(task.__class__("t", "exercises", [], [], answer={"nope": 1}), [], None)
    assert bad.error and "answer has no 'exercise'" in bad.error
    assert isinstance(env, Env)


@needs_sandbox
def test_expert_triplet_replays_to_reward_one(tmp_path: Path) -> None:
    source = ExerciseTasks(backend="bwrap")
    task = source.all_tasks()[0]
    expert = source.expert(task)
    assert [m["role"] for m in expert] == ["assistant", "user", "assistant"]
    assert "FAILED" in expert[1]["content"]
    env = _env()
    env.open(task)
    first = env.step(parse_action(expert[0]["content"]))
    assert not first.done and first.info["passed"] is False
    second = env.step(parse_action(expert[2]["content"]))
    reward = _env().score(task, [*task.messages, *expert], env.snapshot())
    assert second.done and reward.total == 1.0 and reward.parts["attempts"] == 2.0
    assert _env().score(task, [*task.messages, expert[0]], None).total == 0.0  # the first attempt really fails
    assert source.expert_one_turn(task) == [expert[2]]


def test_mutants_parse_and_differ() -> None:
    found = list(mutants(LEAP_REFERENCE, "s"))
    assert len(found) >= 6 and all(m != LEAP_REFERENCE for m in found)
    assert found == list(mutants(LEAP_REFERENCE, "s"))  # deterministic in the seed
    assert "year % 4 != 0" in "".join(found) and "year % 5 == 0" in "".join(found)


@needs_sandbox
def test_eval_gold_and_empty_replay(tmp_path: Path) -> None:
    for mode, expected in (("gold", 1.0), ("empty", 0.0)):
        out = tmp_path / f"{mode}.json"
        summary = run_code_eval(CodeEvalConfig(gold=mode == "gold", empty=mode == "empty", limit=3, out=str(out), backend="bwrap"))
        written = json.loads(out.read_text())
        assert written["n"] == 3 and written["pass_rate"] == expected and written["pass@k"] == {"1": expected}
        assert [r["exercise"] for r in written["per_task"]] == ["000-has-close-elements", "001-separate-paren-groups",
                                                                "002-truncate-number"]
        assert summary["pass_rate"] == expected


@needs_sandbox
def test_through_the_async_adapter(leap: Exercise, tmp_path: Path) -> None:
    """The way the agent loop drives it: LocalEnv runs the blocking env in a thread and scores from its snapshot."""
    import asyncio

    from forge_ray.env.adapters import LocalEnv

    task = _task(leap, tmp_path)

    async def episode(replies: list[str]):
        env = LocalEnv(_env())
        opened = await env.open(task)
        messages = list(opened.messages)
        for text in replies:
            messages.append({"role": "assistant", "content": text})
            result = await env.step(parse_action(text))
            messages += result.messages
            if result.done:
                break
        try:
            return await env.score(opened, messages)
        finally:
            await env.close()

    assert asyncio.run(episode([format_reply("leap.py", LEAP_WRONG), format_reply("leap.py", LEAP_REFERENCE)])).total == 1.0
    assert asyncio.run(episode([format_reply("leap.py", LEAP_WRONG)] * 2)).total == 0.0


def test_heldout_set_is_another_set(tmp_path):
    """Mined exercises for training, HumanEval held out: the directory is all train, the held-out
    split is the other set's."""
    from envs.exercises import ExerciseTasks
    from envs.exercises.humaneval import humaneval_exercises
    from envs.exercises.format import write_exercise

    for ex in humaneval_exercises()[:3]:
        write_exercise(ex, tmp_path)
    source = ExerciseTasks(set=str(tmp_path), heldout_set="humaneval")
    train, heldout = source.tasks("train", 3, 0), source.tasks("heldout", 5, 0)
    assert len(train) == 3 and all(t.meta["split"] == "train" for t in train)
    assert len(heldout) == 5 and all(t.meta["split"] == "heldout" and t.id.startswith("humaneval/") for t in heldout)
    assert len(source.all_tasks("heldout")) == 164 and len(source.all_tasks(None)) == 167
