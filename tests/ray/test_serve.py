"""forge-ray serve on a real local Serve instance: the tiny model behind the OpenAI client.

The tiny model is random, so its text means nothing: these tests hold the API's shape, the
streaming/non-streaming agreement at temperature 0, n, forge_tts and /v1/models. What a tool
call turns into is held by tests/unit/test_serve_api.py on hand-written completions."""
import json
import socket

import pytest

from forge_ray.serve.app import ServeConfig, deploy

MESSAGES = [{"role": "system", "content": "You are a calculator agent."}, {"role": "user", "content": "What is 2 plus 3?"}]
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two integers",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(ray_cluster, tiny_model):
    import openai
    from ray import serve

    cfg = ServeConfig(tiny_model, name="tiny", port=_free_port(), max_model_len=512, kv_cache_mb=128, app_name="forge_ray_test")
    url = deploy(cfg)
    yield openai.OpenAI(base_url=url, api_key="unused", timeout=120)
    serve.delete(cfg.app_name)
    serve.shutdown()


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_plain_completion_and_n(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=16)
    (c,) = r.choices
    assert isinstance(c.message.content, str) and c.finish_reason in ("stop", "length") and c.message.role == "assistant"
    assert 0 < r.usage.completion_tokens <= 16 + 1 and r.usage.prompt_tokens > 10 and r.model == "tiny"
    r2 = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=1.0, max_tokens=8, n=2, seed=3)
    assert [c.index for c in r2.choices] == [0, 1]


def test_stream_equals_greedy_text(client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=24)
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1, "the text should arrive in more than one piece"
    assert "".join(deltas) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_tools_shape(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, temperature=1.0, max_tokens=32, n=3)
    for c in r.choices:
        if c.finish_reason == "tool_calls":
            assert c.message.tool_calls and all(isinstance(json.loads(t.function.arguments), dict) for t in c.message.tool_calls)
        else:  # random weights: no call, or a malformed one, comes back as text
            assert isinstance(c.message.content, str) and not c.message.tool_calls


def test_forge_tts_and_refusals(client):
    import openai

    r = client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=1.0, max_tokens=8,
                                       extra_body={"forge_tts": {"n": 3, "selector": "agent_confidence", "k": 5}})
    (info,) = r.model_extra["forge_tts"]
    assert info["n"] == 3 and info["selector"] == "agent_confidence" and 0 <= info["chosen"] < 3 and len(r.choices) == 1
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, tool_choice="required", tools=TOOLS)
