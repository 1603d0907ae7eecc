"""Ray tier: test-time scaling on the tiny model with real vLLM CPU engines. The engine's top-k
logprobs (``generate(topk=k)``, ``score_prompt``), then ``forge-ray tts`` end to end on a few
calculator tasks (sampling, env scoring, every selector, a self-judged tournament, the plot)."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

PROMPT = [1, 88, 140, 301, 77, 9, 42, 500, 13, 2, 1, 600]


def test_generate_topk_and_score_prompt(tiny_model):
    from forge_ray.rollout.engine import VLLMEngine

    async def go():
        engine = VLLMEngine(tiny_model, max_model_len=256, kv_cache_mb=128, device="cpu")
        await engine.start()
        try:
            kw = dict(max_tokens=10, temperature=1.0, stop_token_ids=[], seed=7)
            plain = await engine.generate(PROMPT, **kw)
            top = await engine.generate(PROMPT, **kw, topk=5)
            scored = await engine.score_prompt(PROMPT + top.token_ids, 5)
            return plain, top, scored
        finally:
            engine.shutdown()

    plain, top, (logprobs, topk) = asyncio.run(go())
    assert plain.topk == [] and len(plain.token_ids) == 10  # topk=0: nothing extra
    assert top.token_ids == plain.token_ids  # same seed, same sample: top-k changes nothing sampled
    assert top.logprobs == pytest.approx(plain.logprobs, abs=1e-5)  # the sampled token's own logprob
    assert len(top.topk) == len(top.token_ids)
    for row, lp in zip(top.topk, top.logprobs):
        assert len(row) == 5 and row == sorted(row, reverse=True) and row[0] >= lp - 1e-6 and lp < 0
    # prompt logprobs of the same ids (temperature 1: raw == processed) agree with the sampling
    n = len(PROMPT)
    assert len(logprobs) == len(topk) == n + 10 and topk[0] == [] and all(len(r) == 5 for r in topk[1:])
    assert logprobs[n:] == pytest.approx(top.logprobs, abs=1e-3)
    assert [r[0] for r in topk[n:]] == pytest.approx([r[0] for r in top.topk], abs=1e-3)


def test_tts_command(tiny_model, tmp_path):
    out = tmp_path / "tts"
    ns = [1, 2, 4]
    selectors = ["first", "majority", "mean_logprob", "agent_confidence", "agent_token_vote", "env_token_vote",
                 "tournament", "oracle"]
    cmd = [sys.executable, "-m", "forge_ray.cli", "tts", "--model", tiny_model, "--env", "calculator", "--tasks", "4",
           "--n", ",".join(map(str, ns)), "--selectors", ",".join(selectors), "--topk", "5", "--judge", tiny_model,
           "--max-new-tokens", "16", "--max-context", "512", "--kv-cache-mb", "256", "--batch", "4", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"forge-ray tts failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    summary = json.loads((out / "tts.json").read_text())
    acc, pass_at = summary["accuracy"], summary["pass_at_n"]
    assert set(acc) == set(selectors) and all(set(acc[s]) == {str(n) for n in ns} for s in selectors)
    assert summary["tasks"] == 4 and summary["samples_per_task"] == 4 and summary["skipped"] == {}
    assert summary["judge_calls"] == {"1": 0, "2": 4, "4": 12}  # N - 1 per task
    assert [pass_at[str(n)] for n in ns] == sorted(pass_at[str(n)] for n in ns)  # pass@N never falls
    for n in map(str, ns):
        assert acc["oracle"][n] == pass_at[n] and all(acc[s][n] <= pass_at[n] + 1e-12 for s in selectors)
    rows = summary["per_task"]
    plain = sum(r["scores"][0] for r in rows) / len(rows)  # sample 0's accuracy
    assert all(acc["first"][str(n)] == pytest.approx(plain) for n in ns)
    for r in rows:  # agent_confidence had top-k on every sampled token
        assert len(r["scores"]) == 4 and all(a > 0 for a in r["agent_tokens"]) and r["topk_tokens"] == r["agent_tokens"]
    assert summary["topk_coverage"] == 1.0 and summary["config"]["topk"] == 5
    assert (out / "tts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
