"""Synthetic multi-turn tool tasks on forge_ray's own back-ends: outcome reward through the
multi-turn env, teacher-forced step tasks (Eq. 8), the generator's filters, SFT rendering, the
task-source options, and the BFCL decontamination check."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle

import pytest

from envs import factory, make_env, make_tasks
from envs.function_calling import mt_intents
from envs.function_calling.decontam import check, words
from envs.function_calling.mt_synthetic import CATEGORY, STEP_CATEGORY, SyntheticMultiTurn, render_layout, step_tasks, task_problems
from envs.function_calling.mt_tools import BACKENDS, function_names
from envs.function_calling.multi_turn import MultiTurnEnv, gold_replies, play
from envs.function_calling.multi_turn_data import ENV_NAME
from forge_ray.chat import IM_END, render_tool_call
from forge_ray.eval.harness import replay
from forge_ray.types import ToolCall
from stand_ins import CharTokenizer as _CharTokenizer


@pytest.fixture(scope="module")
def tasks() -> list:
    return SyntheticMultiTurn().tasks("train", 24, 0)


def _dump(tasks: list) -> list[str]:
    return [json.dumps([t.id, t.messages, t.tools, t.answer, t.meta], sort_keys=True) for t in tasks]


def _first_call(task, types=(int, str)) -> tuple[int, int, dict, str]:
    """(turn, step, call, argument) of the first gold call with an argument of ``types``."""
    for k, steps in enumerate(task.answer["ground_truth"]):
        for s, step in enumerate(steps):
            for call in step:
                for key, value in call["arguments"].items():
                    if isinstance(value, types) and not isinstance(value, bool):
                        return k, s, call, key
    raise AssertionError("no such call")


def _replace_call(task, turn: int, step: int, call: dict, new: dict):
    answer = json.loads(json.dumps(task.answer))
    answer["ground_truth"][turn][step] = [new if c == call else c for c in answer["ground_truth"][turn][step]]
    return dataclasses.replace(task, answer=answer)


def test_gold_replay_scores_one_empty_and_wrong_argument_zero(tasks):
    for task in tasks:
        assert task.meta["category"] == CATEGORY and 2 <= task.meta["turns"] <= 4
        reward, _ = replay(factory(ENV_NAME), task, gold_replies(task))
        turns = len(task.answer["user_turns"])
        assert reward.total == 1.0 and reward.error is None and reward.parts["final_state"] == 1.0, task.id
        assert reward.parts["turns_passed"] == turns and all(reward.parts[f"turn_{k}"] == 1.0 for k in range(turns))
        empty, _ = replay(factory(ENV_NAME), task, [""] * turns)
        assert empty.total == 0.0 and empty.parts["turns_passed"] == 0.0
        # one wrong argument value in the model's replies: the episode fails at that turn
        k, s, call, key = _first_call(task)
        value = call["arguments"][key]
        wrong = {**call, "arguments": {**call["arguments"], key: value + 1 if isinstance(value, int) else value + "x"}}
        replies = gold_replies(_replace_call(task, k, s, call, wrong))
        bad, _ = replay(factory(ENV_NAME), task, replies)
        assert bad.total == 0.0 and bad.parts["turns_passed"] == k and bad.parts[f"turn_{k}"] == 0.0, task.id


def test_gold_episode_through_the_agent_loop(tasks):
    """run_episode + LocalEnv (the rollout actors' path), and the score from messages alone."""
    from forge_ray.env.adapters import LocalEnv
    from forge_ray.rollout.agent_loop import EpisodeSpec, run_episode
    from forge_ray.types import Generation, Status

    task = max(tasks, key=lambda t: t.meta["turns"])
    replies = iter(gold_replies(task))

    async def generate(prompt_ids, *, max_tokens, temperature, top_p, stop_token_ids, seed):
        text = next(replies)
        return Generation([ord(c) for c in text] + [2], [0.0] * (len(text) + 1), "stop", 0)

    spec = EpisodeSpec(max_new_tokens=10**5, max_context=10**6)
    traj = asyncio.run(run_episode(generate, LocalEnv(make_env(ENV_NAME)), task, _CharTokenizer(), spec, group_id="g", sample_index=0))
    assert traj.status == Status.OK and traj.reward.total == 1.0
    assert MultiTurnEnv().score(task, traj.messages, None) == traj.reward
    assert MultiTurnEnv().score(task, traj.messages[:-3], None).total == 0.0  # cut before the last turn ended


def test_observations_are_results_and_errors_are_observations(tasks):
    task = next(t for t in tasks if t.answer["ground_truth"][0][0][0]["arguments"])
    first = task.answer["ground_truth"][0][0]
    env = make_env(ENV_NAME)
    env.open(task)
    out = env.step(_action("\n".join(render_tool_call(ToolCall(c["name"], c["arguments"])) for c in first)))
    assert len(out.messages) == len(first) and all("error" not in json.loads(m["content"]) for m in out.messages)

    def error(text: str) -> str:
        return json.loads(env.step(_action(text)).messages[0]["content"])["error"]

    assert "unknown function 'cd'" in error('<tool_call>{"name": "cd", "arguments": {"folder": "x"}}</tool_call>')
    assert "needs" in error(render_tool_call(ToolCall(first[0]["name"], {})))
    key = next(iter(first[0]["arguments"]))
    assert "must be a JSON" in error(render_tool_call(ToolCall(first[0]["name"], {**first[0]["arguments"], key: [1]})))
    assert "could not be parsed" in env.step(_action("<tool_call>{oops</tool_call>")).messages[0]["content"]
    assert env.snapshot()["parse_errors"] == 1
    env.close()


def _action(text: str):
    from forge_ray.chat import parse_action

    return parse_action(text)


def test_step_tasks_score_exact_match_only(tasks):
    task = tasks[1]
    conversation, _ = play(task, gold_replies(task))
    steps = step_tasks(task, conversation)
    assert len(steps) == sum(m["role"] == "assistant" for m in conversation)
    env = MultiTurnEnv()
    for step in steps:
        index = len(step.messages) - len(task.messages)
        assert step.messages == [*task.messages, *conversation[:index]] and step.meta["category"] == STEP_CATEGORY
        gold, _ = replay(factory(ENV_NAME), step, gold_replies(step))
        assert gold.total == 1.0 and gold.parts["format"] == 1.0, step.id
        assert make_tasks(ENV_NAME, train="synthetic").expert(step) == [{"role": "assistant", "content": step.answer["gold_reply"]}]
        if step.answer["gold_calls"]:
            call = step.answer["gold_calls"][0]
            key = next(iter(call["arguments"]), None)
            other = [ToolCall(call["name"], {**call["arguments"], key: "other"})] if key else [ToolCall("trash_note", {"note_id": "NT-1"})]
            assert replay(factory(ENV_NAME), step, ["\n".join(map(render_tool_call, other))])[0].total == 0.0
            assert replay(factory(ENV_NAME), step, ["All done."])[0].total == 0.0  # no call where one is due
        else:
            assert replay(factory(ENV_NAME), step, ["Anything else I can do?"])[0].total == 1.0
            assert replay(factory(ENV_NAME), step, [render_tool_call(ToolCall("reorder_report", {}))])[0].total == 0.0
        assert replay(factory(ENV_NAME), step, ["<tool_call>{broken</tool_call>"])[0].parts["format"] == 0.0
        messages = [*step.messages, {"role": "assistant", "content": gold_replies(step)[0]}]
        assert env.score(step, messages, None).total == 1.0  # from the messages alone
    assert any(s.answer["gold_calls"] for s in steps) and any(not s.answer["gold_calls"] for s in steps)


def test_step_with_parallel_calls_accepts_any_order():
    ledger = SyntheticMultiTurn(["CreditUnionLedger"]).tasks("train", 12, 0)
    step = next(s for t in ledger for s in step_tasks(t) if len(s.answer["gold_calls"]) == 2)
    calls = [ToolCall(c["name"], c["arguments"]) for c in step.answer["gold_calls"]]
    assert replay(factory(ENV_NAME), step, ["\n".join(map(render_tool_call, calls[::-1]))])[0].total == 1.0
    assert replay(factory(ENV_NAME), step, [render_tool_call(calls[0])])[0].total == 0.0  # one of the two calls


def test_generator_is_deterministic_and_mixes_step_tasks():
    a, b = SyntheticMultiTurn(), SyntheticMultiTurn()
    assert _dump(a.tasks("train", 12, 3)) == _dump(b.tasks("train", 12, 3))
    assert _dump(a.tasks("train", 12, 4)) != _dump(a.tasks("train", 12, 3))
    assert {t.id for t in a.tasks("heldout", 6, 3)}.isdisjoint({t.id for t in a.tasks("train", 6, 3)})
    mixed = a.tasks("train", 10, 3, step_share=0.3)
    assert sum(t.meta["category"] == STEP_CATEGORY for t in mixed) == 3 and _dump(mixed) == _dump(b.tasks("train", 10, 3, step_share=0.3))
    assert {c for t in a.tasks("train", 40, 0) for c in t.meta["backends"]} == set(BACKENDS)
    assert all(t.meta["backends"] == ["FieldNotebook"] for t in SyntheticMultiTurn(["FieldNotebook"]).tasks("train", 5, 0))


def test_filters_drop_broken_tasks(tasks, monkeypatch):
    task = tasks[2]
    assert task_problems(task) == []
    k, s, call, key = _first_call(task, (str,))
    failing = _replace_call(task, k, s, call, {**call, "arguments": {**call["arguments"], key: "ZZ-0000"}})
    assert any(p.startswith("execution") for p in task_problems(failing))
    answer = json.loads(json.dumps(task.answer))
    answer["gold_answers"][0] = "<tool_call>not a reply</tool_call>"
    assert any(p.startswith("format") for p in task_problems(dataclasses.replace(task, answer=answer)))

    def unstated_write(d):  # writes a note whose text the request never gives
        d.step(("write_note", {"title": "Secret plan", "body": "unstated words"}))
        return 'Create a note titled "Secret plan".', "Saved."

    def failing_read(d):  # reads a note that does not exist
        d.step(("open_note", {"note_id": "NT-0"}))
        return "Read me note NT-0.", "It says nothing."

    monkeypatch.setitem(mt_intents.INTENTS, "FieldNotebook", (*mt_intents.INTENTS["FieldNotebook"], unstated_write, failing_read))
    source = SyntheticMultiTurn(["FieldNotebook"])
    kept = source.tasks("train", 6, 0)
    assert source.stats["dropped:grounding"] > 0 and source.stats["dropped:execution"] > 0
    assert all(not {"unstated_write", "failing_read"} & set(t.meta["intents"]) for t in kept)
    assert all(task_problems(t) == [] for t in kept)


def test_expert_conversation_renders_for_sft_with_assistant_only_mask(tasks):
    from forge_ray.rollout.agent_loop import render_conversation

    source = make_tasks(ENV_NAME, train="synthetic", step_share=0.5)
    for task in [tasks[3], *source.tasks("train", 2, 0)]:
        expert = source.expert(task)
        tokens, mask = render_conversation(_TemplateTokenizer(), task, expert)
        text = "".join(chr(t) if t else IM_END for t in tokens)
        assert text == render_layout(task, expert)
        trained = "".join(chr(t) if t else IM_END for t, m in zip(tokens, mask) if m)
        assert trained == "".join(m["content"] + IM_END for m in expert if m["role"] == "assistant")
        if task.meta["category"] == CATEGORY:
            assert sum(m["role"] == "user" for m in expert) == task.meta["turns"] - 1 and any(m["role"] == "tool" for m in expert)


def test_task_source_options():
    source = make_tasks(ENV_NAME, train="synthetic", step_share=0.5, heldout="synthetic")
    train = source.tasks("train", 8, 0)
    assert sum(t.meta["category"] == STEP_CATEGORY for t in train) == 4 and all(t.env == ENV_NAME for t in train)
    assert all(t.meta["category"] == CATEGORY for t in source.tasks("heldout", 4, 0))
    pickle.loads(pickle.dumps(train))
    for kwargs, key in [({"step_share": 0.5}, "step_share"), ({"train": "synthetic", "step_share": 1.5}, "step_share"),
                        ({"train": "synthetic", "backends": ["TravelAPI"]}, "backends"), ({"train": "mine"}, "train"),
                        ({"heldout": "x"}, "heldout"), ({"backends": ["FieldNotebook"]}, "backends")]:
        with pytest.raises(ValueError, match=key):
            make_tasks(ENV_NAME, **kwargs)
    with pytest.raises(TypeError, match="multi_turn"):
        make_tasks(ENV_NAME, multi_turn="synthetic")
    with pytest.raises(ValueError, match="no training tasks"):
        make_tasks(ENV_NAME).tasks("train", 2, 0)


def test_decontamination_flags_planted_overlaps_and_passes_clean_data():
    question = ("I would like to know the current weather forecast for the city of Boston in Massachusetts "
                "for the next three days in fahrenheit please")
    bfcl_names, questions = {"weather.get_forecast": "simple_python", "book_room": "multiple"}, [("simple_python_7", question)]
    clean = {"reserve_kayak_rental": "single_turn", "lookup_sku": "multi_turn"}
    texts = [("t0", "Book the kayak rental in Lisbon for 3 people."), ("t1", "Pick 3 units of brass hinge for order ORD-1234.")]
    report = check(clean, texts, bfcl_names, questions)
    assert report["clean"] and report["ngrams"]["texts_shorter_than_n"] == 2
    copied = " ".join(words(question)[2:15])  # 13 words of the BFCL question inside a synthetic request
    planted = check({**clean, "book_room": "multi_turn", "get_forecast": "single_turn"},
                    [*texts, ("t2", f"Hello there. {copied.upper()}, and then some more words here.")], bfcl_names, questions)
    assert not planted["clean"]
    assert {(o["name"], o["match"]) for o in planted["function_names"]["overlaps"]} == {("book_room", "equal"), ("get_forecast", "dotted_suffix")}
    assert [o["id"] for o in planted["ngrams"]["overlaps"]] == ["t2"] and planted["ngrams"]["overlaps"][0]["bfcl_id"] == "simple_python_7"


def test_real_bfcl_names_and_questions_are_disjoint_from_the_synthetic_data(tmp_path, capsys):
    pytest.importorskip("bfcl_eval", reason="needs bfcl-eval (requirements/bfcl-nodeps.txt)")
    from envs.function_calling.decontam import bfcl_reference, synthetic_reference
    from forge_ray.cli import main

    assert main(["decontam", "bfcl", "--synthetic", "5", "--out", str(tmp_path / "d.json")]) == 0 and "clean" in capsys.readouterr().out
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["clean"] and report["synthetic"] == {"single_turn_tasks": 10, "multi_turn_tasks": 10} and len(report["bfcl_categories"]) == 15

    bfcl_names, questions, bfcl_classes = bfcl_reference()
    names, texts, _ = synthetic_reference(20, 0)
    assert set(function_names()) <= set(names) and not set(BACKENDS) & bfcl_classes
    assert check(names, texts, bfcl_names, questions)["clean"]
    planted = check({**names, "send_message": "multi_turn"}, [*texts, ("x", f"Please: {questions[0][1]}")], bfcl_names, questions[:1])
    assert not planted["clean"] and planted["function_names"]["overlaps"][0]["name"] == "send_message"


class _TemplateTokenizer(_CharTokenizer):
    """forge_ray's chat template, characters as ids, ``<|im_end|>`` as id 0."""

    def convert_tokens_to_ids(self, token):
        assert token == IM_END
        return 0

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True, tokenize=False):
        from jinja2 import Template

        from forge_ray.chat import TOOL_CHAT_TEMPLATE

        return Template(TOOL_CHAT_TEMPLATE).render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)

    def encode(self, text, add_special_tokens=False):
        out, rest = [], text
        while rest:
            if rest.startswith(IM_END):
                out.append(0)
                rest = rest[len(IM_END):]
            else:
                out.append(ord(rest[0]))
                rest = rest[1:]
        return out
