"""``forge-ray swe make-tasks``: the command line of the SWE task factory (``factory.py``).

    forge-ray swe make-tasks PACKAGE[==VERSION]|DIR|DIR@REF ... --out DIR [--heldout PKG ...]
        [--packages-file envs/swe/packages.txt] [--max-per-package N] [--seed S] [--workers W]
        [--backend auto] [--cache-dir DIR] [--timeout S] [--max-tries N]

A packages file has one source per line; ``#`` starts a comment, and a line whose comment
says ``heldout`` puts that package in the held-out split.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_packages_file(path: str | Path) -> tuple[list[str], list[str]]:
    """(sources, held-out package names) from a packages file."""
    sources, heldout = [], []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        spec, _, comment = line.partition("#")
        spec = spec.strip()
        if not spec:
            continue
        if len(spec.split()) != 1:
            raise ValueError(f"{path}:{n}: expected one NAME==VERSION (or DIR) per line, got {spec!r}")
        sources.append(spec)
        if "heldout" in comment.lower().replace("-", "").replace(" ", ""):
            heldout.append(spec.split("==")[0])
    return sources, heldout


def _make_tasks(args: argparse.Namespace) -> int:
    from envs.swe.factory import make_tasks
    from envs.swe.packages import PackageError
    from forge_ray.env.sandbox import SandboxError

    sources, heldout = list(args.sources), list(args.heldout)
    try:
        if args.packages_file:
            more, held = read_packages_file(args.packages_file)
            sources, heldout = sources + more, heldout + held
    except (OSError, ValueError) as e:
        print(f"forge-ray swe make-tasks: {e}", file=sys.stderr)
        return 2
    if not sources:
        print("forge-ray swe make-tasks: no packages given (PACKAGE[==VERSION] | DIR ... or --packages-file)",
              file=sys.stderr)
        return 2
    try:
        summary = make_tasks(sources, args.out, heldout_packages=heldout, max_per_package=args.max_per_package,
                             seed=args.seed, backend=args.backend, workers=args.workers, cache_dir=args.cache_dir,
                             timeout_s=args.timeout, max_tries=args.max_tries)
    except (PackageError, SandboxError, ValueError) as e:
        print(f"forge-ray swe make-tasks: {e}", file=sys.stderr)
        return 1
    _print_table(summary)
    print(f"wrote {args.out}/train.parquet, heldout.parquet, repos/*.tar.gz, validation_log.jsonl, summary.json")
    return 0 if summary["tasks"] else 1


def _print_table(summary: dict) -> None:
    print(f"{'package':<22} {'split':<8} {'tests':>6} {'tried':>6} {'kept':>5} {'yield':>6} {'s/task':>7}")
    for p in summary["packages"]:
        if p["problem"]:
            print(f"{p['name']:<22} skipped: {p['problem']}")
            continue
        spt = f"{p['seconds_per_task']:.2f}" if p["seconds_per_task"] else "-"
        print(f"{p['name'] + ' ' + p['version']:<22} {p['split']:<8} {p['clean_tests']:>6} {p['tried']:>6} "
              f"{p['kept']:>5} {p['yield']:>6.2f} {spt:>7}")
    print(json.dumps({k: v for k, v in summary.items() if k != "packages"}))


def add_make_tasks(swe_sub: argparse._SubParsersAction) -> None:
    """Register ``make-tasks`` on the subparsers of a ``swe`` command."""
    p = swe_sub.add_parser("make-tasks", help="build validated SWE tasks from packages (SWE-smith style)",
                           description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="*", metavar="PACKAGE[==VERSION]|DIR|DIR@REF")
    p.add_argument("--out", required=True, help="output folder (train/heldout parquet, repos/*.tar.gz, logs)")
    p.add_argument("--packages-file", default=None, metavar="FILE", help="more sources, one per line (# heldout)")
    p.add_argument("--heldout", nargs="*", default=[], metavar="PKG", help="packages that go to the heldout split")
    p.add_argument("--max-per-package", type=int, default=100, metavar="N", help="validated tasks per package")
    p.add_argument("--max-tries", type=int, default=None, metavar="N",
                   help="mutants validated per package at most (default 5 x --max-per-package)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="mutant validations in parallel")
    p.add_argument("--backend", default="auto", help="sandbox backend (auto: bwrap if usable)")
    p.add_argument("--cache-dir", default=None, help="sdist cache (default ~/.cache/forge_ray/swe_sdists)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="S", help="clean-suite timeout in seconds")
    p.set_defaults(fn=_make_tasks)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``forge-ray swe make-tasks`` on the top-level subparsers."""
    swe = sub.add_parser("swe", help="SWE environment tools (make-tasks)")
    add_make_tasks(swe.add_subparsers(dest="swe_command", required=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge-ray")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["swe", "make-tasks", *(sys.argv[1:] if argv is None else argv)])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
