"""Unit tests of the multi-turn function-calling environment on real BFCL entries: BFCL's
back-ends execute the calls, BFCL's multi-turn checker scores the episode."""
from __future__ import annotations

import json
import pickle

import pytest

pytest.importorskip("bfcl_eval", reason="needs bfcl-eval (requirements/bfcl-nodeps.txt)")

from envs import ENVS, factory, make_env, make_tasks  # noqa: E402
from envs.function_calling.multi_turn import CANNOT_TEXT, TURN_DONE_TEXT, MultiTurnEnv, gold_replies, play  # noqa: E402
from envs.function_calling.multi_turn_backend import INVALID_CALL, _utils, gold_tool_calls, step_limit  # noqa: E402
from envs.function_calling.multi_turn_data import ENV_NAME, MULTI_TURN_CATEGORIES, load_multi_turn  # noqa: E402
from forge_ray.chat import parse_action, render_tool_call  # noqa: E402
from forge_ray.env.protocol import Env, TaskSource  # noqa: E402
from forge_ray.eval.harness import replay  # noqa: E402
from forge_ray.types import ToolCall  # noqa: E402
from stand_ins import CharTokenizer as _CharTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tasks() -> dict[str, list]:
    return {c: load_multi_turn(c, limit=3) for c in MULTI_TURN_CATEGORIES}


def _calls_text(calls: list[ToolCall]) -> str:
    return "\n".join(render_tool_call(c) for c in calls)


def _leftover_instances() -> list[str]:
    return [k for k in vars(_utils()) if k.startswith("forge_ray_")]


def test_registry_protocol_and_task_source():
    assert ENV_NAME in ENVS and isinstance(make_env(ENV_NAME), Env)
    source = make_tasks(ENV_NAME, categories=["multi_turn_base", "multi_turn_miss_func"])
    assert isinstance(source, TaskSource)
    held = source.tasks("heldout", 10, 0)
    assert len({t.id for t in held}) == 10 and {t.meta["category"] for t in held} == {"multi_turn_base", "multi_turn_miss_func"}
    assert [t.id for t in held] == [t.id for t in source.tasks("heldout", 10, 0)]
    with pytest.raises(ValueError, match="no training tasks"):
        source.tasks("train", 4, 0)
    assert len(make_tasks(ENV_NAME, train="bfcl").tasks("train", 4, 0)) == 4
    pickle.loads(pickle.dumps(factory(ENV_NAME, {"step_limit": 5})))().close()
    with pytest.raises(ValueError, match="unknown BFCL multi-turn"):
        make_tasks(ENV_NAME, categories=["simple_python"])


@pytest.mark.parametrize("category", MULTI_TURN_CATEGORIES)
def test_gold_replay_scores_one_and_empty_scores_zero(tasks, category):
    for task in tasks[category]:
        reward, snapshot = replay(factory(ENV_NAME), task, gold_replies(task))
        assert reward.total == 1.0 and reward.error is None, (task.id, make_env(ENV_NAME).verdict(task, snapshot=snapshot))
        assert reward.parts["turns_passed"] == reward.parts["turns"] == len(task.answer["user_turns"])
        assert all(reward.parts[f"turn_{k}"] == 1.0 for k in range(len(task.answer["user_turns"])))
        empty, _ = replay(factory(ENV_NAME), task, [""] * len(task.answer["user_turns"]))
        assert empty.total == 0.0 and empty.error is None
    assert not _leftover_instances()  # every episode and checker run deleted its back-ends


def test_wrong_argument_fails_at_its_turn(tasks):
    task = tasks["multi_turn_base"][0]  # turn 0: cd(document), mkdir(temp), mv(final_report.pdf -> temp)
    replies = gold_replies(task)
    env = make_env(ENV_NAME)
    wrong = [ToolCall(c.name, {**c.arguments, "dir_name": "tmp"} if c.name == "mkdir" else c.arguments)
             for c in gold_tool_calls(task.answer["ground_truth"][0], task.answer["involved_classes"])]
    reward, snapshot = replay(factory(ENV_NAME), task, [_calls_text(wrong), *replies[1:]])
    assert reward.total == 0.0 and reward.parts["turns_passed"] == 0 and reward.parts["turn_0"] == 0.0
    assert "turn_1" not in reward.parts
    assert env.verdict(task, snapshot=snapshot)["error_type"].startswith("multi_turn:")
    # the same mistake in the second turn: the first passes, the second fails
    second = gold_tool_calls(task.answer["ground_truth"][1], task.answer["involved_classes"])
    bad = [ToolCall(c.name, {k: (v + "x" if isinstance(v, str) else v) for k, v in c.arguments.items()}) for c in second]
    reward, _ = replay(factory(ENV_NAME), task, [*replies[:2], _calls_text(bad), *replies[3:]])
    assert reward.total == 0.0 and reward.parts["turn_0"] == 1.0 and reward.parts["turn_1"] == 0.0 and reward.parts["turns_passed"] == 1


def test_observations_are_backend_results_and_malformed_calls_are_errors(tasks, tmp_path):
    task = tasks["multi_turn_base"][0]
    env = make_env(ENV_NAME)
    env.open(task)
    bad = env.step(parse_action('<tool_call>{"name": "cd", "arguments": </tool_call>'))
    assert not bad.done and bad.info["parse_error"] and len(bad.messages) == 1
    assert bad.messages[0]["role"] == "tool" and bad.messages[0]["content"].startswith("Error: the tool call could not be parsed")
    odd = env.step(parse_action(_calls_text([ToolCall("open", {"file": str(tmp_path / "probe"), "mode": "w"}),
                                             ToolCall("cd", {"folder": "document"}), ToolCall("cd", {"bad key": 1}),
                                             ToolCall("cd", {"nope": 1})])))
    contents = [m["content"] for m in odd.messages]
    assert contents[0] == "Error during execution: name 'open' is not defined"  # never evaluated
    assert not (tmp_path / "probe").exists()
    assert json.loads(contents[1]) == {"current_working_directory": "document"}
    assert "invalid argument name 'bad key'" in contents[2] and "unexpected keyword argument 'nope'" in contents[3]
    python = env.step(parse_action("[ls(a=True)]"))  # BFCL's Python call syntax is read too
    assert "final_report.pdf" in python.messages[0]["content"]
    snap = env.snapshot()
    assert snap["parse_errors"] == 1 and snap["turns"][0][0][0] == INVALID_CALL and snap["turns"][0][0][1] == "cd(folder='document')"
    env.close()
    assert not _leftover_instances()


def test_recovering_from_a_malformed_call_still_scores_one(tasks):
    task = tasks["multi_turn_base"][1]
    replies = gold_replies(task)
    reward, snapshot = replay(factory(ENV_NAME), task, ['<tool_call>{"name": "ls"</tool_call>', *replies])
    assert reward.total == 1.0 and reward.parts["parse_errors"] == 1.0


def test_miss_func_reveals_the_held_out_function_at_its_turn(tasks):
    task = tasks["multi_turn_miss_func"][0]  # missed_function {"3": ["sort"]}: turn 2 asks to sort, turn 3 brings it
    assert task.answer["revealed"] == {"3": ["sort"]}
    assert "sort" not in {t["function"]["name"] for t in task.tools}
    assert task.answer["ground_truth"][2] == [] and task.answer["ground_truth"][3]
    conversation, _ = play(task, gold_replies(task))
    users = [m["content"] for m in conversation if m["role"] == "user"]
    assert len(users) == len(task.answer["user_turns"]) - 1
    assert [i + 1 for i, u in enumerate(users) if '"name": "sort"' in u] == [3]
    assert users[2].endswith("I have updated some more functions you can choose from. What about now?")
    before = conversation[:[i for i, m in enumerate(conversation) if m["role"] == "user"][2]]
    assert not any('"sort"' in m["content"] for m in before)
    assert CANNOT_TEXT in [m["content"] for m in conversation]  # the gold-empty turn is answered without a call


def test_step_limit_force_quits_the_episode(tasks):
    task = tasks["multi_turn_base"][0]
    limit = step_limit()
    assert limit == 20
    env = make_env(ENV_NAME)
    env.open(task)
    pwd = _calls_text([ToolCall("pwd", {})])
    results = [env.step(parse_action(pwd)) for _ in range(limit + 1)]
    assert not any(r.done for r in results[:limit]) and results[limit].done and results[limit].info["force_quit"]
    reward = env.score(task, [], env.snapshot())
    assert env.score(task, []) == reward  # in its own instance, without a snapshot: its own record
    verdict = env.verdict(task, snapshot=env.snapshot())
    env.close()
    assert reward.total == 0.0 and reward.parts["force_quit"] == 1.0 and verdict["error_type"] == "multi_turn:force_terminated"
    small = MultiTurnEnv(step_limit=2)
    small.open(task)
    assert [small.step(parse_action(pwd)).done for _ in range(3)] == [False, False, True]
    small.close()


def test_score_from_messages_matches_the_snapshot(tasks):
    task = tasks["multi_turn_miss_param"][0]
    conversation, snapshot = play(task, gold_replies(task))
    messages = [*task.messages, *conversation]
    env = make_env(ENV_NAME)
    assert env.score(task, messages, snapshot) == env.score(task, messages, None)
    assert env.score(task, messages[:-3], None).total == 0.0  # cut before the last turn ended
    assert [m["content"] for m in conversation if m["role"] == "assistant"][-1] == TURN_DONE_TEXT


def test_eval_cli_gold_and_empty(tmp_path, capsys):
    from forge_ray.cli import main

    gold, empty, details = tmp_path / "gold.json", tmp_path / "empty.json", tmp_path / "d.jsonl"
    cats = "multi_turn_base,multi_turn_miss_func"
    assert main(["eval", "bfcl", "--gold", "--categories", cats, "--limit", "4", "--out", str(gold)]) == 0
    assert main(["eval", "bfcl", "--empty", "--categories", cats, "--limit", "4", "--out", str(empty), "--details", str(details)]) == 0
    g, e = json.loads(gold.read_text()), json.loads(empty.read_text())
    assert {c: (g[c]["accuracy"], g[c]["n"]) for c in g} == {"multi_turn_base": (1.0, 4), "multi_turn_miss_func": (1.0, 4)}
    assert {c: e[c]["accuracy"] for c in e} == {"multi_turn_base": 0.0, "multi_turn_miss_func": 0.0}
    rows = [json.loads(line) for line in details.read_text().splitlines()]
    assert len(rows) == 8 and all(r["error_type"] == "multi_turn:empty_turn_model_response" for r in rows if r["category"] == "multi_turn_base")
    assert "multi_turn_miss_func" in capsys.readouterr().out
    with pytest.raises(ValueError, match="separate"):
        main(["eval", "bfcl", "--gold", "--categories", "multi_turn_base,multiple", "--out", str(gold)])


def test_agent_loop_plays_a_gold_episode_through_the_rl_path(tasks):
    """run_episode + LocalEnv (the rollout actors' path; the env is blocking, so in a thread)."""
    import asyncio

    from forge_ray.env.adapters import LocalEnv
    from forge_ray.rollout.agent_loop import EpisodeSpec, run_episode
    from forge_ray.types import Generation, Status

    task = tasks["multi_turn_miss_func"][0]
    replies = iter(gold_replies(task))

    async def generate(prompt_ids, *, max_tokens, temperature, top_p, stop_token_ids, seed):
        text = next(replies)
        return Generation([ord(c) for c in text] + [2], [0.0] * (len(text) + 1), "stop", 0)

    spec = EpisodeSpec(max_new_tokens=10**5, max_context=10**6)
    traj = asyncio.run(run_episode(generate, LocalEnv(make_env(ENV_NAME)), task, _CharTokenizer(), spec, group_id="g", sample_index=0))
    assert traj.status == Status.OK and traj.reward.total == 1.0 and traj.reward.parts["turns_passed"] == 5
    roles = [m["role"] for m in traj.messages[len(task.messages):]]
    assert roles.count("user") == 4 and roles.count("assistant") == len(gold_replies(task))
    assert not _leftover_instances()


def test_model_run_wiring_with_a_stand_in_policy(monkeypatch, tmp_path):
    """``--model``: episodes come from ``play_policy`` (replaced here by the agent loop on a
    scripted policy: gold on the first task, no call on the second); verdicts reach the details."""
    import forge_ray.eval.harness as harness
    from forge_ray.env.adapters import LocalEnv
    from forge_ray.eval.bfcl import BfclEvalConfig, run_bfcl
    from forge_ray.rollout.agent_loop import EpisodeSpec, run_episode
    from forge_ray.types import Generation

    async def fake_play_policy(spec, make, tasks, *, samples=1, batch=64, on_batch=None):
        assert spec.model == "POLICY" and spec.temperature == 0.0
        trajs = []
        for i, task in enumerate(tasks):
            replies = iter(gold_replies(task) if i == 0 else [""] * 20)

            async def generate(prompt_ids, *, max_tokens, temperature, top_p, stop_token_ids, seed, replies=replies):
                text = next(replies)
                return Generation([ord(c) for c in text] + [2], [0.0] * (len(text) + 1), "stop", 0)

            trajs.append(await run_episode(generate, LocalEnv(make()), task, _CharTokenizer(), EpisodeSpec(max_new_tokens=10**5, max_context=10**6),
                                           group_id=task.id, sample_index=0))
        on_batch(len(tasks), trajs)
        return trajs

    monkeypatch.setattr(harness, "play_policy", fake_play_policy)
    details = tmp_path / "d.jsonl"
    cfg = BfclEvalConfig(categories=("multi_turn_long_context",), model="POLICY", limit=2, max_context=16384, details=str(details))
    summary = run_bfcl(cfg)
    assert summary["multi_turn_long_context"]["accuracy"] == 0.5 and summary["multi_turn_long_context"]["n"] == 2
    rows = [json.loads(line) for line in details.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, False] and rows[1]["error_type"] == "multi_turn:empty_turn_model_response"
    assert rows[0]["replies"] == gold_replies(load_multi_turn("multi_turn_long_context", 1)[0])


def test_bad_data_names_file_line_and_id(tmp_path):
    import shutil

    from envs.function_calling.bfcl_data import data_dir

    (tmp_path / "possible_answer").mkdir()
    shutil.copytree(data_dir() / "multi_turn_func_doc", tmp_path / "multi_turn_func_doc")
    entry = {"id": "multi_turn_base_0", "question": [[{"role": "user", "content": "ls"}], [{"role": "user", "content": "pwd"}]],
             "initial_config": {}, "involved_classes": ["GorillaFileSystem"]}
    (tmp_path / "BFCL_v4_multi_turn_base.json").write_text("\n" + json.dumps(entry) + "\n")
    (tmp_path / "possible_answer" / "BFCL_v4_multi_turn_base.json").write_text(
        json.dumps({"id": "multi_turn_base_0", "ground_truth": [["ls()"]]}) + "\n")
    with pytest.raises(ValueError, match=r"BFCL_v4_multi_turn_base.json:2 \(multi_turn_base_0\).*one list of calls per user turn"):
        load_multi_turn("multi_turn_base", root=tmp_path)
