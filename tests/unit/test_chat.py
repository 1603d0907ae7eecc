"""Chat format: tool-call parsing, and one layout for template, SFT data and RL episodes."""
import pytest
from jinja2 import Template

from envs import make_tasks
from forge_ray.models.tiny import make_tiny_model
from forge_ray.rollout.agent_loop import render_conversation
from forge_ray.chat import TOOL_CHAT_TEMPLATE, parse_action, render_observation


def test_parse_action_cases():
    ok = parse_action('Sure <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
    assert ok.parse_error is None and ok.tool_calls[0].name == "add" and ok.tool_calls[0].arguments == {"a": 1, "b": 2}
    assert parse_action("Answer: 3").tool_calls == []
    assert "not valid JSON" in parse_action("<tool_call>{name: add}</tool_call>").parse_error
    assert "'name'" in parse_action('<tool_call>{"arguments": {}}</tool_call>').parse_error
    assert "must be an object" in parse_action('<tool_call>{"name": "f", "arguments": [1]}</tool_call>').parse_error
    assert "unbalanced" in parse_action('<tool_call>{"name": "f"}').parse_error
    assert parse_action("<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": " + "9" * 5000 + "}}</tool_call>").parse_error


@pytest.mark.parametrize("observation", [
    [{"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}],  # tool results share a user turn
    [{"role": "user", "content": "and now?"}],  # a simulated user's reply is a plain user turn
    [{"role": "tool", "content": "1"}, {"role": "user", "content": "ok"}, {"role": "tool", "content": "3"}],
])
def test_observation_matches_template(observation):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}, *observation]
    full = Template(TOOL_CHAT_TEMPLATE).render(messages=msgs, tools=None, add_generation_prompt=True)
    head = Template(TOOL_CHAT_TEMPLATE).render(messages=msgs[:2], tools=None, add_generation_prompt=False)
    assert full == head.removesuffix("\n") + render_observation(msgs[2:])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_model(tmp_path_factory.mktemp("tiny")))


def test_expert_rendering_equals_template_tokens(tokenizer):
    source = make_tasks("calculator")
    for task in source.tasks("train", 20, 3):
        continuation = source.expert(task)
        tokens, mask = render_conversation(tokenizer, task, continuation)
        text = tokenizer.apply_chat_template(task.messages + continuation, tools=task.tools, tokenize=False)
        assert tokenizer.decode(tokens) == text.removesuffix("\n")
        sampled = tokenizer.decode([t for t, m in zip(tokens, mask) if m])
        assert sampled == "".join(m["content"] + "<|im_end|>" for m in continuation if m["role"] == "assistant")


def test_user_observations_render_as_the_template_does(tokenizer):
    """Coding environments answer with user turns (test output, command output): an expert
    conversation with them lays out exactly as the chat template renders it."""
    from forge_ray.types import Task

    task = Task("t", "exercises", [{"role": "system", "content": "Write code."}, {"role": "user", "content": "Solve it."}], [])
    continuation = [{"role": "assistant", "content": "```python\nx = 1\n```"}, {"role": "user", "content": "FAILED test_x"},
                    {"role": "assistant", "content": "```python\nx = 2\n```"}]
    tokens, mask = render_conversation(tokenizer, task, continuation)
    text = tokenizer.apply_chat_template(task.messages + continuation, tools=None, tokenize=False)
    assert tokenizer.decode(tokens) == text.removesuffix("\n")
    assert tokenizer.decode([t for t, m in zip(tokens, mask) if m]) == "```python\nx = 1\n```<|im_end|>```python\nx = 2\n```<|im_end|>"
