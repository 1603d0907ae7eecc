"""Benchmark: the quickstart's RL work under several learner/engine settings, side by side.

    .venv/bin/python bench/efficiency.py --model runs/quickstart-*/checkpoints/sft [--steps 12] \
        [--variant NAME:key=value,key=value ...] [--out FILE]

Each variant runs the same RL work as ``bench/step_cost.py`` (16 prompts x 8 samples per step,
multi-turn calculator episodes, every trajectory trained), one after the other in this process,
from the same checkpoint. Printed per variant: trajectories/s over the RL phase, the median
step time after two steps, seconds from the run's start to the end of its first RL step, and the
RL phase's peak proportional set size (PSS) summed over every process of the job. Without
``--variant`` the variants below are run.
"""
from __future__ import annotations

import logging

from modes import parser, write
from step_cost import forge_step_seconds

VARIANTS = {
    "sync_2ranks": ["run.mode=sync"],
    "sync_1rank": ["run.mode=sync", "learner.num_workers=1"],
    "async_2ranks": ["run.mode=async"],
    "async_1rank_1thread": ["run.mode=async", "learner.num_workers=1", "learner.threads=1"],
}
KEYS = ("trajectories_per_s", "anatomy/step_s", "start_to_first_step_s", "rl_pss_gb", "time/train", "time/wait_rollout")


def parse_variants(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for item in items:
        name, _, sets = item.partition(":")
        out[name] = [s for s in sets.split(",") if s]
    return out


def main() -> None:
    p = parser(__doc__, "efficiency.json")
    p.add_argument("--variant", action="append", default=[])
    p.set_defaults(steps=12)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    variants = parse_variants(args.variant) if args.variant else VARIANTS
    results = {}
    for name, sets in variants.items():
        mode = next((s.split("=", 1)[1] for s in sets if s.startswith("run.mode=")), "async")
        results[name] = forge_step_seconds(args.model, args.job, mode, args.steps, [*args.set, *sets], name=f"eff-{name}")
        results[name]["sets"] = sets
    print(f"\n{'':22}" + "".join(f"{k.split('/')[-1]:>22}" for k in KEYS))
    for name, r in results.items():
        print(f"{name:22}" + "".join(f"{r.get(k) or 0:>22.3f}" for k in KEYS))
    write(args.out, {"model": args.model, "steps": args.steps, "sets": args.set, "variants": results})


if __name__ == "__main__":
    main()
