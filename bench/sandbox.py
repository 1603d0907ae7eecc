"""Benchmark: latency of a trivial command in the sandbox vs a plain ``subprocess.run``.

    .venv/bin/python bench/sandbox.py [--n 50]

For ``/bin/true`` and ``python3 -c pass`` it times N runs of each mode, interleaved (one run
of every mode per round, so load changes hit all modes alike): a plain ``subprocess.run``;
the sandbox's own bwrap command line run by a plain ``subprocess.run`` ("bwrap-argv": the
cost of bubblewrap itself); ``Sandbox.run`` with the bwrap backend; and with the process
backend (rlimits, no namespaces). One sandbox per mode is reused across runs, as an environment reuses its own.
Prints median and p90 side by side and writes bench/results/sandbox.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from forge_ray.env.sandbox import SandboxLimits, _bwrap_version, available_backend, make_sandbox

COMMANDS = {"/bin/true": ["/bin/true"], "python3 -c pass": ["/usr/bin/python3", "-c", "pass"]}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def _time_sandbox(sb, argv: list[str]) -> float:
    t0 = time.perf_counter()
    r = sb.run(argv)
    dt = time.perf_counter() - t0
    assert r.exit_code == 0, r
    return dt


def _time_plain(argv: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True, **kw)
    return time.perf_counter() - t0


def _raw_bwrap(sb, argv: list[str]) -> tuple[list[str], dict]:
    """The exact bwrap command line the sandbox runs, to call with plain subprocess.run."""
    launch = sb._launch(argv, {})
    drop = {} if launch.uid is None else {"user": launch.uid, "group": launch.uid, "extra_groups": []}
    return launch.cmd, {"env": launch.env, **drop}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "sandbox.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)   # the process backend's WARNING is expected here
    if available_backend() != "bwrap":
        raise SystemExit("bwrap is not usable here; run scripts/install_system_deps.sh as root")
    limits = SandboxLimits()
    boxes = {"bwrap": make_sandbox("bwrap", limits), "process": make_sandbox("process", limits)}
    modes = ("subprocess", "bwrap-argv", "bwrap", "process")
    times = {c: {m: [] for m in modes} for c in COMMANDS}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    setup = []
    for _ in range(10):
        s = time.perf_counter()
        make_sandbox("bwrap", limits).close()
        setup.append(time.perf_counter() - s)
    for _ in range(args.n):
        for name, argv in COMMANDS.items():
            times[name]["subprocess"].append(_time_plain(argv))
            raw_cmd, raw_kw = _raw_bwrap(boxes["bwrap"], argv)
            times[name]["bwrap-argv"].append(_time_plain(raw_cmd, **raw_kw))
            for mode, sb in boxes.items():
                times[name][mode].append(_time_sandbox(sb, argv))
    for sb in boxes.values():
        sb.close()
    table = {c: {m: {"median_ms": 1e3 * statistics.median(xs), "p90_ms": 1e3 * _pct(xs, 0.9),
                     "mean_ms": 1e3 * statistics.fmean(xs)} for m, xs in per.items()} for c, per in times.items()}
    print(f"\n{'':18}" + "".join(f"{m + ' med/p90 ms':>24}" for m in modes))
    for c, per in table.items():
        print(f"{c:18}" + "".join(f"{per[m]['median_ms']:>14.1f} / {per[m]['p90_ms']:>7.1f}" for m in modes))
    print(f"bwrap sandbox creation + close: median {1e3 * statistics.median(setup):.1f} ms")
    out = {"n": args.n, "interleaved": True, "table": table,
           "bwrap_setup_median_ms": 1e3 * statistics.median(setup),
           "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "bwrap": ".".join(map(str, _bwrap_version())),
                       "euid": os.geteuid(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
           "wall_seconds": time.perf_counter() - t0,
           "command": ".venv/bin/python bench/sandbox.py --n %d" % args.n}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
