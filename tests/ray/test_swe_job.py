"""Ray tier: ``jobs/swe_cpu.yaml`` end to end on a one-task tasks folder: the tiny model's
tokenizer and SFT data from the SWE expert (played through the environment), SFT through Ray
Train, one async RL step with episodes in the env pool and scores from the reward actor, and
the held-out evaluation before and after RL."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_ray.config import load_job
from forge_ray.env.sandbox import bwrap_problem
from swe_fixture import build_tasks_dir  # tests/swe_fixture.py

pytestmark = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap unusable: {bwrap_problem()}")
ROOT = Path(__file__).resolve().parents[2]


def test_swe_job(ray_cluster, tmp_path):
    from forge_ray.pipeline import run_job

    tasks = tmp_path / "tasks"
    build_tasks_dir(tasks)
    summary = run_job(load_job(ROOT / "jobs" / "swe_cpu.yaml", [
        f"env.kwargs={{tasks_dir: {tasks}, step_limit: 12, command_timeout_s: 30}}", "env.eval_tasks=2", "env.pool_slots=4",
        "sft.epochs=1", "sft.batch_size=2", "rollout.group_size=2", "rollout.batch_prompts=1", "rollout.max_new_tokens=48",
        "rollout.kv_cache_mb=256", "learner.batch_groups=1", "learner.micro_batch=1", "learner.drop_zero_variance=false",
        "run.steps=1", "run.wandb_mode=disabled", f"run.root={tmp_path / 'runs'}",
    ]))
    d = Path(summary["run_dir"])
    assert summary["prompts_consumed"] == 1 and summary["eval_tasks"] == 2
    rows = [json.loads(line) for line in (d / "sft_data.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and sum(rows[0]["mask"]) > 0  # the expert's turns, masked 1
    metrics = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in metrics if r["stage"] == "rl"]
    assert len(rl) == 1 and rl[0]["env_failures"] == 0 and rl[0]["score_errors"] == 0
    evals = [r for r in metrics if r["stage"] == "eval"]
    assert [e["n"] for e in evals] == [2, 2] and all(e["statuses"].get("env_failure", 0) == 0 for e in evals)
    assert (d / "checkpoints" / "rl" / "model.safetensors").exists()
