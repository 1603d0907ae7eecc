"""Benchmark: sync vs async RL when tool calls take heavy-tailed time.

    .venv/bin/python bench/longtail.py --model runs/quickstart-*/checkpoints/sft [--steps 12] [--out FILE]

The quickstart's calculator task, but every tool call waits a log-normal time first (median
``--median`` s, shape ``--sigma``: most calls are quick, a few take many times the median, as
test runs and sandbox calls do). Oversampling (``rollout.batch_prompts`` N > ``learner.batch_groups``
M) and ``run.max_staleness`` let async mode train on the groups that are done while slow ones
finish; sync mode waits for the slowest episode of every batch. Sync gets N = M: with more, the
surplus groups of a batch would be stale after its update and thrown away. Same model, steps
and seed in both; prints the table of ``bench/modes.py`` and writes ``async_over_sync``
(trajectories/s).
"""
from __future__ import annotations

import logging

from modes import parser, print_table, run_modes, write


def main() -> None:
    p = parser(__doc__, "longtail.json")
    p.add_argument("--median", type=float, default=0.3, help="median seconds of a tool call")
    p.add_argument("--sigma", type=float, default=1.5, help="log-normal shape of a tool call's time")
    p.set_defaults(steps=12)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    sets = [f"env.env_kwargs={{tool_latency_s: {args.median}, tool_latency_sigma: {args.sigma}}}",
            "learner.batch_groups=16", "run.max_staleness=2", "env.eval_tasks=50", *args.set]
    per_mode = {"sync": ["rollout.batch_prompts=16"], "async": ["rollout.batch_prompts=24"]}
    results = run_modes(args.model, args.job, args.steps, sets, "longtail", per_mode)
    print_table(results)
    ratio = results["async"]["trajectories_per_s"] / results["sync"]["trajectories_per_s"]
    print(f"\nasync_over_sync (trajectories/s): {ratio:.2f}")
    write(args.out, {"steps": args.steps, "model": args.model, "tool_latency_median_s": args.median, "tool_latency_sigma": args.sigma,
                     "sets": sets, "per_mode": per_mode, "async_over_sync": ratio, **results})


if __name__ == "__main__":
    main()
