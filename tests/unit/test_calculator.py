"""Unit tests of the calculator environment: task generation, expert replay, env and reward."""
from __future__ import annotations

import collections
import re

import pytest

from envs import ENVS, make_env, make_tasks
from envs.calculator import CalculatorEnv, CalculatorTasks
from envs.calculator.tasks import Chain, split_of
from forge_ray.env.protocol import Env, TaskSource
from forge_ray.chat import parse_action, render_tool_call
from forge_ray.types import Action, Task, ToolCall


@pytest.fixture(scope="module")
def source() -> CalculatorTasks:
    return CalculatorTasks()


def _call_text(name: str, **arguments) -> str:
    return render_tool_call(ToolCall(name, arguments))


# -- tasks ------------------------------------------------------------------------------------


def test_protocols_and_registry():
    assert isinstance(make_env("calculator"), Env)
    assert isinstance(make_tasks("calculator"), TaskSource)
    assert make_env("calculator", max_tool_turns=2).max_tool_turns == 2
    with pytest.raises(ValueError, match="calculator"):
        make_env("nope")
    with pytest.raises(ValueError, match="calculator"):
        make_tasks("nope")
    assert "calculator" in ENVS


def test_tasks_are_deterministic(source):
    a = source.tasks("train", 50, seed=3)
    assert a == CalculatorTasks().tasks("train", 50, seed=3)
    assert a[:20] == source.tasks("train", 20, seed=3)  # a longer draw extends a shorter one
    assert a != source.tasks("train", 50, seed=4)
    assert len({t.id for t in a}) == 50
    assert a[7].id == "calc-train-3-7"
    with pytest.raises(ValueError):
        source.tasks("validation", 5, seed=0)


def test_splits_are_disjoint(source):
    train = [t for seed in range(3) for t in source.tasks("train", 1000, seed)]
    heldout = [t for seed in range(2) for t in source.tasks("heldout", 500, seed)]
    train_exprs = {t.meta["expression"] for t in train}
    heldout_exprs = {t.meta["expression"] for t in heldout}
    assert not train_exprs & heldout_exprs
    assert not {t.messages[1]["content"] for t in train} & {t.messages[1]["content"] for t in heldout}
    assert all(t.meta["split"] == "train" for t in train)
    # membership comes from the expression itself, not from which call drew it
    chain = Chain(37, (("mul", 12), ("add", 5)))
    assert split_of(chain) == split_of(Chain(37, (("mul", 12), ("add", 5))))


def test_task_contents(source):
    tasks = source.tasks("train", 600, seed=0)
    for t in tasks:
        assert t.env == "calculator"
        assert [m["role"] for m in t.messages] == ["system", "user"]
        assert "Answer: N" in t.messages[0]["content"]
        assert [spec["function"]["name"] for spec in t.tools] == ["add", "sub", "mul"]
        calls = t.answer["calls"]
        assert len(calls) == t.meta["num_ops"]
        assert all(0 <= c["arguments"]["b"] <= 99 for c in calls)
        assert 0 <= calls[0]["arguments"]["a"] <= 99
    mix = collections.Counter(t.meta["num_ops"] for t in tasks)
    assert all(150 <= mix[k] <= 250 for k in (1, 2, 3)), mix
    assert len({t.meta["expression"] for t in tasks}) == len(tasks)  # no repeats within a draw
    assert {t.meta["style"] for t in tasks} == {"formula", "words"}
    assert len({t.messages[1]["content"].split()[0] for t in tasks}) >= 8  # varied openings


def test_ops_weights(source):
    only_one = CalculatorTasks(ops_weights=(1, 0, 0)).tasks("train", 100, seed=0)
    assert {t.meta["num_ops"] for t in only_one} == {1}
    with pytest.raises(ValueError):
        CalculatorTasks(ops_weights=(0, 0, 0))


def test_formula_questions_mean_left_to_right(source):
    """A formula read with ordinary precedence must equal the left-to-right gold value."""
    formula = re.compile(r"[\d(][\d ()+\-*×]*[\d)]")
    checked = 0
    for t in source.tasks("train", 400, seed=1):
        if t.meta["style"] == "formula":
            expr = max(formula.findall(t.messages[1]["content"]), key=len).replace("×", "*")
            assert eval(expr) == t.answer["value"], (t.messages[1]["content"], t.answer)
            checked += 1
    assert checked > 100


def test_left_to_right_gold_calls():
    chain = Chain(8, (("add", 15), ("mul", 3)))
    assert chain.infix() == "(8 + 15) * 3"
    assert chain.value() == 69
    assert chain.gold_calls() == [{"name": "add", "arguments": {"a": 8, "b": 15}},
                                  {"name": "mul", "arguments": {"a": 23, "b": 3}}]


# -- expert replay ----------------------------------------------------------------------------


def test_expert_replay_scores_one(source):
    tasks = source.tasks("train", 150, seed=5) + source.tasks("heldout", 50, seed=5)
    env = CalculatorEnv()
    for task in tasks:
        expert = source.expert(task)
        assert [m["role"] for m in expert] == ["assistant", "tool"] * len(task.answer["calls"]) + ["assistant"]
        env.open(task)
        for i, message in enumerate(expert):
            if message["role"] != "assistant":
                continue
            result = env.step(parse_action(message["content"]))
            is_final = i == len(expert) - 1
            assert result.done == is_final
            assert not result.info.get("truncated")
            if not is_final:
                assert result.messages == [expert[i + 1]]
        reward = env.score(task, task.messages + expert)
        assert reward.total == 1.0, (task, expert, reward)
        assert reward.parts == {"format": 1.0, "correct": 1.0, "tool_calls": float(len(task.answer["calls"]))}
        assert reward.error is None


def test_mixed_teacher_answers_some_short_questions_directly():
    source = CalculatorTasks(ops_weights=(1, 1, 0), direct_answer_rate=0.7)
    tasks = source.tasks("train", 400, seed=1)
    env = CalculatorEnv()
    direct = [t for t in tasks if source.answers_directly(t)]
    assert all(t.meta["num_ops"] == 1 for t in direct)  # only questions of <= direct_answer_max_ops
    one_op = sum(t.meta["num_ops"] == 1 for t in tasks)
    assert 0.6 < len(direct) / one_op < 0.8
    for task in tasks:
        expert = source.expert(task)
        assert (len(expert) == 1) == (task in direct)
        assert env.score(task, task.messages + expert).total == 1.0  # a direct answer is still right
    assert [source.answers_directly(t) for t in tasks] == [
        CalculatorTasks(ops_weights=(1, 1, 0), direct_answer_rate=0.7).answers_directly(t) for t in tasks]
    assert not any(CalculatorTasks(ops_weights=(1, 1, 0)).answers_directly(t) for t in tasks)
    with pytest.raises(ValueError, match="direct_answer_rate"):
        CalculatorTasks(direct_answer_rate=1.5)


# -- env and reward ---------------------------------------------------------------------------


@pytest.fixture()
def task(source) -> Task:
    return next(t for t in source.tasks("train", 50, seed=0) if t.meta["num_ops"] == 2)


def test_wrong_answer_scores_zero_with_format(source, task):
    expert = source.expert(task)
    wrong = expert[:-1] + [{"role": "assistant", "content": f"Answer: {task.answer['value'] + 1}"}]
    reward = CalculatorEnv().score(task, task.messages + wrong)
    assert reward.total == 0.0
    assert reward.parts["format"] == 1.0 and reward.parts["correct"] == 0.0


def test_answer_line_format(task):
    env, value = CalculatorEnv(), task.answer["value"]
    ok = ["Answer: {v}", "I added them.\nAnswer: {v}", "Answer: {v}.", "  Answer:  {v}  "]
    bad = ["{v}", "The answer is {v}", "Answer: {v}\nAnswer: {v}", "Answer: {v} apples",
           "answer {v}", "Answer: " + "9" * 5000]
    for text in ok:
        msgs = [{"role": "assistant", "content": text.format(v=value)}]
        assert env.score(task, msgs).total == 1.0, text
    for text in bad:
        msgs = [{"role": "assistant", "content": text.format(v=value)}]
        assert env.score(task, msgs).parts["format"] == 0.0, text
    # a final turn that still calls a tool is not an answer, even with an Answer line
    msgs = [{"role": "assistant", "content": _call_text("add", a=1, b=2) + f"\nAnswer: {value}"}]
    assert env.score(task, msgs).parts["format"] == 0.0


def test_malformed_tool_call(source, task):
    env = CalculatorEnv()
    env.open(task)
    bad = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": </tool_call>'
    result = env.step(parse_action(bad))
    assert not result.done
    assert len(result.messages) == 1 and result.messages[0]["role"] == "tool"
    assert result.messages[0]["content"].startswith("error: ")
    # the model recovers and answers correctly, but a malformed turn costs the format reward
    conversation = task.messages + [{"role": "assistant", "content": bad}, *result.messages] + source.expert(task)
    reward = env.score(task, conversation)
    assert reward.parts == {"format": 0.0, "correct": 1.0, "tool_calls": 2.0}
    assert reward.total == 0.0


@pytest.mark.parametrize("name, arguments, fragment", [
    ("pow", {"a": 2, "b": 3}, "unknown tool"),
    ("add", {"a": 2}, "missing"),
    ("add", {"a": 2, "b": 3, "c": 4}, "unexpected"),
    ("mul", {"a": 2, "b": "3"}, "integer"),
    ("mul", {"a": 2.0, "b": 3}, "integer"),
    ("sub", {"a": True, "b": 3}, "integer"),
    ("sub", {"a": None, "b": 3}, "integer"),
    ("mul", {"a": 10**13, "b": 3}, "range"),
])
def test_bad_calls_become_error_observations(task, name, arguments, fragment):
    env = CalculatorEnv()
    env.open(task)
    result = env.step(parse_action(_call_text(name, **arguments)))
    assert not result.done
    assert len(result.messages) == 1
    assert result.messages[0]["content"].startswith("error: ")
    assert fragment in result.messages[0]["content"]


def test_several_calls_in_one_turn(task):
    env = CalculatorEnv()
    env.open(task)
    text = _call_text("add", a=2, b=3) + "\n" + _call_text("nope", a=1, b=1) + _call_text("sub", a=2, b=5)
    result = env.step(parse_action(text))
    assert [m["content"] for m in result.messages][::2] == ["5", "-3"]
    assert result.messages[1]["content"].startswith("error: unknown tool")


def test_max_tool_turns(task):
    env = CalculatorEnv(max_tool_turns=3)
    env.open(task)
    call = parse_action(_call_text("add", a=1, b=1))
    for _ in range(3):
        assert not env.step(call).done
    result = env.step(call)
    assert result.done and result.info == {"truncated": True, "tool_turns": 3}
    assert result.messages == []
    # parse errors spend the budget too, so a model cannot loop on them forever
    env.open(task)
    for _ in range(3):
        assert not env.step(Action("x", [], "broken")).done
    assert env.step(Action("x", [], "broken")).info["truncated"]
    # within budget, the answer turn still ends the episode normally
    env.open(task)
    for _ in range(3):
        env.step(call)
    final = env.step(parse_action("Answer: 2"))
    assert final.done and not final.info.get("truncated")
    assert CalculatorEnv().max_tool_turns == 6


def test_score_never_raises_on_weird_input(task):
    env = CalculatorEnv()
    weird = [
        [], None, "not a list", [None, 3, "x"], [{"role": "assistant"}],
        [{"role": "assistant", "content": None}], [{"role": "assistant", "content": ["Answer: 1"]}],
        [{"content": "Answer: 1"}],
        [{"role": "assistant", "content": '<tool_call>{"name": "add", "arguments": {"a": ' + "1" * 5000 + "}}</tool_call>"}],
        [{"role": "assistant", "content": "<tool_call>unclosed"}],
    ]
    for messages in weird:
        reward = env.score(task, messages)
        assert reward.total == 0.0 and reward.error is None, messages
    broken = Task(id="x", env="calculator", messages=[], tools=[], answer=None)
    reward = env.score(broken, [{"role": "assistant", "content": "Answer: 1"}])
    assert reward.total == 0.0 and reward.error


def test_step_never_raises_on_weird_calls(task):
    env = CalculatorEnv()
    env.open(task)
    for call in [ToolCall("add", {"a": [1], "b": {}}), ToolCall("", {}), ToolCall("mul", None)]:
        result = env.step(Action("x", [call]))
        assert result.messages[0]["content"].startswith("error: ")


def test_step_wise_turn_rewards():
    """Eq. 8 on-policy: a turn earns 1 while the gold call prefix holds; the answer turn earns
    the outcome."""
    from forge_ray.chat import render_tool_call
    from forge_ray.types import ToolCall

    source = CalculatorTasks(ops_weights=(0, 1, 0))
    task = source.tasks("train", 1, 4)[0]
    expert = source.expert(task)
    env = CalculatorEnv()
    assert env.score(task, task.messages + expert).per_turn == [1.0, 1.0, 1.0]
    wrong = [dict(m) for m in expert]
    first = task.answer["calls"][0]
    wrong[0]["content"] = render_tool_call(ToolCall(first["name"], {**first["arguments"], "a": first["arguments"]["a"] + 1}))
    assert env.score(task, task.messages + wrong).per_turn == [0.0, 0.0, 0.0]


def test_demonstrations_take_sft_env_kwargs_over_env_kwargs():
    from forge_ray.config import load_job
    from forge_ray.pipeline import demo_source

    job = load_job(None, ["env.kwargs={max_operand: 20, ops_weights: [1, 1, 0]}",
                          "sft.env_kwargs={direct_answer_rate: 0.7, ops: [add, sub]}"])
    source = demo_source(job)
    assert (source.max_operand, source.direct_answer_rate, source.ops) == (20, 0.7, ["add", "sub"])
    tasks = source.tasks("train", 200, seed=0)
    assert {c["name"] for t in tasks for c in t.answer["calls"]} == {"add", "sub"}
    assert any(source.answers_directly(t) for t in tasks)
    with pytest.raises(ValueError, match="ops"):
        CalculatorTasks(ops=["div"])


def test_tool_latency_is_log_normal_and_only_on_tool_turns(monkeypatch):
    import asyncio
    import math
    import statistics

    waits = []

    async def fake_sleep(s):
        waits.append(s)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    env = CalculatorEnv(max_tool_turns=1000, tool_latency_s=0.2, tool_latency_sigma=1.0, seed=0)
    env.open(Task("t", "1+2", [], [], answer={"value": 3}))
    call = Action(text="", tool_calls=[ToolCall("add", {"a": 1, "b": 2})])
    results = [asyncio.run(env.astep(call)) for _ in range(400)]
    assert results[0].messages[0]["content"] == "3" and len(waits) == 400
    logs = [math.log(w / 0.2) for w in waits]  # log(wait / median) ~ N(0, sigma^2)
    assert abs(statistics.mean(logs)) < 0.15 and 0.85 < statistics.stdev(logs) < 1.15
    asyncio.run(env.astep(Action(text="Answer: 3", tool_calls=[])))  # a final answer runs no tool: no wait
    assert len(waits) == 400
    with pytest.raises(ValueError, match="tool_latency"):
        CalculatorEnv(tool_latency_s=-1)
