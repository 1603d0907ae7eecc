"""Unit tests of the function-calling environment: parsing, BFCL data, the official checker,
the synthetic generator, and the gold replay of ``forge-ray eval bfcl``."""
from __future__ import annotations

import json

import pytest

from envs import ENVS, make_env, make_tasks
from envs.function_calling import FunctionCallingEnv, FunctionCallingTasks
from envs.function_calling.bfcl_data import (
    CATEGORIES,
    LIVE_CATEGORIES,
    NON_LIVE_CATEGORIES,
    SYSTEM_PROMPT,
    function_names,
    load_category,
    read_jsonl,
    to_tool_spec,
)
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
    assert counts == {"simple_python": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200, "irrelevance": 240,
                      "live_simple": 258, "live_multiple": 1053, "live_parallel": 16, "live_parallel_multiple": 24,
                      "live_irrelevance": 884, "live_relevance": 16}
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
    user, system = {"role": "user", "content": "hi"}, {"role": "system", "content": "be brief"}
    for turns, why in [([[user, system, user]], "only open the turn"), ([[user], [user]], "exactly one"),
                       ([[system, {"role": "assistant", "content": "x"}]], "end with a user"), ([[{"role": "tool", "content": "x"}]], "role")]:
        rows = [{"id": "live_relevance_0-0-0", "question": [[user]], "function": [{"name": "f"}]},
                {"id": "live_relevance_1-1-0", "question": turns, "function": [{"name": "f"}]}]
        (tmp_path / "BFCL_v4_live_relevance.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(ValueError, match=rf"BFCL_v4_live_relevance.json:2: .*{why}"):
            load_category("live_relevance", root=tmp_path)


def test_live_questions_keep_their_messages_under_one_system_turn():
    by_id = {t.id: t for c in ("live_simple", "live_irrelevance") for t in load_category(c)}
    with_system = by_id["live_simple_58-27-0"]  # opens with its own system message
    assert [m["role"] for m in with_system.messages] == ["system", "user"]
    # ours, a blank line, then the question's own system text (which opens with "\n")
    assert with_system.messages[0]["content"].startswith(SYSTEM_PROMPT + "\n\n\nYou are an AI chatbot who helps users")
    history = by_id["live_irrelevance_125-11-0"]  # system, user, assistant, user
    assert [m["role"] for m in history.messages] == ["system", "user", "assistant", "user"]
    assert history.messages[2]["content"].startswith("安装mbox")
    plain = by_id["live_simple_0-0-0"]
    assert plain.messages[0] == {"role": "system", "content": SYSTEM_PROMPT} and [m["role"] for m in plain.messages] == ["system", "user"]
    assert plain.meta == {"category": "live_simple", "bfcl_id": "live_simple_0-0-0", "source": "bfcl"}
    assert all(t.answer["possible_answers"] == [] for t in load_category("live_relevance"))


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


def test_relevance_wants_a_call_and_live_irrelevance_none():
    env = make_env("function_calling")
    rel = load_category("live_relevance", limit=1)[0]  # a portrait to paint: generate_image fits
    name = rel.tools[1]["function"]["name"]
    assert name == "generate_image"
    for text in (f"[{name}(prompt='a masked woman')]", '<tool_call>{"name": "generate_image", "arguments": {}}</tool_call>'):
        assert _score(env, rel, text).parts["correct"] == 1.0, text
    for text in ("", "[]", "I would paint it in the style of Mucha.", f"[{name}(prompt=", '<tool_call>{"name": 1}</tool_call>'):
        assert _score(env, rel, text).parts["correct"] == 0.0, text  # no call, or none that decodes
    irr = load_category("live_irrelevance", limit=1)[0]
    first = irr.tools[0]["function"]["name"]
    assert _score(env, irr, "No tool fits.").total == 1.0 and _score(env, irr, f"[{first}()]").total == 0.0
    assert not check_calls([], rel.answer["functions"], [], "live_relevance").valid
    assert check_calls([ToolCall("anything", {})], rel.answer["functions"], [], "live_relevance").valid


def test_live_ast_categories_use_the_official_checker():
    task = load_category("live_simple", limit=1)[0]  # get_user_info(user_id=7890, special="black")
    env = make_env("function_calling")
    assert _score(env, task, "[get_user_info(user_id=7890, special='black')]").total == 1.0
    assert _score(env, task, "[get_user_info(user_id=7891, special='black')]").total == 0.0
    par = load_category("live_parallel", limit=1)[0]
    calls = gold_calls(par.answer["possible_answers"])
    assert len(calls) > 1
    assert check_calls(calls[::-1], par.answer["functions"], par.answer["possible_answers"], "live_parallel").valid
    assert not check_calls(calls[:1], par.answer["functions"], par.answer["possible_answers"], "live_parallel").valid


def test_task_source_serves_live_categories():
    assert FunctionCallingTasks(heldout="bfcl").bfcl_categories == NON_LIVE_CATEGORIES  # the default held-out set
    source = FunctionCallingTasks(heldout="bfcl", bfcl_categories=["live_parallel", "live_relevance"])
    tasks = source.tasks("heldout", 32, 0)
    assert {t.meta["category"] for t in tasks} == {"live_parallel", "live_relevance"} and len({t.id for t in tasks}) == 32
    with pytest.raises(ValueError, match="asked for 33"):
        source.tasks("heldout", 33, 0)
    with pytest.raises(ValueError, match="unknown BFCL categories"):
        FunctionCallingTasks(heldout="bfcl", bfcl_categories=["live_nope"])


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


# BFCL v4 entries no answer can pass (see docs/function_calling.md, `forge-ray eval bfcl`).
UNANSWERABLE = {"parallel_multiple_26", "live_simple_106-63-0", "live_simple_112-68-0", "live_multiple_507-149-4",
                "live_multiple_862-181-3", "live_multiple_964-207-0"}
NO_CALL_CATEGORIES = ("irrelevance", "live_irrelevance")  # the ones an empty answer gets right


def test_gold_replay_accuracy_and_empty_answers():
    from forge_ray.eval.bfcl import gold_answer, gold_results, load_tasks, summarize

    tasks = load_tasks(CATEGORIES, None)
    results = gold_results(tasks)
    assert {r.task_id for r in results if not r.correct} == UNANSWERABLE
    summary = summarize(results, CATEGORIES)
    assert summary["live_simple"] == {"accuracy": 256 / 258, "n": 258} and summary["live_multiple"] == {"accuracy": 1050 / 1053, "n": 1053}
    env = FunctionCallingEnv()
    for task in tasks:
        category = task.meta["category"]
        assert _score(env, task, "").parts["correct"] == (category in NO_CALL_CATEGORIES)
        assert ("<tool_call>" in gold_answer(task)) == (category not in NO_CALL_CATEGORIES)


def test_gold_gives_required_parameters_their_value():
    from forge_ray.eval.bfcl import gold_answer, relevance_gold_call, required_values_first

    fns = [{"name": "f", "parameters": {"type": "dict", "required": ["a"], "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}]
    assert required_values_first([{"f": {"a": ["", 100], "b": ["", 1]}}], fns) == [{"f": {"a": [100, ""], "b": ["", 1]}}]
    assert required_values_first([{"f": {"a": [""]}}], fns) == [{"f": {"a": [""]}}]  # nothing else to give
    (task,) = [t for t in load_category("live_multiple") if t.id == "live_multiple_144-56-0"]  # perPage: ["", 100], required
    assert '"perPage": 100' in gold_answer(task) and '"perPage"' not in gold_text(task)
    rel = load_category("live_relevance", limit=1)[0]
    assert relevance_gold_call(rel.answer["functions"]) == ToolCall("search_engine.query", {"prompt": ""})
    assert relevance_gold_call([{"name": "g", "parameters": {"type": "dict", "required": ["n", "u", "d"], "properties": {
        "n": {"type": "integer"}, "u": {"type": "string", "enum": ["C", "F"]}, "d": {"type": "float", "default": 1.5}}}}]) == \
        ToolCall("g", {"n": 0, "u": "C", "d": 1.5})


def test_eval_cli_gold_writes_json(tmp_path, capsys):
    from forge_ray.cli import main

    out = tmp_path / "gold.json"
    assert main(["eval", "bfcl", "--gold", "--categories", "multiple,irrelevance,live_relevance", "--limit", "20", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {c: data[c] for c in ("multiple", "irrelevance", "live_relevance")} == {
        "multiple": {"accuracy": 1.0, "n": 20}, "irrelevance": {"accuracy": 1.0, "n": 20}, "live_relevance": {"accuracy": 1.0, "n": 16}}
    overall = data["overall"]
    assert overall["groups"] == {"relevance": {"accuracy": 1.0, "n": 16, "weight": 0}}
    assert overall["not_computed"]["irrelevance"] == ["live_irrelevance"] and overall["overall"] is None
    printed = capsys.readouterr().out
    assert "live_relevance" in printed and "BFCL summary scores" in printed and "irrelevance  live_irrelevance" in printed
    assert main(["eval", "bfcl", "--categories", "multiple"]) == 2  # neither --model nor --gold
    with pytest.raises(SystemExit):
        main(["eval", "bfcl", "--gold", "--categories", "nope"])


# -- BFCL's summary scores -----------------------------------------------------------------------


def _summary(**accuracies: tuple[float, int]) -> dict:
    return {c: {"accuracy": a, "n": n} for c, (a, n) in accuracies.items()}


FULL = _summary(simple_python=(0.9, 400), simple_java=(0.6, 100), simple_javascript=(0.3, 50), multiple=(0.8, 200),
                parallel=(0.7, 200), parallel_multiple=(0.5, 200), live_simple=(0.5, 200), live_multiple=(1.0, 100),
                live_parallel=(0.0, 50), live_parallel_multiple=(0.5, 50), irrelevance=(0.9, 240), live_irrelevance=(0.7, 800),
                live_relevance=(0.75, 16), multi_turn_base=(0.4, 200), multi_turn_miss_func=(0.2, 200),
                multi_turn_miss_param=(0.2, 200), multi_turn_long_context=(0.0, 200), web_search_base=(0.5, 100),
                web_search_no_snippet=(0.3, 100), memory_kv=(0.1, 155), memory_vector=(0.2, 155), memory_rec_sum=(0.3, 155))


def test_bfcl_overall_of_every_category_by_hand():
    from forge_ray.eval.bfcl_score import bfcl_overall

    result = bfcl_overall(FULL)
    accuracy = {g: s["accuracy"] for g, s in result["groups"].items()}
    expected = {"non_live": ((0.9 + 0.6 + 0.3) / 3 + 0.8 + 0.7 + 0.5) / 4,  # 0.65: simple is the mean of three languages
                "live": (0.5 * 200 + 1.0 * 100 + 0.0 * 50 + 0.5 * 50) / 400,  # 0.5625: weighted by count
                "irrelevance": (0.9 + 0.7) / 2, "multi_turn": 0.2, "agentic": ((0.5 + 0.3) / 2 + (0.1 + 0.2 + 0.3) / 3) / 2,
                "relevance": 0.75}
    assert accuracy == pytest.approx(expected) and result["not_computed"] == {}
    assert result["groups"]["live"]["n"] == 400 and result["groups"]["relevance"]["weight"] == 0
    assert result["overall"] == pytest.approx((10 * 0.65 + 10 * 0.5625 + 10 * 0.8 + 30 * 0.2 + 40 * 0.3) / 100)  # 0.38125
    assert result["overall_of_computed_groups"] == result["overall"]


def test_bfcl_overall_of_some_categories_by_hand():
    from forge_ray.eval.bfcl_score import bfcl_overall

    run = {c: s for c, s in FULL.items() if c in CATEGORIES and c != "live_parallel_multiple"}
    result = bfcl_overall(run, sizes={"live_parallel_multiple": 50})
    assert {g: s["accuracy"] for g, s in result["groups"].items()} == pytest.approx({"irrelevance": 0.8, "relevance": 0.75})
    assert result["not_computed"] == {
        "non_live": ["simple_java", "simple_javascript"], "live": ["live_parallel_multiple"],
        "multi_turn": ["multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context"],
        "agentic": ["web_search_base", "web_search_no_snippet", "memory_kv", "memory_vector", "memory_rec_sum"]}
    assert result["overall"] is None and result["overall_of_computed_groups"] == pytest.approx(0.8)
    # As BFCL's tables: a category not run counts 0, with its full count where counts weigh.
    zero = result["missing_as_zero"]
    assert zero["non_live"] == pytest.approx((0.9 / 3 + 0.8 + 0.7 + 0.5) / 4)  # 0.575
    assert zero["live"] == pytest.approx((0.5 * 200 + 1.0 * 100 + 0.0 * 50 + 0.0 * 50) / 400)  # 0.5
    assert zero["multi_turn"] == zero["agentic"] == 0.0
    assert zero["overall"] == pytest.approx((10 * 0.575 + 10 * 0.5 + 10 * 0.8) / 100)  # 0.1875
    with pytest.raises(ValueError, match="live_parallel_multiple"):
        bfcl_overall(run, sizes={})
    assert "missing_as_zero" not in bfcl_overall(run) and bfcl_overall({})["overall_of_computed_groups"] is None


def test_bfcl_overall_covers_bfcls_scoring_categories():
    from bfcl_eval.constants.category_mapping import ALL_SCORING_CATEGORIES

    from forge_ray.eval.bfcl_score import BFCL_SCORE_GROUPS, _leaves

    leaves = [c for _, _, node in BFCL_SCORE_GROUPS for c in _leaves(node)]
    assert sorted(leaves) == sorted(ALL_SCORING_CATEGORIES) and set(FULL) == set(leaves)
    assert set(LIVE_CATEGORIES) | set(NON_LIVE_CATEGORIES) == set(CATEGORIES) <= set(leaves)
