"""``forge-ray sandbox run [--backend B] [--timeout S] [--memory-mb M] [--workdir DIR] -- CMD ARGS...``

Runs one command exactly as environments do (``forge_ray.env.sandbox``): its stdout and
stderr go to ours, a one-line summary goes to stderr, and the exit status is the command's
(124 on timeout, 125 when the sandbox itself could not be set up).
"""
from __future__ import annotations

import argparse
import sys


def _run(args: argparse.Namespace) -> int:
    from forge_ray.env.sandbox import SandboxError, SandboxLimits, make_sandbox

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        print("forge-ray sandbox run: missing command (forge-ray sandbox run [options] -- CMD ARGS...)", file=sys.stderr)
        return 2
    stdin = None
    if args.stdin_file is not None:
        stdin = sys.stdin.read() if args.stdin_file == "-" else open(args.stdin_file, encoding="utf-8").read()
    try:
        limits = SandboxLimits(wall_seconds=args.timeout, memory_mb=args.memory_mb, cpu_seconds=args.cpu_seconds,
                               max_processes=args.max_processes)
        with make_sandbox(args.backend, limits, args.workdir, args.container) as sb:
            r = sb.run(cmd, stdin=stdin)
    except (SandboxError, ValueError) as e:
        print(f"forge-ray sandbox run: {e}", file=sys.stderr)
        return 125
    sys.stdout.write(r.stdout)
    sys.stdout.flush()
    sys.stderr.write(r.stderr)
    print(f"[sandbox] backend={r.backend} exit={r.exit_code} wall={r.wall_seconds:.3f}s "
          f"timed_out={'yes' if r.timed_out else 'no'} truncated={'yes' if r.truncated else 'no'}"
          + (f" killed_by={r.killed_by}" if r.killed_by else ""), file=sys.stderr)
    return 124 if r.timed_out else r.exit_code


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``forge-ray sandbox run`` on the top-level subparsers."""
    from forge_ray.env.sandbox import BACKENDS, SandboxLimits

    d = SandboxLimits()
    sandbox = sub.add_parser("sandbox", help="run a command in the environments' sandbox (debugging)")
    ssub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    run = ssub.add_parser("run", help="run CMD ARGS... sandboxed, print its output and a summary",
                          description=__doc__.splitlines()[0])
    run.add_argument("--backend", choices=BACKENDS, default="auto", help="default: bwrap if usable, else process")
    run.add_argument("--timeout", type=float, default=d.wall_seconds, metavar="S", help="wall-clock seconds")
    run.add_argument("--memory-mb", type=int, default=d.memory_mb, metavar="M", help="address-space limit")
    run.add_argument("--cpu-seconds", type=int, default=d.cpu_seconds, metavar="S", help="CPU-time limit")
    run.add_argument("--max-processes", type=int, default=d.max_processes, metavar="N", help="process cap")
    run.add_argument("--workdir", default=None, metavar="DIR", help="work dir to use and keep (default: a fresh temp dir)")
    run.add_argument("--container", default=None, metavar="NAME", help="running container for --backend container")
    run.add_argument("--stdin-file", default=None, metavar="PATH", help="feed PATH ('-': our stdin) to the command")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    run.set_defaults(fn=_run)
