"""Benchmark: throughput and yield of the SWE task factory (``envs/swe/factory.py``).

    .venv/bin/python bench/swe_factory.py [--packages-file envs/swe/packages.txt] [--n 3]
                                          [--max-per-package 10] [--workers 2] [PKG==VER ...]
    .venv/bin/python bench/swe_factory.py --summary data/swe_tasks/summary.json   # a finished run

Either runs the factory on the first N packages (into a temporary folder, sdists cached as
usual) or reads the ``summary.json`` of a finished run, and prints per package, side by side:
clean tests, mutation sites, mutants validated, kept, yield, seconds of the clean runs and
validated tasks per minute; then the totals. Writes ``bench/results/swe_factory.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _table(summary: dict) -> list[str]:
    head = f"{'package':<24} {'split':<8} {'tests':>6} {'sites':>6} {'tried':>6} {'kept':>5} {'yield':>6} " \
           f"{'clean s':>8} {'s/task':>7} {'tasks/min':>9}"
    lines = [head, "-" * len(head)]
    for p in summary["packages"]:
        if p.get("problem"):
            lines.append(f"{p['name']:<24} skipped: {p['problem'][:80]}")
            continue
        per_min = 60 * p["kept"] / p["seconds"] if p["seconds"] else 0.0
        spt = f"{p['seconds_per_task']:.2f}" if p.get("seconds_per_task") else "-"
        lines.append(f"{p['name'] + ' ' + p['version']:<24} {p['split']:<8} {p['clean_tests']:>6} {p['sites']:>6} "
                     f"{p['tried']:>6} {p['kept']:>5} {p['yield']:>6.2f} {p['clean_seconds']:>8.1f} {spt:>7} "
                     f"{per_min:>9.2f}")
    lines.append("-" * len(head))
    tried = summary.get("tried", 0)
    lines.append(f"{'total':<24} {'':<8} {'':>6} {'':>6} {tried:>6} {summary['tasks']:>5} "
                 f"{(summary['tasks'] / tried if tried else 0):>6.2f} {'':>8} "
                 f"{summary['seconds_per_task'] or 0:>7.2f} {summary['tasks_per_minute']:>9.2f}")
    return lines


def _run(args: argparse.Namespace) -> dict:
    from envs.swe.factory import make_tasks
    from envs.swe.factory_cli import read_packages_file

    sources, heldout = list(args.packages), []
    if not sources:
        sources, heldout = read_packages_file(args.packages_file)
    sources = sources[:args.n]
    with tempfile.TemporaryDirectory(prefix="swe-factory-bench-") as out:
        return make_tasks(sources, out, heldout_packages=heldout, max_per_package=args.max_per_package,
                          seed=args.seed, workers=args.workers, cache_dir=args.cache_dir)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="*", help="NAME==VERSION ... (default: --packages-file)")
    ap.add_argument("--packages-file", default=str(ROOT / "envs/swe/packages.txt"))
    ap.add_argument("--n", type=int, default=3, help="first N packages")
    ap.add_argument("--max-per-package", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--summary", default=None, help="read this finished run's summary.json instead of running")
    ap.add_argument("--out", default=str(ROOT / "bench/results/swe_factory.json"))
    args = ap.parse_args()
    load_before = os.getloadavg()
    started = time.time()
    if args.summary:
        summary, source = json.loads(Path(args.summary).read_text()), args.summary
    else:
        summary, source = _run(args), "run"
    lines = _table(summary)
    print("\n".join(lines))
    result = {"source": source, "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_avg_before": [round(x, 2) for x in load_before],
                          "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
              "settings": {k: getattr(args, k) for k in ("n", "max_per_package", "workers", "seed")} if not args.summary
              else None,
              "table": lines, "summary": summary}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
