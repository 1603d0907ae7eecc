"""Run an exercise's tests on a candidate solution, inside the sandbox.

``run_exercise_tests(ex, {path: text})`` writes the exercise into a fresh sandbox (one per
run, so nothing a solution leaves behind can reach the next run) and runs the sandbox's
Debian python with pytest 7 on the exercise's test files. pytest also collects
``unittest.TestCase`` classes, which is how Exercism writes its tests, and takes any file
name given on its command line, so no test file needs a separate runner.

The model can only write solution files: keys of ``solution_files`` that are not solution
paths are ignored, and the test and support files are laid over the files last. A pass needs
pytest's exit status 0 *and* its summary naming every test that ran as passed, so a
solution that exits the interpreter early (``os._exit(0)`` while the tests are being
imported or run) does not count as passing.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from envs.exercises.format import Exercise

SANDBOX_PYTHON = "/usr/bin/python3"  # the system python bwrap binds read-only; Debian's python3-pytest is there
PYTEST_ARGS = ("-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--tb=short", "--color=no", "-rfEp")
DEFAULT_OUTPUT_CHARS = 4000

# pytest -r lines, e.g. "PASSED two_fer_test.py::TwoFerTest::test_no_name" / "FAILED x_test.py::test_a - assert 0".
_RESULT_LINE = re.compile(r"^(PASSED|FAILED|ERROR|XPASS|XFAIL) (\S+)")
_SUMMARY_LINE = re.compile(r"^=*\s*(\d+ (passed|failed|error|errors|skipped|deselected|xfailed|xpassed|warnings?|no tests ran)\b.*?)\s*=*$")


@dataclass(frozen=True)
class ExerciseRun:
    """One test run: ``passed`` iff every test ran and passed."""

    passed: bool
    per_test: dict[str, bool]  # pytest node id -> passed, for the tests that ran (-x stops at the first failure)
    output: str  # pytest's output (stdout, then stderr), head and tail kept
    timed_out: bool
    exit_code: int
    summary: str = ""  # pytest's last line, e.g. "1 failed, 3 passed in 0.04s"
    seconds: float = 0.0
    solution_paths: list[str] = field(default_factory=list)  # the solution files that were taken from the caller


def sanitize(text: Any) -> str:
    """Model text as a writable string: non-strings become "", lone surrogates become U+FFFD."""
    if not isinstance(text, str):
        return ""
    return text.encode("utf-8", "replace").decode("utf-8")


def sandbox_files(ex: Exercise, solution_files: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The files of one run, and which solution paths the caller's files filled. Starters
    first, then the caller's solution files (only at solution paths), then support and test
    files, which always win."""
    taken = [p for p in ex.starter if isinstance(solution_files, dict) and p in solution_files]
    files = {**ex.starter, **{p: sanitize(solution_files[p]) for p in taken}}
    files.update(ex.support)
    files.update(ex.tests)
    return files, taken


def parse_pytest_output(stdout: str) -> tuple[dict[str, bool], str]:
    """``({node id: passed}, summary line)`` from the output of pytest ``-q -rfEp``."""
    per_test: dict[str, bool] = {}
    summary = ""
    for line in stdout.splitlines():
        match = _RESULT_LINE.match(line)
        if match:
            per_test[match.group(2)] = match.group(1) in ("PASSED", "XFAIL")
            continue
        match = _SUMMARY_LINE.match(line.strip())
        if match:
            summary = match.group(1)
    return per_test, summary


def _verdict(exit_code: int, timed_out: bool, per_test: dict[str, bool], summary: str) -> bool:
    clean = not re.search(r"\b(failed|error|errors)\b", summary)
    return exit_code == 0 and not timed_out and bool(per_test) and all(per_test.values()) and "passed" in summary and clean


def run_exercise_tests(ex: Exercise, solution_files: dict[str, str], *, backend: str = "auto", timeout_s: float = 60.0,
                       max_output_chars: int = DEFAULT_OUTPUT_CHARS, memory_mb: int = 1024) -> ExerciseRun:
    """Run ``ex``'s tests on ``solution_files`` (solution path -> text) in a fresh sandbox.

    Raises only for sandbox set-up failures (``SandboxError``, bad ``backend``); whatever the
    solution does ends as a failed run."""
    from forge_ray.env.sandbox import SandboxLimits, make_sandbox, truncate_output

    files, taken = sandbox_files(ex, solution_files)
    tests = [p for p in ex.tests if p.endswith(".py")]
    limits = SandboxLimits(wall_seconds=float(timeout_s), cpu_seconds=max(1, int(timeout_s) + 1), memory_mb=memory_mb,
                           max_output_chars=max(20_000, max_output_chars))
    t0 = time.monotonic()
    with make_sandbox(backend, limits) as sb:
        result = sb.run([SANDBOX_PYTHON, *PYTEST_ARGS, *tests], files=files,
                        env={"PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"})
    per_test, summary = parse_pytest_output(result.stdout)
    output = result.stdout.rstrip() + ("\n" + result.stderr.rstrip() if result.stderr.strip() else "")
    if result.timed_out:
        output += f"\nTIMEOUT: the tests were stopped after {timeout_s:g} s (an endless loop, or far too slow)."
    elif result.killed_by:
        output += f"\nThe test process was killed by {result.killed_by}."
    return ExerciseRun(passed=_verdict(result.exit_code, result.timed_out, per_test, summary), per_test=per_test,
                       output=truncate_output(output.strip(), max_output_chars), timed_out=result.timed_out,
                       exit_code=result.exit_code, summary=summary, seconds=time.monotonic() - t0, solution_paths=taken)
