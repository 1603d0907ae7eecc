"""Fault tolerance mid-run: a rollout engine actor and a learner rank are killed while the
run trains; the run completes, with the dead workers replaced and every prompt consumed once."""
import json
import threading
import time
from pathlib import Path

from forge_ray.config import load_job

ROOT = Path(__file__).resolve().parents[2]
STEPS, GROUPS = 6, 4
SHORT = ["env.train_tasks=200", "env.eval_tasks=4", "rollout.group_size=4", "rollout.batch_prompts=6",
         "rollout.max_new_tokens=24", "rollout.max_context=400", "rollout.kv_cache_mb=256",
         f"learner.batch_groups={GROUPS}", "learner.micro_batch=8", "learner.drop_zero_variance=false",
         "sft.examples=64", "sft.epochs=1", "sft.batch_size=16",
         f"run.steps={STEPS}", "run.checkpoint_every=2", "run.wandb_mode=disabled"]


class Killer(threading.Thread):
    """Kills named actors once the run has logged given RL steps: {step: actor name}."""

    def __init__(self, runs: Path, plan: dict[int, str]):
        super().__init__(daemon=True)
        self.runs, self.plan, self.killed, self.stop = runs, dict(plan), [], threading.Event()

    def last_step(self) -> int:
        steps = [json.loads(line)["step"] for p in self.runs.glob("*/metrics.jsonl")
                 for line in p.read_text().splitlines() if '"stage": "rl"' in line]
        return max(steps, default=0)

    def run(self) -> None:
        import ray

        while self.plan and not self.stop.wait(0.5):
            step = self.last_step()
            for at in sorted(s for s in self.plan if s <= step):
                name = self.plan.pop(at)
                ray.kill(ray.get_actor(name), no_restart=True)
                self.killed.append((step, name))


def test_rollout_engine_and_learner_rank_die_mid_run(ray_cluster, tmp_path, tiny_model):
    from forge_ray.pipeline import run_job

    killer = Killer(tmp_path / "runs", {2: "forge/rollout-0", 3: "forge/learner-1"})
    killer.start()
    try:
        job = load_job(ROOT / "jobs" / "quickstart.yaml", SHORT + [f"model.path={tiny_model}", f"run.root={tmp_path / 'runs'}"])
        summary = run_job(job)
    finally:
        killer.stop.set()
    assert [name for _, name in killer.killed] == ["forge/rollout-0", "forge/learner-1"]
    assert summary["rollout_restarts"] == 1 and summary["learner_restarts"] == 1
    assert summary["prompts_consumed"] == STEPS * GROUPS
    assert summary["prompts_issued"] == summary["prompts_consumed"] + summary["prompts_requeued"] + summary["prompts_abandoned"] + summary["prompts_outstanding"]
    assert summary["prompts_lost"] == 0
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "rl"] == list(range(1, STEPS + 1))
    assert 0.0 <= summary["rl_success"] <= 1.0
    log = (Path(summary["run_dir"]) / "log.txt").read_text()
    assert "rollout worker 0 replaced" in log and "rebuilding the learner group from" in log and "rl-step-000002" in log
