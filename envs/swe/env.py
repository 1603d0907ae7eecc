"""The SWE environment: a model fixes a bug in a Python repository through a bash tool.

One episode (mini-swe-agent-plus's protocol, ``protocol.py``):

    open(task)   a fresh copy of the task's repository with its bug applied, under an episode
                 root; the starting state recorded in a git dir outside the copy; a sandbox
                 whose work dir (/work) is the copy, with ``edit_via_str_replace`` on PATH
    step(a)      one reply -> one bash command in the sandbox -> one observation (a user
                 message); a malformed reply gets a format-error observation; a command whose
                 output starts with the final-output marker submits and ends the episode
    snapshot()   {"patch": diff of the copy against the starting state, computed on the host,
                 "submitted": bool, "steps": n}
    score(...)   Klear-AgentForge Eq. 7: the patch, minus its changes to test files, applied to
                 a clean copy of the starting state; 1 iff every FAIL_TO_PASS and PASS_TO_PASS
                 test then passes. An episode that never submitted scores 0 (Klear's choice).
    close()      stops the sandbox, deletes the episode root (idempotent)

Task data (``task.answer``): one row of a tasks folder (``tasks.py``) plus ``tasks_dir``.
Nothing the model writes raises here; bad task data raises ``ValueError`` naming the instance
(in ``open``) or sets ``RewardBreakdown.error`` (in ``score``).
"""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.swe import workspace as ws
from envs.swe.protocol import (
    HEAD_CHARS, MAX_OUTPUT_CHARS, TAIL_CHARS, format_error, format_observation,
    format_timeout, is_submission, parse_reply,
)
from forge_ray.env.archive import resolve_tree
from forge_ray.env.protocol import EnvBase
from forge_ray.env.sandbox import BACKENDS, INNER_WORKDIR, Sandbox, SandboxLimits, make_sandbox
from forge_ray.types import Action, RewardBreakdown, StepResult, Task

log = logging.getLogger(__name__)

def default_root() -> str:
    """``$TMPDIR/forge-swe``, read when an env is made: an env-pool actor points ``tempfile``
    at its own work dir, which its replacement empties (no workspace outlives a dead actor)."""
    return str(Path(tempfile.gettempdir()) / "forge-swe")
TOOLS_INNER = "/opt/forge/bin"       # where the tools dir is mounted inside the sandbox
EDITOR_NAME = "edit_via_str_replace"
EDITOR_SOURCE = Path(__file__).with_name("editor.py")
# The environment variables of mini-swe-agent-plus's config: nothing pages or draws progress
# bars. No bytecode either: an edit in the same second as a test run that keeps the file's size
# (``a + b`` -> ``a * b``) would otherwise run the stale .pyc. And pytest runs as the scoring run
# does (testrun.py): without the repository's ini ``addopts``, which often name plugins the
# sandbox's python lacks (``--cov``), and without a cache dir.
COMMAND_ENV = {"PAGER": "cat", "MANPAGER": "cat", "GIT_PAGER": "cat", "LESS": "-R",
               "TQDM_DISABLE": "1", "PIP_PROGRESS_BAR": "off", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTEST_ADDOPTS": "-o addopts= -p no:cacheprovider"}
# Paths whose changes a submission may not make (git apply --exclude: `*` also matches `/`):
# test files (Klear discards them), and, beyond Klear, the files that would change how the tests
# run rather than what they test (pytest config; modules that shadow pytest or run at start-up).
TEST_PATTERNS = ("tests/*", "*/tests/*", "test_*.py", "*/test_*.py", "*_test.py", "conftest.py",
                 "*/conftest.py")
RUNNER_PATTERNS = ("pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "pytest.py", "*/pytest.py",
                   "_pytest/*", "*/_pytest/*", "sitecustomize.py", "*/sitecustomize.py",
                   "usercustomize.py", "*/usercustomize.py")
MAX_COMMAND_CHARS = 100_000   # one argv string may hold at most 128 KiB (Linux MAX_ARG_STRLEN)
_CUT = re.compile(r"\n\.\.\. \[(\d+) characters truncated\] \.\.\.\n")


@dataclass(frozen=True)
class Instance:
    """The fields of ``task.answer`` the environment uses, checked."""

    instance_id: str
    repo_dir: Path
    bug_patch: str
    patch: str
    fail_to_pass: tuple[str, ...]
    pass_to_pass: tuple[str, ...]

    @classmethod
    def from_task(cls, task: Task) -> Instance:
        answer = task.answer
        name = f"swe task {task.id!r}"
        if not isinstance(answer, dict):
            raise ValueError(f"{name}: task.answer must be the instance row (a dict), got {type(answer).__name__}")
        missing = [k for k in ("instance_id", "repo", "bug_patch", "FAIL_TO_PASS", "tasks_dir") if k not in answer]
        if missing:
            raise ValueError(f"{name}: task.answer lacks {', '.join(missing)}")
        name = f"swe instance {answer['instance_id']!r}"
        where = Path(str(answer["tasks_dir"])) / str(answer["repo"])
        repo_dir = resolve_tree(where)  # the folder, or its .tar.gz archive
        if repo_dir is None:
            raise ValueError(f"{name}: repository {where} does not exist, nor {where}.tar.gz (tasks_dir + repo)")
        tests = {}
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS"):
            value = answer.get(key) or []
            if isinstance(value, str) or not all(isinstance(t, str) and t for t in value):
                raise ValueError(f"{name}: {key} must be a list of pytest node ids, got {value!r:.200}")
            tests[key] = tuple(value)
        if not tests["FAIL_TO_PASS"]:
            raise ValueError(f"{name}: FAIL_TO_PASS is empty")
        for key in ("bug_patch", "patch"):
            if not isinstance(answer.get(key, ""), str):
                raise ValueError(f"{name}: {key} must be a unified diff (str)")
        return cls(str(answer["instance_id"]), repo_dir, answer["bug_patch"], answer.get("patch", ""),
                   tests["FAIL_TO_PASS"], tests["PASS_TO_PASS"])

    def test_files(self) -> list[str]:
        """The files of the listed tests (``path::name`` -> ``path``)."""
        return sorted({t.split("::", 1)[0] for t in self.fail_to_pass + self.pass_to_pass})

    def starting_state(self, dst: Path) -> None:
        """Copy the clean repository to ``dst`` and apply the bug: the task's starting state."""
        ws.copy_tree(self.repo_dir, dst)
        problem = ws.apply_patch(dst, self.bug_patch)
        if problem is not None:
            raise ValueError(f"swe instance {self.instance_id!r}: bug_patch does not apply to "
                             f"{self.repo_dir}: {problem}")


@dataclass
class _Episode:
    task: Task
    instance: Instance
    root: Path
    sandbox: Sandbox
    env: dict[str, str]
    steps: int = 0
    done: bool = False
    submitted: bool = False
    patch: str | None = None   # fixed at submission

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def git_dir(self) -> Path:
        return self.root / "baseline.git"


def _finish(sandbox: Sandbox | None, root: Path | None) -> None:
    """Tear an episode down (also run by the finalizer when an env is dropped unclosed)."""
    if sandbox is not None:
        sandbox.close()
    if root is not None:
        ws.remove_tree(root)


def merged_output(stdout: str, stderr: str) -> tuple[str, int]:
    """The command's output as (text, real length): ``text`` is the whole output, or its first
    and last 5,000 characters when the sandbox cut it (its cut note says how much went)."""
    total = len(stdout)
    if len(stdout) > MAX_OUTPUT_CHARS:
        cut = _CUT.match(stdout, HEAD_CHARS)
        if cut is not None and cut.end() == len(stdout) - TAIL_CHARS:
            total = HEAD_CHARS + TAIL_CHARS + int(cut.group(1))
            stdout = stdout[:HEAD_CHARS] + stdout[cut.end():]
    if not stderr:   # the command's stderr is merged into stdout; this is the sandbox's own
        return stdout, total
    if total == len(stdout):
        text = stdout + stderr
        return text, len(text)
    return stdout[:HEAD_CHARS] + (stdout[HEAD_CHARS:] + stderr)[-TAIL_CHARS:], total + len(stderr)


class SweEnv(EnvBase):
    """Env for ``swe`` tasks.

    ``root``: where episode roots go (``<root>/<owner_tag>/ep-*``); every parent must be
    world-searchable when running as root with bwrap. ``owner_tag`` names this env's
    directory (default ``pid<N>``): ``sweep(root, owner_tag)`` removes what a dead env left.
    ``step_limit``: replies per episode; the reply that reaches it is executed and ends the
    episode with ``info["truncated"]`` unless it submitted. ``command_timeout_s``: wall-clock
    limit of one command (also its CPU-seconds limit); ``test_timeout_s``: of the scoring test
    run. ``memory_mb``/``max_processes``/``file_size_mb``/``tmp_mb``: per-command sandbox
    limits. ``max_patch_chars``: a bigger submission is not scored (reward 0, ``patch_too_large``).
    """

    blocking = True

    def __init__(self, root: str | None = None, backend: str = "auto", step_limit: int = 30,
                 command_timeout_s: float = 60.0, test_timeout_s: float = 300.0, memory_mb: int = 2048,
                 max_processes: int = 128, file_size_mb: int = 64, tmp_mb: int = 128,
                 owner_tag: str | None = None, max_patch_chars: int = 2_000_000) -> None:
        if backend not in BACKENDS or backend == "container":
            raise ValueError(f"SweEnv backend must be one of auto, bwrap, process, got {backend!r} (the "
                             "container backend cannot see the host workspace the episode is played in)")
        if step_limit < 1 or command_timeout_s <= 0 or test_timeout_s <= 0:
            raise ValueError("SweEnv: step_limit must be >= 1 and the timeouts > 0")
        self.root = str(Path(root or default_root()).resolve())
        self.backend, self.step_limit = backend, int(step_limit)
        self.command_timeout_s, self.test_timeout_s = float(command_timeout_s), float(test_timeout_s)
        self.owner_tag = owner_tag or f"pid{os.getpid()}"
        self.max_patch_chars = int(max_patch_chars)
        self.limits = SandboxLimits(
            cpu_seconds=max(1, math.ceil(self.command_timeout_s)), memory_mb=memory_mb,
            max_processes=max_processes, file_size_mb=file_size_mb, tmp_mb=tmp_mb,
            wall_seconds=self.command_timeout_s, max_output_chars=MAX_OUTPUT_CHARS)
        self.task: Task | None = None
        self._ep: _Episode | None = None
        self._final: dict[str, Any] = {"patch": "", "submitted": False, "steps": 0}
        self._finalizer: weakref.finalize | None = None

    # ------------------------------------------------------------------ episode

    @property
    def workspace(self) -> Path | None:
        """The host path of the open episode's repository copy (None when closed)."""
        return self._ep.workspace if self._ep is not None else None

    def open(self, task: Task) -> Task:
        self.close()
        instance = Instance.from_task(task)
        root = ws.new_episode_root(self.root, self.owner_tag)
        sandbox = None
        try:
            instance.starting_state(root / "workspace")
            ws.init_baseline(root / "baseline.git", root / "workspace")
            ws.give_git_dir(root / "baseline.git", root / "workspace")
            tools = ws.make_dir(root / "tools")
            editor = tools / EDITOR_NAME
            editor.write_bytes(EDITOR_SOURCE.read_bytes())
            os.chmod(editor, 0o755)
            sandbox = make_sandbox(self.backend, self.limits, workdir=root / "workspace",
                                   ro_binds={str(tools): TOOLS_INNER})
            uid = getattr(sandbox, "_uid", None)   # bwrap/process as root: the sandbox's own uid
            if uid is not None:
                ws.chown_tree(root / "workspace", uid)
        except BaseException:
            _finish(sandbox, root)
            raise
        self.task = task
        self._ep = _Episode(task, instance, root, sandbox, self._command_env(sandbox))
        self._final = {"patch": "", "submitted": False, "steps": 0}
        self._finalizer = weakref.finalize(self, _finish, sandbox, root)
        return task

    def step(self, action: Action) -> StepResult:
        ep = self._ep
        if ep is None:
            raise RuntimeError("SweEnv.step() before open() (or after close())")
        if ep.done:
            return StepResult([], True, self._info(ep))
        ep.steps += 1
        reply = parse_reply(getattr(action, "text", None))
        if not reply.ok:
            obs = format_error(reply.error)
        elif len(reply.command) > MAX_COMMAND_CHARS:
            obs = format_error(f"the command is {len(reply.command)} characters long, more than the "
                               f"{MAX_COMMAND_CHARS} allowed; write big files in several steps")
        else:
            r = ep.sandbox.run(["bash", "-c", "exec 2>&1\n" + reply.command], env=ep.env)
            output, total = merged_output(r.stdout, r.stderr)
            if not r.timed_out and is_submission(output):
                ep.submitted = ep.done = True
                ep.patch = self._diff(ep)
                return StepResult([], True, self._info(ep))
            if r.timed_out:
                obs = format_timeout(reply.command, output, self.command_timeout_s, total)
            else:
                obs = format_observation(r.exit_code, output, total)
        info = self._info(ep)
        if ep.steps >= self.step_limit:
            ep.done = True
            info["truncated"] = True
        return StepResult([{"role": "user", "content": obs}], ep.done, info)

    @staticmethod
    def _command_env(sandbox: Sandbox) -> dict[str, str]:
        """``COMMAND_ENV`` plus the PYTHONPATH the scoring test run uses (the repository, and
        its ``src/`` when it has one), so that what the model runs matches how it is scored."""
        inner = INNER_WORKDIR if sandbox.backend == "bwrap" else sandbox.workdir
        paths = [inner] + ([f"{inner}/src"] if (Path(sandbox.workdir) / "src").is_dir() else [])
        return {**COMMAND_ENV, "PYTHONPATH": ":".join(paths)}

    def _info(self, ep: _Episode) -> dict[str, Any]:
        return {"steps": ep.steps, "submitted": ep.submitted}

    def _diff(self, ep: _Episode) -> str:
        """The host-side diff of the workspace against the starting state; "" when git fails
        on what the model left (logged: the episode then scores 0)."""
        try:
            return ws.diff_against_baseline(ep.git_dir, ep.workspace)
        except (ws.GitError, OSError) as e:
            log.warning("swe %s: cannot diff the workspace: %s", ep.instance.instance_id, e)
            return ""

    def snapshot(self) -> dict[str, Any]:
        """{"patch", "submitted", "steps"}: the patch fixed at submission, else the workspace's
        current diff (scored 0 anyway); after ``close`` the episode's last snapshot."""
        ep = self._ep
        if ep is None:
            return dict(self._final)
        patch = ep.patch if ep.patch is not None else self._diff(ep)
        self._final = {"patch": patch, "submitted": ep.submitted, "steps": ep.steps}
        if len(patch) > self.max_patch_chars:   # not shipped through the object store, not scored
            self._final.update(patch="", patch_too_large=True)
        return dict(self._final)

    def close(self) -> None:
        ep, self._ep = self._ep, None
        if ep is not None:   # a later snapshot() answers what this episode ended with
            patch = ep.patch if ep.patch is not None else self._final["patch"]
            self._final = {"patch": patch, "submitted": ep.submitted, "steps": ep.steps}
        if self._finalizer is not None:
            self._finalizer()   # runs _finish once
            self._finalizer = None
        self.task = None

    # ------------------------------------------------------------------ scoring

    def score(self, task: Task, messages: list[dict], snapshot: dict[str, Any] | None = None) -> RewardBreakdown:
        """Klear Eq. 7 on the snapshot's patch (``messages`` are not needed: the patch was
        taken on the host). A snapshot without "submitted" is a bare patch to score (e.g. the
        gold fix); ``None`` is an episode that left nothing (0). Parts: submitted, applied, f2p_passed and
        p2p_passed (fractions), resolved (= total)."""
        snap = snapshot if snapshot is not None else {"patch": "", "submitted": False}
        parts = {"submitted": 0.0, "applied": 0.0, "f2p_passed": 0.0, "p2p_passed": 0.0, "resolved": 0.0}
        try:
            instance = Instance.from_task(task)
        except ValueError as e:   # bad task data: a scoring failure (masked), not a 0
            return RewardBreakdown(0.0, parts, error=str(e))
        patch, submitted = snap.get("patch") or "", bool(snap.get("submitted", True))
        if not isinstance(patch, str):
            return RewardBreakdown(0.0, parts, error=f"swe instance {instance.instance_id!r}: snapshot patch is not text")
        parts["submitted"] = float(submitted)
        if not submitted or snap.get("patch_too_large") or len(patch) > self.max_patch_chars:
            return RewardBreakdown(0.0, parts)
        scratch = ws.new_episode_root(self.root, self.owner_tag, prefix="score-")
        try:
            tree = scratch / "tree"
            try:
                instance.starting_state(tree)
            except ValueError as e:
                return RewardBreakdown(0.0, parts, error=str(e))
            # Klear: changes to test files are discarded, so the listed tests judge the fix.
            excludes = TEST_PATTERNS + RUNNER_PATTERNS + tuple(instance.test_files())
            if ws.apply_patch(tree, patch, excludes) is not None:
                return RewardBreakdown(0.0, parts)
            parts["applied"] = 1.0
            return self._run_tests(instance, tree, parts)
        finally:
            ws.remove_tree(scratch)

    def _run_tests(self, instance: Instance, tree: Path, parts: dict[str, float]) -> RewardBreakdown:
        from envs.swe.testrun import run_tests

        ids = list(instance.fail_to_pass) + [t for t in instance.pass_to_pass if t not in instance.fail_to_pass]
        try:
            run = run_tests(tree, ids, backend=self.backend, timeout_s=self.test_timeout_s)
        except Exception as e:  # noqa: BLE001 - the test harness failing is not the model's fault
            log.exception("swe %s: test run failed", instance.instance_id)
            return RewardBreakdown(0.0, parts, error=f"swe instance {instance.instance_id!r}: test run failed: {e!r}")
        f2p = [bool(run.results.get(t, False)) for t in instance.fail_to_pass]
        p2p = [bool(run.results.get(t, False)) for t in instance.pass_to_pass]
        parts["f2p_passed"] = sum(f2p) / len(f2p)
        parts["p2p_passed"] = sum(p2p) / len(p2p) if p2p else 1.0
        parts["resolved"] = float(all(f2p) and all(p2p))
        return RewardBreakdown(parts["resolved"], parts)


def sweep(root: str | None = None, owner_tag: str | None = None) -> list[str]:
    """Remove the episode roots a dead ``SweEnv`` left under ``root`` (default
    ``default_root()``): all of ``owner_tag``'s, or, without one, those of dead ``pid<N>`` owners."""
    return ws.sweep(root or default_root(), owner_tag)
