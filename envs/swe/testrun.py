"""Run a source tree's pytest suite in the forge_ray sandbox and read per-test results.

    run = run_tests(tree, ["tests/test_a.py::test_x[1-2]"], timeout_s=60)
    run.results        # {"tests/test_a.py::test_x[1-2]": False}
    run.failures       # node id -> TestFailure (exception type, message, traceback frames)

The tree is the sandbox's work dir, used in place (pass a scratch copy). Inside, the system
``/usr/bin/python3`` runs pytest with a small in-process plugin (``_PLUGIN``) that records
every test's outcome by its exact node id into a JSON file in the tree (read, then removed),
so results never depend on parsing pytest's terminal output. Requested ids are selected by
that plugin after collection (only their files are passed on the command line): an id that
does not exist, or whose file fails to import, simply did not run and is reported False.
Optionally the plugin also records which functions of the tree each test calls
(``trace=``), which the task factory uses to pick covered functions and the tests to run.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

PYTHON = "/usr/bin/python3"
INNER = "/work"   # where the sandbox mounts its work dir (forge_ray.env.sandbox.INNER_WORKDIR)

# Runs inside the sandbox as `python3 -c _PLUGIN CONFIG.json PYTEST_ARGS...`. It must work on
# the sandbox's python (3.11, Debian's pytest 7.2) and import nothing but stdlib and pytest.
_PLUGIN = r'''
import json, linecache, os, sys, threading
import pytest

cfg = json.load(open(sys.argv[1]))
wanted = set(cfg["wanted"]) if cfg["wanted"] is not None else None
prefixes = tuple(cfg["trace"] or ())
root = cfg["root"].rstrip("/") + "/"

def rel(path):
    path = str(path)
    return path[len(root):] if path.startswith(root) else path

class Recorder:
    def __init__(self):
        self.outcomes, self.failures, self.errors, self.calls, self.durations = {}, {}, {}, {}, {}
        self.current, self.codes = "<collection>", {}

    def profile(self, frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        key = self.codes.get(code, 0)
        if key == 0:
            name = code.co_filename
            key = self.codes[code] = (rel(name) + ":" + str(code.co_firstlineno)
                                      if name.startswith(prefixes) else None)
        if key is not None:
            self.calls.setdefault(self.current, set()).add(key)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session, config, items):
        if wanted is None:
            return
        keep = [i for i in items if i.nodeid in wanted]
        drop = [i for i in items if i.nodeid not in wanted]
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors[report.nodeid or "<session>"] = str(report.longrepr)[-3000:]

    def pytest_runtest_logstart(self, nodeid, location):
        self.current = nodeid

    def pytest_runtest_logfinish(self, nodeid, location):
        self.current = "<between>"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        rep = outcome.get_result()
        if rep.failed and item.nodeid not in self.failures:
            self.failures[item.nodeid] = self.describe(rep, call)

    def describe(self, rep, call):
        info = {"when": rep.when, "type": "", "message": str(rep.longrepr)[-1500:], "frames": []}
        exc = call.excinfo
        if exc is not None:
            info["type"] = exc.type.__name__
            info["message"] = str(exc.value)[:1500]
            for entry in exc.traceback:
                path = str(entry.path)
                if path.startswith(root):   # linecache: entry.statement re-parses the file per frame
                    line = linecache.getline(path, entry.lineno + 1).strip()
                    info["frames"].append([rel(path), entry.lineno + 1, entry.name, line[:300]])
        return info

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        prev = self.outcomes.get(report.nodeid)
        if report.failed:
            self.outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
        elif report.skipped and prev is None:
            self.outcomes[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        elif report.when == "call" and report.passed and prev is None:
            self.outcomes[report.nodeid] = "xpassed" if hasattr(report, "wasxfail") else "passed"

rec = Recorder()
if prefixes:
    sys.setprofile(rec.profile)
    threading.setprofile(rec.profile)
code = pytest.main(sys.argv[2:], plugins=[rec])
sys.setprofile(None)
calls = {k: sorted(v) for k, v in rec.calls.items()}
with open(cfg["out"], "w") as f:
    json.dump({"outcomes": rec.outcomes, "failures": rec.failures, "errors": rec.errors, "calls": calls,
               "durations": {k: round(v, 4) for k, v in rec.durations.items()}}, f)
sys.exit(int(code))
'''


@dataclass(frozen=True)
class TestFailure:
    """Why one test failed: phase, exception type and message, traceback frames in the tree."""

    __test__ = False   # not a pytest class
    when: str                                  # "setup" | "call" | "teardown"
    type: str                                  # exception class name ("AssertionError")
    message: str                               # str(exception), trimmed
    frames: tuple[tuple[str, int, str, str], ...] = ()   # (file, line, function, source line)


@dataclass(frozen=True)
class TestRun:
    """One pytest run. ``results``: node id -> passed (a requested id that did not run: False)."""

    __test__ = False
    results: dict[str, bool]
    exit_code: int
    output: str
    timed_out: bool
    outcomes: dict[str, str] = field(default_factory=dict)      # passed/failed/error/skipped/xfailed/xpassed
    failures: dict[str, TestFailure] = field(default_factory=dict)
    collection_errors: dict[str, str] = field(default_factory=dict)   # collector node id -> report
    calls: dict[str, tuple[str, ...]] = field(default_factory=dict)   # test id -> "file:firstline" called
    wall_seconds: float = 0.0
    durations: dict[str, float] = field(default_factory=dict)         # test id -> seconds (all phases)
    complete: bool = False      # pytest ended normally and wrote its results (not killed, not crashed)

    @property
    def passed(self) -> list[str]:
        return sorted(t for t, ok in self.results.items() if ok)

    @property
    def failed(self) -> list[str]:
        return sorted(t for t, ok in self.results.items() if not ok)


def _chown_tree(tree: Path, uid: int) -> None:
    """As root the sandbox runs as its own uid and owns only the top of the work dir."""
    os.chown(tree, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


def _pythonpath(tree: Path) -> str:
    paths = [INNER] + ([f"{INNER}/src"] if (tree / "src").is_dir() else [])
    return ":".join(paths)


def _pytest_args(tree: Path, test_ids: list[str] | None) -> list[str]:
    args = ["-p", "no:cacheprovider", "-q", "--tb=line", "-o", "addopts=", "--rootdir", INNER,
            "--continue-on-collection-errors", "-W", "ignore::DeprecationWarning"]
    if test_ids is None:
        return args
    files = sorted({t.split("::", 1)[0] for t in test_ids})
    # A missing file would abort the whole run; its ids are reported as not run instead.
    files = [f for f in files if (tree / f).is_file()]
    return args + files


def _parse(raw: dict, test_ids: list[str] | None) -> tuple[dict[str, bool], dict[str, TestFailure]]:
    outcomes: dict[str, str] = raw.get("outcomes", {})
    results = {t: o == "passed" for t, o in outcomes.items()}
    if test_ids is not None:
        results = {t: results.get(t, False) for t in test_ids}
    failures = {t: TestFailure(f["when"], f["type"], f["message"], tuple(tuple(x) for x in f["frames"]))
                for t, f in raw.get("failures", {}).items()}
    return results, failures


def run_tests(tree: str | os.PathLike, test_ids: Sequence[str] | None, *, backend: str = "auto",
              timeout_s: float = 300.0, trace: Sequence[str] | None = None,
              memory_mb: int = 2048) -> TestRun:
    """Run pytest on ``tree`` (in place) in a sandbox; ``test_ids`` None runs the whole suite.

    ``trace``: paths relative to the tree (package dirs or modules) whose function calls are
    recorded per test into ``TestRun.calls`` (slower; the factory does it once per package).
    """
    from forge_ray.env.sandbox import SandboxLimits, make_sandbox

    tree = Path(tree).resolve()
    if not tree.is_dir():
        raise FileNotFoundError(f"run_tests: tree {tree} is not a directory")
    ids = None if test_ids is None else list(dict.fromkeys(test_ids))
    if ids is not None and not any((tree / t.split("::", 1)[0]).is_file() for t in ids):
        return TestRun({t: False for t in ids}, 5, "[run_tests] none of the requested test files exists\n",
                       False, complete=True)   # pytest's "no tests collected"; nothing to start
    tag = uuid.uuid4().hex[:12]
    cfg_name, out_name = f".forge-testrun-{tag}.json", f".forge-testrun-{tag}.out.json"
    cfg = {"wanted": ids, "root": INNER, "out": f"{INNER}/{out_name}",
           "trace": [f"{INNER}/{p.rstrip('/')}" for p in (trace or [])]}
    (tree / cfg_name).write_text(json.dumps(cfg))
    limits = SandboxLimits(wall_seconds=float(timeout_s), cpu_seconds=max(1, int(timeout_s) + 5),
                           memory_mb=memory_mb, max_processes=64, tmp_mb=256, max_output_chars=20_000)
    env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": _pythonpath(tree), "PYTHONHASHSEED": "0"}
    try:
        with make_sandbox(backend, limits, workdir=tree) as sb:
            uid = getattr(sb, "_uid", None)
            if uid is not None:
                _chown_tree(tree, uid)
            r = sb.run([PYTHON, "-c", _PLUGIN, f"{INNER}/{cfg_name}", *_pytest_args(tree, ids)], env=env)
        raw_path = tree / out_name
        raw = json.loads(raw_path.read_text()) if raw_path.is_file() and not r.timed_out else {}
    finally:
        for name in (cfg_name, out_name):
            (tree / name).unlink(missing_ok=True)
    results, failures = _parse(raw, ids)
    calls = {t: tuple(v) for t, v in raw.get("calls", {}).items()}
    output = r.stdout + (("\n" + r.stderr) if r.stderr else "")
    if not raw and not r.timed_out:
        output += f"\n[run_tests] pytest ended without writing results (exit {r.exit_code}): crashed or killed"
    return TestRun(results, r.exit_code, output, r.timed_out, raw.get("outcomes", {}), failures,
                   raw.get("errors", {}), calls, r.wall_seconds, raw.get("durations", {}), bool(raw))
