"""The locally built tiny model: deterministic, tool-call friendly tokenizer, loadable by HF."""
from __future__ import annotations

import json

import pytest

from forge_ray.models.tiny import TOOL_TOKENS, make_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def test_same_seed_same_bytes(tiny_dir, tmp_path):
    again = make_tiny_model(tmp_path / "again", seed=0)
    for name in ("tokenizer.json", "model.safetensors"):
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_numbers_split_into_chunks_of_at_most_three_digits(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode("1234567", add_special_tokens=False))
    assert "".join(pieces) == "1234567" and all(1 <= len(p) <= 3 for p in pieces)
    assert len(pieces) >= 3  # never merged across a chunk boundary
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("x=12", add_special_tokens=False))[-1] == "12"


@pytest.mark.parametrize("token", ["<|im_end|>", *TOOL_TOKENS])
def test_chat_and_tool_markers_are_one_token(tokenizer, token):
    assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_round_trip(tokenizer):
    call = json.dumps({"name": "add", "arguments": {"a": 12, "b": 7}})
    s = f"Let me add.\n<tool_call>{call}</tool_call>\n\n  x = 3.14159 * 2**10  # ünïcode ✓\n"
    assert tokenizer.decode(tokenizer.encode(s, add_special_tokens=False)) == s


def test_special_ids(tiny_dir, tokenizer):
    from transformers import AutoConfig, GenerationConfig

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert AutoConfig.from_pretrained(tiny_dir).eos_token_id == im_end
    assert GenerationConfig.from_pretrained(tiny_dir).eos_token_id == im_end


def test_chat_template_with_tools(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}],
        tools=[{"type": "function", "function": {"name": "add", "parameters": {}}}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert "<tools>" in text


def test_model_loads_and_runs(tiny_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tokenizer)
    ids = torch.tensor([tokenizer.encode("What is 12 plus 7?", add_special_tokens=False)])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_job_shape_reaches_the_built_model(tmp_path):
    """``model.tiny_*`` of a job file decide the built model's shape (the quickstart's MHA)."""
    from pathlib import Path

    from forge_ray.config import load_job
    from forge_ray.metrics import Run
    from forge_ray.pipeline import base_model

    job = load_job(Path(__file__).parents[2] / "jobs" / "quickstart.yaml")
    config = json.loads((Path(base_model(job, Run(job, tmp_path))) / "config.json").read_text())
    m = job.model
    assert (config["num_hidden_layers"], config["hidden_size"]) == (m.tiny_layers, m.tiny_hidden)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (m.tiny_heads, m.tiny_kv_heads) == (4, 4)
    assert config["head_dim"] == m.tiny_hidden // m.tiny_heads
