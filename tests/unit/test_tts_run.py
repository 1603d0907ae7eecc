"""``forge-ray tts`` pure parts (forge_ray/tts/run.py): the per-environment answer normalisers,
candidates from trajectories, the N-prefix selection and its aggregation into the table, the
plot and the command line. Expected numbers are worked out by hand."""
from __future__ import annotations

import json
import math

import pytest

from forge_ray.tts.run import (DEFAULT_SELECTORS, TtsConfig, aggregate, all_calls_answer, bash_commands_answer,
                               build_table, calculator_answer, candidates, choose, format_table, last_calls_answer,
                               last_text_answer, normaliser_for, plot, python_block_answer, sample_score)
from forge_ray.tts.selectors import Candidate
from forge_ray.types import RewardBreakdown, Status, Trajectory, Turn
from stand_ins import CharTokenizer as _Tok


def traj(*replies: str, index: int = 0, reward: float | None = 1.0, error: str | None = None, topk=None) -> Trajectory:
    """A trajectory whose assistant turns are ``replies`` (tool observations between them)."""
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    for i, r in enumerate(replies):
        messages.append({"role": "assistant", "content": r})
        if i < len(replies) - 1:
            messages.append({"role": "tool", "content": "obs"})
    tokens = [5, 6, 7, 1, 2, 3, 9, 9, 4]
    mask = [0, 0, 0, 1, 1, 1, 0, 0, 1]
    logprobs = [0.0, 0.0, 0.0, -0.5, -1.0, -1.5, 0.0, 0.0, -2.0]
    rb = None if reward is None else RewardBreakdown(reward, error=error)
    return Trajectory("t", "g", index, 3, tokens, logprobs, mask, [Turn(3, 6, 0, "stop"), Turn(8, 9, 0, "stop")],
                      Status.OK, messages, rb, topk=list(topk or []))


# ---------------------------------------------------------------- normalisers

def test_calculator_answer():
    assert calculator_answer(traj("<tool_call>x</tool_call>", "The result.\nAnswer: 07.")) == "7"
    assert calculator_answer(traj("Answer: -12")) == "-12"
    # only the last reply counts, and it must hold exactly one "Answer:" line with an integer
    assert calculator_answer(traj("Answer: 3", "thinking", index=4)) == "<no answer #4>"
    assert calculator_answer(traj("Answer: 3\nAnswer: 4", index=2)) == "<no answer #2>"
    assert calculator_answer(traj("Answer: three", index=1)) == "<no answer #1>"
    # unparsable answers are unique per sample: they never pool into a majority
    assert calculator_answer(traj("x", index=1)) != calculator_answer(traj("x", index=2))


def test_call_answers_ignore_order():
    a = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call><tool_call>{"name": "mul", "arguments": {"b": 3, "a": 4}}</tool_call>'
    b = '<tool_call>{"name": "mul", "arguments": {"a": 4, "b": 3}}</tool_call><tool_call>{"name": "add", "arguments": {"b": 2, "a": 1}}</tool_call>'
    assert last_calls_answer(traj(a)) == last_calls_answer(traj(b))
    assert last_calls_answer(traj("no tool needed")) == "[]"  # irrelevance: no call is an answer
    assert last_calls_answer(traj('<tool_call>{"name": </tool_call>', index=3)) == "<no answer #3>"
    # tau2: every call of the episode, wherever it was made
    assert all_calls_answer(traj(a, "done")) == all_calls_answer(traj(b)) != all_calls_answer(traj("done"))


def test_code_and_text_answers():
    v1 = "Here:\n```python\ndef f():   \n\n    return 1\n```\n"
    v2 = "```python\ndef f():\n    return 1\n```"
    assert python_block_answer(traj(v1)) == python_block_answer(traj("bad", v2)) == "def f():\n    return 1"
    assert python_block_answer(traj("```python\na\n```\n```python\nb\n```", index=5)) == "<no answer #5>"
    bash = "THOUGHT: x\n```bash\nsed -i  's/a/b/'   f.py\n```"
    assert bash_commands_answer(traj(bash, "THOUGHT: y\n```bash\necho DONE\n```")) == "sed -i 's/a/b/' f.py\necho DONE"
    assert last_text_answer(traj("a  b\n c")) == "a b c"
    assert normaliser_for("calculator") is calculator_answer and normaliser_for("nope") is last_text_answer


# ---------------------------------------------------------------- candidates and scores

def test_sample_score_and_candidates():
    assert sample_score(traj("x", reward=0.5)) == 0.5
    assert sample_score(traj("x", reward=1.0, error="score failed")) == 0.0
    assert sample_score(traj("x", reward=None)) == 0.0
    trajs = [traj("Answer: 3", index=0, topk=[[-0.1, -3.0], [-0.2, float("-inf")], [-1.0], [-0.5]]),
             traj("Answer: 4", index=1, reward=0.0)]
    pairs = candidates(trajs, calculator_answer, env_topk=[[[-1.0], []], [[float("-inf"), -2.0]]])
    (c0, s0), (c1, s1) = pairs
    assert (c0.index, c0.answer, s0, c1.index, c1.answer, s1) == (0, "3", 1.0, 1, "4", 0.0)
    assert c0.logprobs == [-0.5, -1.0, -1.5, -2.0] and c0.agent_tokens == len(c0.topk) == 4
    assert c0.topk[1] == [-0.2]  # -inf (cut by top-p) dropped
    assert c0.env_topk == [[-1.0], []] and c1.env_topk == [[-2.0]] and c0.env_tokens == 2


# ---------------------------------------------------------------- N-prefix selection and the table

def group(answers: str, scores: list[float], lp: list[float] | None = None) -> list[tuple[Candidate, float]]:
    lp = lp or [-1.0] * len(scores)
    return [(Candidate(i, a, logprobs=[l]), s) for i, (a, s, l) in enumerate(zip(answers, scores, lp))]


# task A: answers x y y y, only sample 2 right; task B: a a b c, sample 0 right; task C: all wrong
GROUPS = [group("xyyy", [0, 0, 1, 0], [-3, -2, -1, -0.5]), group("aabc", [1, 0, 0, 0], [-0.1, -2, -2, -2]),
          group("pqrs", [0, 0, 0, 0])]


def test_choose_one_task():
    c = choose(GROUPS[0], [1, 2, 4], ["first", "majority", "mean_logprob", "oracle"])
    assert c.picks == {"first": {1: 0, 2: 0, 4: 0}, "majority": {1: 0, 2: 0, 4: 1}, "mean_logprob": {1: 0, 2: 1, 4: 3}}
    assert c.oracle == {1: 0, 2: 0, 4: 1}
    with pytest.raises(ValueError, match="fewer than n"):
        choose(GROUPS[0], [8], ["first"])


def test_table_by_hand():
    sels = ["first", "majority", "mean_logprob", "oracle"]
    t = build_table(GROUPS, [1, 2, 4], sels)
    acc = t["accuracy"]
    # first: A 0, B 1, C 0 at every N
    assert acc["first"] == {"1": pytest.approx(1 / 3), "2": pytest.approx(1 / 3), "4": pytest.approx(1 / 3)}
    # majority N=4: A -> y (sample 1, wrong); B -> a (sample 0, right); C -> p (wrong)
    assert acc["majority"]["4"] == pytest.approx(1 / 3)
    # mean_logprob N=4: A -> sample 3 (wrong), B -> sample 0 (right)
    assert acc["mean_logprob"]["4"] == pytest.approx(1 / 3)
    # pass@N: N=1 only B, N=4 A and B
    assert t["pass_at_n"] == {"1": pytest.approx(1 / 3), "2": pytest.approx(1 / 3), "4": pytest.approx(2 / 3)}
    assert acc["oracle"] == t["pass_at_n"]
    for n in ("1", "2", "4"):
        assert all(acc[s][n] <= t["pass_at_n"][n] + 1e-12 for s in sels)
    assert "judge_calls" not in t
    text = format_table(t)
    assert text.splitlines()[0].split() == ["selector", "N=1", "N=2", "N=4"] and "mean_logprob" in text


def test_fractional_rewards_average():
    t = build_table([group("ab", [0.5, 1.0]), group("ab", [0.25, 0.0])], [1, 2], ["first", "oracle"])
    assert t["accuracy"]["first"]["2"] == pytest.approx(0.375) and t["pass_at_n"]["2"] == pytest.approx(0.625)


def test_tournament_with_a_judge_and_threads():
    from concurrent.futures import ThreadPoolExecutor

    scores = [{c.index: s for c, s in g} for g in GROUPS]
    judges = [lambda a, b, s=s: int(s[b.index] > s[a.index]) for s in scores]  # a perfect judge
    with ThreadPoolExecutor(3) as pool:
        t = build_table(GROUPS, [1, 2, 4], ["tournament", "oracle"], judges=judges, mapper=pool.map)
    assert t["accuracy"]["tournament"] == t["pass_at_n"]  # a perfect judge reaches pass@N
    assert t["judge_calls"] == {"1": 0, "2": 3, "4": 9}  # N - 1 per task


def test_confidence_selectors_use_topk():
    peaked, flat = [[-0.01, -5.0, -6.0]], [[-1.1, -1.1, -1.1]]
    g = [(Candidate(0, "a", topk=flat), 0.0), (Candidate(1, "b", topk=peaked), 1.0)]
    t = build_table([g], [1, 2], ["agent_confidence", "agent_token_vote", "env_token_vote"], k=3)
    assert t["accuracy"]["agent_confidence"] == {"1": 0.0, "2": 1.0}
    assert t["accuracy"]["agent_token_vote"]["2"] == 1.0
    assert t["accuracy"]["env_token_vote"]["2"] == 0.0  # no env top-k: plain majority, tie -> first


def test_aggregate_empty_and_plot(tmp_path):
    t = aggregate([], [], [1, 2], ["first", "oracle"])
    assert t["accuracy"]["first"] == {"1": 0.0, "2": 0.0}
    plot(build_table(GROUPS, [1, 2, 4], ["first", "majority", "oracle"]), tmp_path / "tts.png", "t")
    assert (tmp_path / "tts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- config and command line

def test_config_checks():
    TtsConfig(model="m", out="o").check()
    for bad in (dict(selectors=("nope",)), dict(ns=(0, 2)), dict(topk=21), dict(tasks=0)):
        with pytest.raises(ValueError):
            TtsConfig(model="m", out="o", **bad).check()


def test_cli_parses():
    from forge_ray.cli import build_parser

    args = build_parser().parse_args(["tts", "--model", "M", "--out", "O", "--n", "4,1,2", "--selectors", "first,oracle",
                                      "--env-kwargs", '{"max_tool_turns": 3}', "--topk", "5"])
    assert args.ns == (1, 2, 4) and args.selectors == ("first", "oracle") and args.topk == 5
    assert json.loads(args.env_kwargs) == {"max_tool_turns": 3} and args.fn.__module__ == "forge_ray.tts.run"
    default = build_parser().parse_args(["tts", "--model", "M", "--out", "O"])
    assert default.selectors == DEFAULT_SELECTORS and default.ns == (1, 2, 4, 8, 16) and not math.isnan(default.temperature)


def test_cli_rejects_bad_config(capsys):
    from forge_ray.cli import main

    assert main(["tts", "--model", "M", "--out", "O", "--selectors", "first,bogus"]) == 2
    assert "unknown selectors" in capsys.readouterr().err


# ---------------------------------------------------------------- the agent loop carries top-k only when asked


class _Env:
    """Two turns: the first reply gets an observation, the second ends the episode."""

    def __init__(self):
        self.steps = 0

    async def open(self, task):
        return task

    async def step(self, action):
        from forge_ray.types import StepResult

        self.steps += 1
        return StepResult([{"role": "tool", "content": "ok"}], self.steps >= 2)

    async def score(self, task, messages):
        return RewardBreakdown(1.0)

    async def close(self):
        pass


def _episode(spec, generate):
    import asyncio

    from forge_ray.rollout.agent_loop import run_episode
    from forge_ray.types import Task

    task = Task("t", "x", [{"role": "user", "content": "hi"}], [])
    return asyncio.run(run_episode(generate, _Env(), task, _Tok(), spec, group_id="g", sample_index=0))


def test_agent_loop_topk_only_when_asked():
    from forge_ray.rollout.agent_loop import EpisodeSpec
    from forge_ray.types import Generation

    async def plain(prompt_ids, *, max_tokens, temperature, top_p, stop_token_ids, seed):  # no topk parameter
        return Generation([65, 66, 2], [-0.1, -0.2, -0.3], "stop", 0)

    seen = []

    async def with_topk(prompt_ids, *, max_tokens, temperature, top_p, stop_token_ids, seed, topk=0):
        seen.append(topk)
        return Generation([65, 66, 2], [-0.1, -0.2, -0.3], "stop", 0, [[-0.1 * i, -9.0] for i in range(1, 4)])

    t = _episode(EpisodeSpec(), plain)  # topk = 0: the RL path, generate never sees the argument
    assert t.status == Status.OK and t.num_sampled == 6 and t.topk == []
    t = _episode(EpisodeSpec(topk=2), with_topk)
    assert seen == [2, 2] and t.num_sampled == 6 and len(t.topk) == 6  # one row per sampled token, in order
    assert t.topk[:3] == t.topk[3:] and [r[0] for r in t.topk[:3]] == pytest.approx([-0.1, -0.2, -0.3])
    assert t.wall_seconds > 0


# ---------------------------------------------------------------- a judge behind an endpoint

def test_endpoint_judge_over_http():
    """The tournament's judge at an OpenAI-compatible URL (a stdlib server here, as forge-ray
    serve would answer): the model is the first /v1/models lists, the question carries both
    attempts, and the reply's letter decides."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from forge_ray.tts.judge import EndpointJudge, make_judge
    from forge_ray.types import Task

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, payload):
            body = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": "judge-model", "object": "model"}]})

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(req)
            right = "B" if "Answer: 7" in req["messages"][1]["content"].split("Attempt B:")[1] else "A"
            self._send({"choices": [{"index": 0, "message": {"role": "assistant", "content": f" {right}."}}]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    task = Task("t", "calculator", [{"role": "user", "content": "3 + 4?"}], [])

    def traj(answer):
        return Trajectory("t", "g", 0, 0, [], [], [], [], Status.OK, task.messages + [{"role": "assistant", "content": answer}])

    async def scenario():
        judge, engine = await make_judge(url, "", None, None, 0)
        assert engine is None and isinstance(judge, EndpointJudge) and judge.model == "judge-model"
        return [await judge.compare(task, traj(a), traj(b)) for a, b in (("Answer: 6", "Answer: 7"), ("Answer: 7", "Answer: 5"))], judge

    try:
        verdicts, judge = asyncio.run(scenario())
    finally:
        server.shutdown()
    assert verdicts == [1, 0] and judge.calls == 2
    assert seen[0]["model"] == "judge-model" and seen[0]["temperature"] == 0.0 and seen[0]["messages"][0]["role"] == "system"
    assert "Attempt A:\nassistant: Answer: 6" in seen[0]["messages"][1]["content"]
