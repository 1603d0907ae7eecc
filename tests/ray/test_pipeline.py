"""A few RL steps end to end, in both modes, with the prompt ledger checked; SFT via Ray Train."""
import json
from pathlib import Path

import pytest

from forge_ray.config import load_job

SMALL = [
    "env.train_tasks=200", "env.eval_tasks=8", "env.kwargs={max_operand: 20, ops_weights: [1, 1, 0]}",
    "rollout.group_size=4", "rollout.batch_prompts=6", "rollout.max_new_tokens=24", "rollout.max_context=400",
    "rollout.kv_cache_mb=256", "learner.batch_groups=4", "learner.micro_batch=8",
    "learner.drop_zero_variance=false",  # an untrained model scores 0 everywhere; still update and sync
    "run.steps=3", "run.wandb_mode=offline",
]


def run(tmp_path, *extra):
    from forge_ray.pipeline import run_job

    return run_job(load_job(Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml", SMALL + [f"run.root={tmp_path}", *extra]))


def check_ledger(summary, job_steps=3, groups=4):
    assert summary["prompts_consumed"] == job_steps * groups  # each step consumed M groups, each prompt once
    assert summary["prompts_issued"] == summary["prompts_consumed"] + summary["prompts_requeued"] + summary["prompts_abandoned"] + summary["prompts_outstanding"]
    assert summary["prompts_lost"] == 0


def test_async_with_sft(ray_cluster, tmp_path, tiny_model):
    summary = run(tmp_path, f"model.path={tiny_model}", "sft.examples=64", "sft.epochs=1", "sft.batch_size=16", "run.mode=async")
    check_ledger(summary)
    assert summary["policy_version"] == 3 and summary["sync_seconds_mean"] > 0
    assert 0.0 <= summary["sft_success"] <= 1.0 and 0.0 <= summary["rl_success"] <= 1.0
    d = Path(summary["run_dir"])
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "summary.json", "plots/reward.png", "timeline.jsonl", "plots/timeline.png",
                 "checkpoints/sft/model.safetensors", "checkpoints/rl/model.safetensors", "checkpoints/sft/sft_metrics.jsonl"):
        assert (d / name).exists(), name
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    stages = {r["stage"] for r in rows}
    assert {"sft", "rl", "eval"} <= stages
    rl = [r for r in rows if r["stage"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2, 3] and all(r["staleness_max"] <= 1 for r in rl)
    for r in rl:  # the step anatomy: the engine generated during every step; each episode's time is accounted for
        assert 0 < r["anatomy/engine_generating_frac"] <= 1 and r["anatomy/step_s"] > 0
        assert r["anatomy/episode_engine_s"] > 0 and r["anatomy/episode_wall_s"] >= r["anatomy/episode_engine_s"]
        assert r["time/train"] > 0 and r["time/export"] > 0 and r["time/sync"] > 0 and r["fetch_seconds"] >= 0
    lanes = {json.loads(line)["lane"] for line in (d / "timeline.jsonl").read_text().splitlines()}
    assert {"driver", "learner", "engine 0"} <= lanes
    assert summary["peak_pss_gb"]["rl"] > 0.5 and summary["peak_pss_gb"]["sft"] > 0.5  # engines and ranks are counted
    assert "ray::FSDPWorker" in summary["rl_pss_by_process_gb"]  # Ray Train's actors are gone once SFT ends:
    assert not {"ray::TrainController", "ray::DatasetManager", "ray::_AutoscalingCoordinatorActor"} & set(summary["rl_pss_by_process_gb"])
    assert list((d / "wandb").glob("offline-run-*"))  # W&B offline run written into the run dir


def test_sync_mode_is_on_policy(ray_cluster, tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative run root, as in jobs/quickstart.yaml
    summary = run(tmp_path, f"model.path={tiny_model}", "sft.enabled=false", "run.mode=sync", "run.root=runs", "reward.turn_weight=0.5")
    assert Path(summary["run_dir"]).is_absolute() and Path(summary["run_dir"]).parent == tmp_path / "runs"
    check_ledger(summary)
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert all(r["staleness_max"] == 0 and r["groups_stale"] == 0 for r in rows if r["stage"] == "rl")
