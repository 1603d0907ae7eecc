"""Benchmark: the same RL job in sync and async mode, side by side, in one process.

    .venv/bin/python bench/modes.py --model runs/quickstart-*/checkpoints/sft [--steps 20] [--set k=v ...] [--out FILE]

Both runs start from the same checkpoint (SFT is skipped), use the same job file and seed,
and run one after the other on the same embedded Ray cluster. Prints trajectories/s, the
idle fractions of rollout and learner, seconds per step and per weight sync, and writes the
table to bench/results/modes.json (or ``--out``).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

KEYS = ("trajectories_per_s", "rollout_idle_frac", "learner_idle_frac", "rl_wall_seconds", "sync_seconds_mean", "sft_success", "rl_success", "peak_rss_gb")


def run_modes(model: str, job_path: str, steps: int, sets: list[str], name: str,
              per_mode: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """Run ``job_path`` from ``model`` for ``steps`` RL steps once per entry of ``per_mode`` (a
    run's name -> its overrides, after ``sets``; its ``run.mode`` is the name up to any "+", as
    in "async+interrupt"), in order; by default sync, then async."""
    from forge_ray.config import load_job
    from forge_ray.pipeline import run_job

    results = {}
    for key, extra in (per_mode or {"sync": [], "async": []}).items():
        mode = key.split("+")[0]
        job = load_job(job_path, [f"model.path={model}", "sft.enabled=false", f"run.steps={steps}", f"run.mode={mode}",
                                  f"run.name={name}-{key.replace('+', '-')}", "run.wandb_mode=disabled", *sets, *extra])
        summary = run_job(job)
        results[key] = {k: summary.get(k) for k in KEYS}
    return results


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """One column per run, then each run's ratio to the first (sync)."""
    names = list(results)
    base = results[names[0]]
    head = "".join(f"{n:>16}" for n in names) + "".join(f"{n + '/' + names[0]:>24}" for n in names[1:])
    print(f"\n{'':24}{head}")
    for k in KEYS:
        cells = "".join(f"{results[n][k]:>16.3f}" for n in names)
        ratios = "".join(f"{results[n][k] / base[k] if isinstance(base[k], (int, float)) and base[k] else float('nan'):>24.2f}"
                         for n in names[1:])
        print(f"{k:24}{cells}{ratios}")


def parser(doc: str, out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", required=True, help="starting checkpoint (e.g. a quickstart's checkpoints/sft)")
    p.add_argument("--job", default="jobs/quickstart.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / out))
    return p


def write(out: str, payload: dict[str, Any]) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwritten to {path}")


def main() -> None:
    args = parser(__doc__, "modes.json").parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    results = run_modes(args.model, args.job, args.steps, args.set, "bench")
    print_table(results)
    write(args.out, {"steps": args.steps, "model": args.model, **results})


if __name__ == "__main__":
    main()
