"""The collapse guard in a real run: a forced reward collapse at step 3 (the step's reward mean in
the metrics the guard reads is set to 1 before and 0 from then on: the untrained tiny model
has no reward of its own to lose) is caught and handled by the configured action."""
import json
from pathlib import Path

import pytest

from test_pipeline import run

GUARD = ["guard.enabled=true", "guard.window=1", "guard.warmup_steps=0", "guard.reward_drop=0.5", "guard.entropy_floor=0", "guard.length_ratio=0",
         "guard.grad_norm_max=0", "run.checkpoint_every=1", "sft.enabled=false", "run.mode=sync"]


@pytest.fixture
def forced_collapse(monkeypatch):
    import forge_ray.driver as driver

    original = driver._log_step

    def collapsed(run, step, *args, **kwargs):
        row = original(run, step, *args, **kwargs)
        row["reward_mean"] = 0.0 if step >= 3 else 1.0
        return row

    monkeypatch.setattr(driver, "_log_step", collapsed)


def guard_rows(summary):
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["stage"] == "guard"], [r for r in rows if r["stage"] == "rl"]


def test_stop_ends_rl_at_the_collapse(ray_cluster, tmp_path, tiny_model, forced_collapse):
    summary = run(tmp_path, f"model.path={tiny_model}", *GUARD, "guard.action=stop", "run.steps=5")
    verdicts, rl = guard_rows(summary)
    assert [v["step"] for v in verdicts] == [3] and verdicts[0]["reasons"] == ["reward=0 < best 1 - 0.5"]
    assert summary["rl_steps"] == 3 and [r["step"] for r in rl] == [1, 2, 3]
    assert (Path(summary["run_dir"]) / "checkpoints" / "rl" / "model.safetensors").exists()  # the run still finishes


def test_rollback_restores_the_last_good_checkpoint_at_a_lower_lr(ray_cluster, tmp_path, tiny_model, forced_collapse):
    summary = run(tmp_path, f"model.path={tiny_model}", *GUARD, "guard.action=rollback", "guard.lr_factor=0.5", "run.steps=4")
    verdicts, rl = guard_rows(summary)
    assert [v["step"] for v in verdicts] == [3, 4] and all(v["last_good_step"] == 2 for v in verdicts)
    assert summary["rl_steps"] == 4 and summary["lr_scale"] == 0.25
    assert summary["policy_version"] == rl[-1]["version"] + 1  # the restored policy is published as a new version
    log = (Path(summary["run_dir"]) / "log.txt").read_text()
    assert log.count("rolled back to rl-step-000002 (before step 3)") == 2
    assert "learning rate now 0.0001" in log and "learning rate now 5e-05" in log  # quickstart's 2e-4, halved twice by the learner ranks
