"""Benchmark: the same RL job in sync and async mode, side by side, in one process.

    .venv/bin/python bench/modes.py --model runs/quickstart-*/checkpoints/sft [--steps 20] [--set k=v ...]

Both runs start from the same checkpoint (SFT is skipped), use the same job file and seed,
and run one after the other on the same embedded Ray cluster. Prints trajectories/s, the
idle fractions of rollout and learner, seconds per step and per weight sync, and writes the
table to bench/results/modes.json.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from forge_ray.config import load_job
from forge_ray.pipeline import run_job

KEYS = ("trajectories_per_s", "rollout_idle_frac", "learner_idle_frac", "rl_wall_seconds", "sync_seconds_mean", "sft_success", "rl_success", "peak_rss_gb")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="starting checkpoint (e.g. a quickstart's checkpoints/sft)")
    p.add_argument("--job", default="jobs/quickstart.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    results = {}
    for mode in ("sync", "async"):
        job = load_job(args.job, [f"model.path={args.model}", "sft.enabled=false", f"run.steps={args.steps}",
                                  f"run.mode={mode}", f"run.name=bench-{mode}", "run.wandb_mode=disabled", *args.set])
        summary = run_job(job)
        results[mode] = {k: summary.get(k) for k in KEYS}
    s, a = results["sync"], results["async"]
    print(f"\n{'':24}{'sync':>10}{'async':>10}{'async/sync':>12}")
    for k in KEYS:
        ratio = a[k] / s[k] if isinstance(s[k], (int, float)) and s[k] else float("nan")
        print(f"{k:24}{s[k]:>10.3f}{a[k]:>10.3f}{ratio:>12.2f}")
    out = Path(__file__).parent / "results" / "modes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"steps": args.steps, "model": args.model, **results}, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
