"""``forge-ray code make-exercises``: the command line of the exercise miner (``mine.py``).

    forge-ray code make-exercises PACKAGE[==VERSION]|DIR|DIR@REF ... --out DIR|FILE.tar.gz [--heldout PKG ...]
        [--heldout-out DIR] [--packages-file envs/swe/packages.txt] [--max-per-package 60] [--seed 0]
        [--workers 2] [--backend auto] [--cache-dir DIR] [--timeout 20] [--max-module-lines 1000]
        [--max-test-files 3] [--overwrite]

Packages the SWE factory's ``envs/swe/packages.txt`` marks ``heldout``, and any named with
``--heldout``, never go to ``--out``; with ``--heldout-out`` they are mined there instead.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile


def _make_exercises(args: argparse.Namespace) -> int:
    from envs.exercises.mine import MineConfig, MiningError, mine_exercises
    from envs.swe.factory_cli import read_packages_file
    from forge_ray.env.archive import is_archive, pack_tree

    sources, heldout = list(args.sources), list(args.heldout)
    if args.packages_file:
        try:
            more, held = read_packages_file(args.packages_file)
        except (OSError, ValueError) as e:
            print(f"forge-ray code make-exercises: {e}", file=sys.stderr)
            return 2
        sources, heldout = sources + more, heldout + held
    if not sources:
        print("forge-ray code make-exercises: no packages given (PACKAGE[==VERSION] | DIR ... or --packages-file)",
              file=sys.stderr)
        return 2
    cfg = MineConfig(max_per_package=args.max_per_package, seed=args.seed, backend=args.backend,
                     timeout_s=args.timeout, max_test_files=args.max_test_files,
                     max_module_lines=args.max_module_lines, workers=args.workers, cache_dir=args.cache_dir)
    packed = is_archive(args.out)  # mined into a scratch folder, shipped as one archive
    target = tempfile.mkdtemp(prefix="forge-exercises-") if packed else args.out
    try:
        summary = mine_exercises(sources, target, heldout=heldout, heldout_out=args.heldout_out, config=cfg,
                                 overwrite=args.overwrite or packed)
        if packed and summary["exercises"]:
            pack_tree(target, args.out)
    except (MiningError, ValueError, OSError) as e:
        print(f"forge-ray code make-exercises: {e}", file=sys.stderr)
        return 2
    finally:
        if packed:
            shutil.rmtree(target, ignore_errors=True)
    _print_table(summary)
    print(f"wrote {summary['train']} train exercises to {args.out}"
          + (f" and {summary['heldout']} held-out ones to {args.heldout_out}" if args.heldout_out else ""))
    return 0 if summary["exercises"] else 1


def _print_table(summary: dict) -> None:
    print(f"{'package':<24} {'split':<8} {'funcs':>6} {'cands':>6} {'tried':>6} {'kept':>5} {'seconds':>8}")
    for p in summary["packages"]:
        if p["problem"]:
            print(f"{p['name']:<24} {p['split']:<8} skipped: {p['problem']}")
            continue
        print(f"{p['name'] + ' ' + p['version']:<24} {p['split']:<8} {p['functions']:>6} {p['candidates']:>6} "
              f"{p['tried']:>6} {p['kept']:>5} {p['seconds']:>8.1f}")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("packages", "config")}))


def add_make_exercises(code_sub: argparse._SubParsersAction) -> None:
    """Register ``make-exercises`` on the subparsers of a ``code`` command."""
    p = code_sub.add_parser("make-exercises", help="mine validated coding exercises from packages and their tests",
                            description=__doc__.splitlines()[0])
    p.add_argument("sources", nargs="*", metavar="PACKAGE[==VERSION]|DIR|DIR@REF")
    p.add_argument("--out", required=True, help="train folder of exercises, or FILE.tar.gz for one archive of it "
                                                "(either loadable by ExerciseTasks(set=...))")
    p.add_argument("--heldout", nargs="*", default=[], metavar="PKG", help="packages never mined into --out")
    p.add_argument("--heldout-out", default=None, metavar="DIR", help="mine the held-out packages into this folder")
    p.add_argument("--packages-file", default=None, metavar="FILE", help="more sources, one per line (# heldout)")
    p.add_argument("--max-per-package", type=int, default=60, metavar="N", help="validated exercises per package")
    p.add_argument("--seed", type=int, default=0, help="order in which candidates are tried")
    p.add_argument("--workers", type=int, default=2, help="candidate validations in parallel")
    p.add_argument("--backend", default="auto", help="sandbox backend (auto: bwrap if usable)")
    p.add_argument("--cache-dir", default=None, help="sdist cache (default ~/.cache/forge_ray/swe_sdists)")
    p.add_argument("--timeout", type=float, default=20.0, metavar="S",
                   help="the exercise env's test timeout; a reference run must take under half")
    p.add_argument("--max-module-lines", type=int, default=1000, metavar="N",
                   help="longest module to stub (the model re-writes the whole file)")
    p.add_argument("--max-test-files", type=int, default=3, metavar="N", help="test files tried per function")
    p.add_argument("--overwrite", action="store_true", help="replace a previous mining in --out/--heldout-out")
    p.set_defaults(fn=_make_exercises)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``forge-ray code make-exercises`` on the top-level subparsers."""
    code = sub.add_parser("code", help="coding-exercise tools (make-exercises)")
    add_make_exercises(code.add_subparsers(dest="code_command", required=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forge-ray")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["code", "make-exercises", *(sys.argv[1:] if argv is None else argv)])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
