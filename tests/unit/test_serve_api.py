"""forge-ray serve, the pure parts: request -> prompt, completion -> response, SSE chunking,
test-time selection; and the replica's logic end to end over a scripted stand-in engine."""
import asyncio
import json

import pytest

from envs import make_tasks
from forge_ray.chat import render_tool_call
from forge_ray.models.tiny import make_tiny_model
from forge_ray.rollout.agent_loop import render_conversation
from forge_ray.serve import api
from forge_ray.serve.app import PolicyServer, ServeConfig, _merge, stop_token_ids
from forge_ray.serve.sse import TextDecoder, ToolStream, response_chunks
from forge_ray.types import ToolCall

CALL = render_tool_call(ToolCall("add", {"a": 2, "b": 3}))
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_model(tmp_path_factory.mktemp("tiny")))


def test_parse_request_defaults_and_refusals():
    req = api.parse_request({"messages": [{"role": "user", "content": "hi"}]})
    assert (req.temperature, req.top_p, req.n, req.stream, req.max_tokens, req.seed, req.tts) == (1.0, 1.0, 1, False, None, None, None)
    req = api.parse_request({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7, "tool_choice": "none",
                             "forge_tts": {"n": 3, "selector": "mean_logprob"}, "seed": 5, "whatever": 1})
    assert req.max_tokens == 7 and not req.parse_tools and req.tts == api.TtsSpec(3, "mean_logprob", 20) and req.seed == 5
    base = {"messages": [{"role": "user", "content": "hi"}]}
    for bad in ({}, {"messages": []}, {**base, "tool_choice": "required"}, {**base, "stop": ["\n"]},
                {**base, "temperature": 3}, {**base, "n": 0}, {**base, "n": 1.5}, {**base, "max_tokens": "8"},
                {**base, "forge_tts": {"selector": "tournament"}}, {**base, "forge_tts": 4}, [1]):
        with pytest.raises(api.RequestError):
            api.parse_request(bad)


def test_prompt_is_the_agent_loops_rendering(tokenizer):
    """An OpenAI conversation (an assistant tool call, its result) renders to the very ids the
    agent loop lays out for the same episode."""
    task = make_tasks("calculator").tasks("train", 1, 0)[0]
    call = ToolCall("sub", {"a": 65, "b": 79})
    openai_msgs = [*task.messages,
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "c1", "type": "function", "function": {"name": "sub", "arguments": json.dumps(call.arguments)}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "-14"}]
    req = api.parse_request({"messages": openai_msgs, "tools": task.tools})
    ids = tokenizer.encode(api.render_prompt(tokenizer, req), add_special_tokens=False)
    expected, _ = render_conversation(tokenizer, task, [{"role": "assistant", "content": render_tool_call(call)},
                                                        {"role": "tool", "content": "-14"}])
    assert ids == expected
    first = api.render_prompt(tokenizer, api.parse_request({"messages": task.messages, "tools": task.tools}))
    assert first == tokenizer.apply_chat_template(task.messages, tools=task.tools, add_generation_prompt=True, tokenize=False)
    parts = api.template_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert parts == [{"role": "user", "content": "ab"}]


def test_sampling_seeds_and_context():
    req = api.parse_request({"messages": [{"role": "user", "content": "x"}], "seed": 10, "max_tokens": 500})
    s = api.sampling(req, 100, 256, [2], choice=3, logprobs=5)
    assert (s.seed, s.max_tokens, s.logprobs, s.stop_token_ids) == (13, 156, 5, [2])
    with pytest.raises(api.RequestError, match="context"):
        api.sampling(req, 256, 256, [2])


@pytest.mark.parametrize("text,parse,content,calls,reason", [
    (CALL, True, None, 1, "tool_calls"),
    ("Let me add. " + CALL, True, "Let me add. ", 1, "tool_calls"),
    (CALL + "\n" + CALL, True, None, 2, "tool_calls"),
    ('<tool_call>{"name": add}</tool_call>', True, '<tool_call>{"name": add}</tool_call>', 0, "stop"),  # bad JSON
    ('<tool_call>{"name": "add", "arguments": {}}', True, '<tool_call>{"name": "add", "arguments": {}}', 0, "stop"),
    (CALL, False, CALL, 0, "stop"),  # tool_choice "none"
    ("Answer: 5", True, "Answer: 5", 0, "stop"),
])
def test_choice_json(text, parse, content, calls, reason):
    choice = api.choice_json(0, api.Completion(text=text, finish_reason="stop"), parse)
    msg = choice["message"]
    assert msg["content"] == content and choice["finish_reason"] == reason and len(msg.get("tool_calls", [])) == calls
    for tc in msg.get("tool_calls", []):
        assert tc["type"] == "function" and tc["function"]["name"] == "add" and json.loads(tc["function"]["arguments"]) == {"a": 2, "b": 3}
        assert tc["id"].startswith("call_")


def test_cut_off_call_is_length():
    assert api.choice_json(0, api.Completion(text=CALL, finish_reason="length"), True)["finish_reason"] == "length"


def _stream_all(text: str, parse: bool) -> tuple[str, list, str]:
    ts, out = ToolStream(parse), []
    for ch in text:
        out.append(ts.push(ch))
    deltas, reason = ts.finish("stop")
    content = "".join(out) + "".join(d.get("content", "") for d in deltas)
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    return content, calls, reason


@pytest.mark.parametrize("text", ["Answer: 5", "a < b <tool", "Sure. " + CALL, CALL + "\n" + CALL,
                                  '<tool_call>{"name": add}</tool_call> and then', "x <tool_call"])
def test_tool_stream_matches_whole_parse(text):
    """Streamed character by character, a turn ends up as the same content and calls as when
    it is parsed whole."""
    content, calls, reason = _stream_all(text, True)
    whole = api.choice_json(0, api.Completion(text=text, finish_reason="stop"), True)
    assert (content or None) == whole["message"]["content"] and reason == whole["finish_reason"]
    assert [c["function"] for c in calls] == [c["function"] for c in whole["message"].get("tool_calls", [])]
    assert [c["index"] for c in calls] == list(range(len(calls)))


def test_tool_stream_holds_back_only_from_the_tag():
    ts = ToolStream(True)
    assert ts.push("Sure, ") == "Sure, " and ts.push("<tool") == "" and ts.push("_call>{") == "" and ts.push("x") == ""
    assert ToolStream(True).push("a <b") == "a <b" and ToolStream(False).push(CALL) == CALL


def test_text_decoder_round_trip(tokenizer):
    text = "Grüße, 中文 ✓ and " + CALL
    ids = tokenizer.encode(text, add_special_tokens=False)
    stop = stop_token_ids(tokenizer)
    dec = TextDecoder(tokenizer, stop)
    pieces = [dec.push([i]) for i in ids] + [dec.push(stop[:1]), dec.flush()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_response_chunks():
    resp = api.response_json("id1", "m", [api.choice_json(0, api.Completion(text="Hi " + CALL, finish_reason="stop"), True)],
                             {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, created=1)
    events = list(response_chunks(resp, include_usage=True))
    assert events[-1] == api.DONE and all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and chunks[-1]["usage"]["total_tokens"] == 3
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1]) == "Hi "


def test_tts_pick():
    other = render_tool_call(ToolCall("add", {"b": 3, "a": 2}))  # the same call, keys reordered
    cs = [api.Completion([5], [-0.1], [[-0.1, -3.0]], "Answer: 9", "stop"),
          api.Completion([5], [-2.0], [[-0.7, -0.8]], CALL, "stop"),
          api.Completion([5], [-1.0], [[-0.7, -0.7]], other, "stop")]
    chosen, info = api.tts_pick(api.TtsSpec(3, "majority"), cs, True)
    assert chosen == 1 and info["votes"] == 2 and info["distinct_answers"] == 2
    assert api.tts_pick(api.TtsSpec(3, "mean_logprob"), cs, True)[0] == 0
    assert api.tts_pick(api.TtsSpec(3, "agent_confidence", k=2), cs, True)[0] == 0
    assert api.tts_pick(api.TtsSpec(3, "first"), cs, True)[0] == 0


def test_deployment_options():
    fixed = ServeConfig("/m/rl", replicas=2, cpus_per_replica=3).deployment_options()
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"] == {"num_cpus": 3, "num_gpus": 0.0}
    auto = ServeConfig("/m/rl", min_replicas=0, max_replicas=4).deployment_options()
    assert "num_replicas" not in auto and auto["autoscaling_config"]["min_replicas"] == 0
    assert auto["autoscaling_config"]["max_replicas"] == 4 and auto["autoscaling_config"]["initial_replicas"] == 1
    assert ServeConfig("/m/rl").model_id == "rl" and ServeConfig("/m/rl", name="x").model_id == "x"
    with pytest.raises(ValueError):
        ServeConfig("/m/rl", min_replicas=3, max_replicas=2).deployment_options()


class ScriptedEngine:
    """Streams a fixed text, one id a step, then the stop id."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts, self.calls = tokenizer, list(texts), []

    async def stream(self, ids, s):
        self.calls.append(s)
        text = self.texts[(len(self.calls) - 1) % len(self.texts)]
        out = self.tokenizer.encode(text, add_special_tokens=False) + s.stop_token_ids[:1]
        for j, t in enumerate(out):
            await asyncio.sleep(0)
            yield api.Completion([t], [-0.5], [[-0.5] * s.logprobs] if s.logprobs else [], "", "stop" if j == len(out) - 1 else None)

    def shutdown(self):
        pass


def _server(tokenizer, texts):
    srv = PolicyServer.__new__(PolicyServer)
    srv.cfg, srv.model, srv.created, srv.tokenizer = ServeConfig("/m/rl"), "rl", 0, tokenizer
    srv.stop_ids, srv.max_model_len, srv.engine = stop_token_ids(tokenizer), 512, ScriptedEngine(tokenizer, texts)
    return srv


async def _collect(gen):
    return [e async for e in gen]


def test_server_logic_over_a_scripted_engine(tokenizer):
    body = {"messages": [{"role": "user", "content": "2+3?"}], "tools": TOOLS, "n": 2, "seed": 1}
    srv = _server(tokenizer, ["Sure. " + CALL, "Answer: 5"])
    resp = asyncio.run(srv.chat(body))
    assert [c["finish_reason"] for c in resp["choices"]] == ["tool_calls", "stop"] and resp["usage"]["completion_tokens"] > 2
    assert [s.seed for s in srv.engine.calls] == [1, 2]
    srv = _server(tokenizer, ["Sure. " + CALL, "Answer: 5"])
    events = asyncio.run(_collect(asyncio.run(srv.chat({**body, "stream": True, "stream_options": {"include_usage": True}}))))
    assert events[-1] == api.DONE
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    by_choice = {i: [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i] for i in (0, 1)}
    assert "".join(d["delta"].get("content") or "" for d in by_choice[1]) == "Answer: 5"
    assert by_choice[0][-1]["finish_reason"] == "tool_calls" and by_choice[0][-2]["delta"]["tool_calls"][0]["function"]["name"] == "add"
    assert chunks[-1]["usage"]["completion_tokens"] == resp["usage"]["completion_tokens"]
    srv = _server(tokenizer, ["Answer: 5", CALL, CALL])
    tts = asyncio.run(srv.chat({**body, "n": 1, "forge_tts": {"n": 3, "selector": "agent_confidence", "k": 4}}))
    assert tts["forge_tts"][0]["chosen"] == 0 and tts["choices"][0]["message"]["content"] == "Answer: 5"  # equal confidences: the first
    assert len(srv.engine.calls) == 3 and {s.logprobs for s in srv.engine.calls} == {4}
    srv = _server(tokenizer, ["Answer: 5", CALL, CALL])
    tts = asyncio.run(srv.chat({**body, "n": 1, "forge_tts": {"n": 3}}))
    assert tts["choices"][0]["finish_reason"] == "tool_calls" and tts["forge_tts"][0] == {
        "n": 3, "selector": "majority", "chosen": 1, "votes": 2, "distinct_answers": 2}


def test_merge_interleaves_and_raises():
    async def gen(xs, fail=False):
        for x in xs:
            await asyncio.sleep(0)
            yield x
        if fail:
            raise RuntimeError("engine died")

    assert sorted(asyncio.run(_collect(_merge([gen([1, 3]), gen([2, 4])])))) == [1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(_collect(_merge([gen([1]), gen([2], fail=True)])))


def test_http_routes(tokenizer):
    """The replica's ASGI app over a scripted engine: status codes, JSON and SSE bodies."""
    from starlette.testclient import TestClient

    http = TestClient(_server(tokenizer, ["Sure. " + CALL]).__serve_build_asgi_app__())
    assert http.get("/v1/models").json()["data"][0]["id"] == "rl"
    body = {"messages": [{"role": "user", "content": "2+3?"}], "tools": TOOLS}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "add"
    r = http.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream") and r.text.endswith(api.DONE)
    assert http.post("/v1/chat/completions", json={**body, "n": 99}).status_code == 400
    bad = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_template_refusal_is_a_request_error():
    class Refusing:
        def apply_chat_template(self, *a, **kw):
            from jinja2 import TemplateError

            raise TemplateError("roles must alternate")

    with pytest.raises(api.RequestError, match="alternate"):
        api.render_prompt(Refusing(), api.parse_request({"messages": [{"role": "user", "content": "x"}]}))
