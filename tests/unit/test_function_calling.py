"""Unit tests of the function-calling environment: parsing, BFCL data, the official checker,
the synthetic generator, and the gold replay of ``forge-ray eval bfcl``."""
from __future__ import annotations

import json

import pytest

from envs import ENVS, make_env, make_tasks
from envs.function_calling import FunctionCallingEnv, FunctionCallingTasks
from envs.function_calling.bfcl_data import CATEGORIES, function_names, load_category, read_jsonl, to_tool_spec
from envs.function_calling.checker import check_calls
from envs.function_calling.gold import NO_CALL_TEXT, gold_calls, gold_text
from envs.function_calling.parsing import parse_calls
from envs.function_calling.synthetic import SYNTHETIC_CATEGORIES, all_tools, split_of
from forge_ray.env.protocol import Env, TaskSource
from forge_ray.chat import parse_action
from forge_ray.types import ToolCall

pytest.importorskip("bfcl_eval", reason="needs bfcl-eval (requirements/bfcl-nodeps.txt)")


def _score(env, task, text):
    return env.score(task, [*task.messages, {"role": "assistant", "content": text}])


# -- parsing ----------------------------------------------------------------------------------


def test_parse_hermes_json():
    text = '<tool_call>{"name": "math.hypot", "arguments": {"x": 4, "y": 5}}</tool_call>\n<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    action = parse_calls(text)
    assert action.parse_error is None
    assert action.tool_calls == [ToolCall("math.hypot", {"x": 4, "y": 5}), ToolCall("f", {})]


@pytest.mark.parametrize("text, calls", [
    ('[func(a=1, b="x"), other(c=2)]', [ToolCall("func", {"a": 1, "b": "x"}), ToolCall("other", {"c": 2})]),
    ("math.hypot(x=4, y=5.5)", [ToolCall("math.hypot", {"x": 4, "y": 5.5})]),
    ("```python\n[f(xs=[1, -2], d={'k': (1, 2)}, flag=True, none=None)]\n```",
     [ToolCall("f", {"xs": [1, -2], "d": {"k": (1, 2)}, "flag": True, "none": None})]),
    ("[f(unit=meters, mod=np.pi)]", [ToolCall("f", {"unit": "meters", "mod": "np.pi"})]),  # variables -> names, as BFCL
    ("[]", []),
    ("The capital of France is Paris.", []),
    ("Sure (happy to help).", []),
])
def test_parse_python_syntax(text, calls):
    action = parse_calls(text)
    assert action.parse_error is None, action.parse_error
    assert action.tool_calls == calls


@pytest.mark.parametrize("text, fragment", [
    ('<tool_call>{"name": "f", "arguments": </tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "f"}', "unbalanced"),
    ('<tool_call>["f"]</tool_call>', "string 'name'"),
    ("[f(a=1), g(b=]", "not valid Python"),
    ("[f(1, 2)]", "by keyword"),
    ("[f(a=1, a=2)]", "twice"),
    ("[f(a=1), g(b=2)", "not valid Python"),
    ("[f(a=__import__('os').system('x'))]", "literal"),
    ("[f(a=1), 3]", "expected a function call"),
    ("[f(**kw)]", "kwargs"),
    ("[f(a=1)(b=2)]", "plain or dotted name"),
    ("[f(a=" + "[" * 5000 + "]" * 5000 + ")]", "Python"),
    ('<tool_call>{"name": "f", "arguments": {"a": ' + "1" * 5000 + "}}</tool_call>", "tool call"),
])
def test_malformed_calls_are_errors_not_exceptions(text, fragment):
    action = parse_calls(text)
    assert action.parse_error is not None and fragment in action.parse_error, action.parse_error
    assert action.tool_calls == [] or text.startswith("<tool_call>")


def test_parse_never_raises_on_odd_input():
    for text in (None, 42, "", "[", "(", "f(", "```\n```", "[f(a=1)", "<tool_call>", "\x00[f()]"):
        parse_calls(text)


# -- BFCL data and the official checker --------------------------------------------------------


def test_bfcl_tasks_load_offline_and_convert():
    counts = {c: len(load_category(c)) for c in CATEGORIES}
    assert counts == {"simple_python": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200, "irrelevance": 240}
    task = load_category("simple_python", limit=1)[0]
    assert task.id == "simple_python_0" and task.env == "function_calling"
    assert task.meta == {"category": "simple_python", "bfcl_id": "simple_python_0", "source": "bfcl"}
    assert [m["role"] for m in task.messages] == ["system", "user"]
    params = task.tools[0]["function"]["parameters"]
    assert params["type"] == "object" and params["properties"]["base"]["type"] == "integer"
    assert task.answer["functions"][0]["parameters"]["type"] == "dict"  # the checker keeps BFCL's types
    spec = to_tool_spec({"name": "f", "parameters": {"type": "dict", "properties": {
        "x": {"type": "float"}, "t": {"type": "tuple", "items": {"type": "float"}}, "a": {"type": "any", "optional": True}}}})
    props = spec["function"]["parameters"]["properties"]
    assert props == {"x": {"type": "number"}, "t": {"type": "array", "items": {"type": "number"}}, "a": {}}


def test_bad_data_row_names_file_and_line(tmp_path):
    path = tmp_path / "BFCL_v4_simple_python.json"
    path.write_text('{"id": "a", "question": [[]], "function": []}\n{not json\n')
    with pytest.raises(ValueError, match=r"BFCL_v4_simple_python.json:2"):
        read_jsonl(path)


def test_official_checker_on_bfcl_tasks():
    task = load_category("simple_python", limit=1)[0]  # triangle area, base 10, height 5
    fns, possible = task.answer["functions"], task.answer["possible_answers"]
    assert check_calls([ToolCall("calculate_triangle_area", {"base": 10, "height": 5})], fns, possible, "simple_python").valid
    assert check_calls([ToolCall("calculate_triangle_area", {"base": 10, "height": 5, "unit": "units"})], fns, possible, "simple").valid
    wrong = check_calls([ToolCall("calculate_triangle_area", {"base": 10, "height": 6})], fns, possible, "simple_python")
    assert not wrong.valid and "height" in wrong.error
    assert not check_calls([ToolCall("calculate_triangle_area", {"base": "10", "height": 5})], fns, possible, "simple").valid
    par = load_category("parallel", limit=1)[0]  # spotify.play twice, any order
    calls = gold_calls(par.answer["possible_answers"])
    assert check_calls(calls[::-1], par.answer["functions"], par.answer["possible_answers"], "parallel").valid
    assert not check_calls(calls[:1], par.answer["functions"], par.answer["possible_answers"], "parallel").valid
    # odd model output is an invalid answer, never an exception
    assert not check_calls([ToolCall("calculate_triangle_area", {"base": {"a": [1]}, "height": [[5]]})], fns, possible, "simple").valid


def test_env_protocol_registry_and_episode():
    env = make_env("function_calling")
    assert "function_calling" in ENVS and isinstance(env, Env) and isinstance(make_tasks("function_calling"), TaskSource)
    task = load_category("simple_python", limit=2)[1]  # math.factorial(number=5)
    env.open(task)
    result = env.step(parse_action("[math.factorial(number=5)]"))
    assert result.done and result.messages == [] and result.info["calls"] == 1
    for text in ("[math.factorial(number=5)]", '<tool_call>{"name": "math.factorial", "arguments": {"number": 5}}</tool_call>'):
        reward = _score(env, task, text)
        assert reward.total == 1.0 and reward.parts["format"] == 1.0 and reward.parts["correct"] == 1.0
    assert _score(env, task, "[math.factorial(number=6)]").total == 0.0
    bad = _score(env, task, "[math.factorial(number=5)")
    assert bad.total == 0.0 and bad.parts["format"] == 0.0
    assert env.step(parse_action("[math.factorial(5)]")).info["parse_error"]
    assert env.score(task, []).total == 0.0  # no assistant turn
    irr = load_category("irrelevance", limit=1)[0]
    assert _score(env, irr, "No function fits.").total == 1.0
    assert _score(env, irr, "[determine_body_mass_index(weight=1.0, height=2.0)]").total == 0.0
    garbled = _score(env, irr, "[determine_body_mass_index(weight=")  # BFCL: no decodable call; we: no reward
    assert garbled.parts["correct"] == 1.0 and garbled.total == 0.0


# -- synthetic tasks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source() -> FunctionCallingTasks:
    return FunctionCallingTasks()


def test_synthetic_is_deterministic(source):
    a, b = source.tasks("train", 60, 3), source.tasks("train", 60, 3)
    assert [json.dumps([t.messages, t.tools, t.answer, t.meta], sort_keys=True) for t in a] == \
           [json.dumps([t.messages, t.tools, t.answer, t.meta], sort_keys=True) for t in b]
    assert [t.messages for t in source.tasks("train", 60, 4)] != [t.messages for t in a]
    assert {t.meta["category"] for t in a} == set(SYNTHETIC_CATEGORIES)


def test_synthetic_is_disjoint_from_bfcl_and_across_splits(source):
    names = {t["function"]["name"] for split in ("train", "heldout") for task in source.tasks(split, 400, 0) for t in task.tools}
    assert len(names) > 100
    assert not names & function_names()  # no function name of BFCL's evaluation data
    train = {t["function"]["name"] for task in source.tasks("train", 400, 1) for t in task.tools}
    held = {t["function"]["name"] for task in source.tasks("heldout", 400, 1) for t in task.tools}
    assert train and held and not train & held
    assert all(split_of(n) == "train" for n in train) and all(split_of(n) == "heldout" for n in held)
    assert len(all_tools()) == len(all_tools("train")) + len(all_tools("heldout"))


def test_synthetic_expert_scores_one_and_mistakes_score_zero(source):
    env = FunctionCallingEnv()
    for task in source.tasks("train", 150, 0) + source.tasks("heldout", 50, 0):
        (turn,) = source.expert(task)
        assert turn["role"] == "assistant"
        assert _score(env, task, turn["content"]).total == 1.0, (task.meta, turn["content"])
        if task.meta["category"] != "irrelevance":
            calls = parse_action(turn["content"]).tool_calls
            first = calls[0]
            key = sorted(first.arguments)[0]
            value = first.arguments[key]
            broken = {**first.arguments, key: (not value) if isinstance(value, bool) else ([] if isinstance(value, list) else value * 2 if not isinstance(value, str) else value + "x")}
            text = "\n".join(f'<tool_call>{json.dumps({"name": c.name, "arguments": broken if i == 0 else c.arguments})}</tool_call>' for i, c in enumerate(calls))
            assert _score(env, task, text).total == 0.0, (task.meta, text)
        else:
            assert turn["content"] == NO_CALL_TEXT


# -- gold replay: the evaluation path without a model ------------------------------------------


def test_gold_replay_accuracy_and_empty_answers():
    from forge_ray.eval.bfcl import gold_results, load_tasks, summarize

    categories = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
    tasks = load_tasks(categories, None)
    summary = summarize(gold_results(tasks), categories)
    assert {c: s["n"] for c, s in summary.items()} == {"simple_python": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200, "irrelevance": 240}
    for category, s in summary.items():
        assert s["accuracy"] >= 0.99, (category, s)
    env = FunctionCallingEnv()
    for task in tasks:
        assert _score(env, task, "").parts["correct"] == (task.meta["category"] == "irrelevance")
        if task.meta["category"] != "irrelevance":
            assert "<tool_call>" in gold_text(task)


def test_eval_cli_gold_writes_json(tmp_path, capsys):
    from forge_ray.cli import main

    out = tmp_path / "gold.json"
    assert main(["eval", "bfcl", "--gold", "--categories", "multiple,irrelevance", "--limit", "20", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data == {"multiple": {"accuracy": 1.0, "n": 20}, "irrelevance": {"accuracy": 1.0, "n": 20}}
    assert "multiple" in capsys.readouterr().out
    assert main(["eval", "bfcl", "--categories", "multiple"]) == 2  # neither --model nor --gold
    with pytest.raises(SystemExit):
        main(["eval", "bfcl", "--gold", "--categories", "nope"])
