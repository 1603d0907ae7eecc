"""Benchmark: sync vs async RL when tool calls take heavy-tailed time.

    .venv/bin/python bench/longtail.py --model runs/quickstart-*/checkpoints/sft [--steps 12] [--out FILE]

The quickstart's calculator task, but every tool call waits a log-normal time first (median
``--median`` s, shape ``--sigma``: most calls are quick, a few take many times the median, as
test runs and sandbox calls do). Oversampling (``rollout.batch_prompts`` N > ``learner.batch_groups``
M) and ``run.max_staleness`` let async mode train on the groups that are done while slow ones
finish; sync mode waits for the slowest episode of every batch (and, refilling groups without
signal, of every refill). Same model, steps, seed and N in both (``--sync-prompts`` gives sync
another N: with N = M each refill round waits for a tail of its own, with N > M the surplus
groups of a batch are stale after its update and replayed); prints the table of
``bench/modes.py`` and writes ``async_over_sync`` (trajectories/s, every finished trajectory).
A third run is async with interruptible rollouts (``rollout.interruptible``: a weight sync
aborts the turns in flight, which go on under the new weights, instead of waiting for them):
``async_interrupt_over_sync``.
"""
from __future__ import annotations

import logging

from modes import parser, print_table, run_modes, write


def main() -> None:
    p = parser(__doc__, "longtail.json")
    p.add_argument("--median", type=float, default=0.3, help="median seconds of a tool call")
    p.add_argument("--sigma", type=float, default=1.5, help="log-normal shape of a tool call's time")
    p.add_argument("--prompts", type=int, default=24, help="N: prompts issued per policy version (M is 16)")
    p.add_argument("--sync-prompts", type=int, default=None, help="N of the sync run (default: --prompts)")
    p.set_defaults(steps=12)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    sets = [f"env.env_kwargs={{tool_latency_s: {args.median}, tool_latency_sigma: {args.sigma}}}",
            "learner.batch_groups=16", "run.max_staleness=2", "env.eval_tasks=50", *args.set]
    per_mode = {"sync": [f"rollout.batch_prompts={args.sync_prompts or args.prompts}"], "async": [f"rollout.batch_prompts={args.prompts}"],
                "async+interrupt": [f"rollout.batch_prompts={args.prompts}", "rollout.interruptible=true"]}
    results = run_modes(args.model, args.job, args.steps, sets, "longtail", per_mode)
    print_table(results)
    tps = {k: r["trajectories_per_s"] for k, r in results.items()}
    ratio, interrupt = tps["async"] / tps["sync"], tps["async+interrupt"] / tps["sync"]
    print(f"\nasync_over_sync (trajectories/s): {ratio:.2f}; with interruptible rollouts: {interrupt:.2f}")
    write(args.out, {"steps": args.steps, "model": args.model, "tool_latency_median_s": args.median, "tool_latency_sigma": args.sigma,
                     "sets": sets, "per_mode": per_mode, "async_over_sync": ratio, "async_interrupt_over_sync": interrupt, **results})


if __name__ == "__main__":
    main()
