"""The SWE environment (envs/swe): reply protocol, editor, episodes, scoring, expert, escapes.

Episodes run for real: a tiny repository (package ``calc`` with a bug in ``mul``, three tests)
built here with git, copied per episode, commands in bubblewrap, scoring through
``envs.swe.testrun``. Tests that need the sandbox skip only when bubblewrap is unusable.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psutil
import pytest

from envs.swe import SweEnv, SweTasks, sweep
from envs.swe import editor
from envs.swe.env import Instance, merged_output
from envs.swe.expert import ExpertError, expert_conversation, parse_patch
from envs.swe.protocol import format_observation, format_reply, is_submission, parse_reply
from forge_ray.env import proctree
from forge_ray.env.sandbox import bwrap_problem, make_sandbox, truncate_output
from forge_ray.types import Action, Task
from swe_fixture import F2P, build_tasks_dir  # tests/swe_fixture.py

needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap unusable: {bwrap_problem()}")

EDIT_MUL = """old=$(cat <<'OLD'
def mul(a, b):
    return a + b
OLD
) && new=$(cat <<'NEW'
def mul(a, b):
    return a * b
NEW
) && edit_via_str_replace calc/ops.py -- "$old" "$new\""""


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("swe-tasks")
    build_tasks_dir(base)
    return base


@pytest.fixture(scope="module")
def root():
    """Episode roots: world-searchable (pytest's own tmp dirs are 0700, unreachable for the
    sandbox uid of bwrap-as-root)."""
    path = tempfile.mkdtemp(prefix="forge-swe-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def source(tasks_dir, root) -> SweTasks:
    return SweTasks(str(tasks_dir), backend="bwrap", root=root, step_limit=12, command_timeout_s=20)


@pytest.fixture(scope="module")
def task(source) -> Task:
    return source.tasks("train", 1, 0)[0]


def reply(command: str, thought: str = "next step") -> Action:
    return Action(text=format_reply(thought, command), tool_calls=[])


def make_env(root: str, **kw) -> SweEnv:
    return SweEnv(root=root, backend="bwrap", **{"command_timeout_s": 20, **kw})


# -- protocol ------------------------------------------------------------------------------------


def test_parse_reply():
    ok = parse_reply("THOUGHT: look around.\n\n```bash\nls -la && cat x\n```\n")
    assert (ok.ok, ok.thought, ok.command) == (True, "look around.", "ls -la && cat x")
    assert parse_reply("THOUGHT: t\n```bash\nA\n```\ntrailing words").command == "A"
    cases = {
        "THOUGHT: no block here, just ls": "no ```bash",
        "THOUGHT: two\n```bash\nls\n```\n```bash\npwd\n```": "2 ```bash",
        "I will list files.\n\n```bash\nls\n```": "no THOUGHT",
        "THOUGHT: empty\n```bash\n   \n```": "empty",
        "THOUGHT: unclosed\n```bash\nls\n": "no ```bash",
        None: "not text",
    }
    for text, why in cases.items():
        r = parse_reply(text)
        assert not r.ok and r.command is None and why in r.error, (text, r)
    assert is_submission("COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n")
    assert is_submission("\nMINI_SWE_AGENT_FINAL_OUTPUT\ndiff --git a/x b/x\n")
    assert not is_submission("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT\n") and not is_submission("")


def test_observation_truncation_exact():
    assert format_observation(0, "hi\n") == "<returncode>0</returncode>\n<output>\nhi\n</output>"
    assert format_observation(2, "") == "<returncode>2</returncode>\n<output>\n</output>"
    short = "a" * 9_999
    assert format_observation(1, short) == f"<returncode>1</returncode>\n<output>\n{short}\n</output>"
    text = "H" * 5_000 + "~" * 15_000 + "T" * 5_000
    obs = format_observation(0, text)
    head = obs.split("<output_head>\n")[1].split("\n</output_head>")[0]
    tail = obs.split("<output_tail>\n")[1].split("\n</output_tail>")[0]
    assert (head, tail) == ("H" * 5_000, "T" * 5_000) and "~" not in obs
    assert "<elided_chars>\n15000 characters elided\n</elided_chars>" in obs and "<warning>" in obs
    assert "0 characters elided" in format_observation(0, "x" * 10_000)   # >= 10,000: cut (nothing elided)
    # the sandbox's own head/tail cut is undone into (head + tail, real length)
    cut = truncate_output(text, 10_000)
    assert merged_output(cut, "") == ("H" * 5_000 + "T" * 5_000, 25_000)
    assert format_observation(0, *merged_output(cut, "")) == obs
    assert merged_output("out\n", "bwrap: oops\n") == ("out\nbwrap: oops\n", 16)


# -- editor --------------------------------------------------------------------------------------


def _edit(path: Path, old: str, new: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = editor.edit(str(path), old, new, out, err)
    return code, out.getvalue(), err.getvalue()


def test_editor(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text("".join(f"line{i}\n" for i in range(1, 11)) + "x = 1\ny = 1\nx = 1\n")
    os.chmod(f, 0o640)
    code, out, _ = _edit(f, "line5\nline6", "LINE5\nLINE6\nNEW")
    assert code == 0 and f.read_text().startswith("line1\nline2\nline3\nline4\nLINE5\nLINE6\nNEW\nline7\n")
    assert out.splitlines()[2:] == [f"{n:6d}\t{t}" for n, t in
                                    [(2, "line2"), (3, "line3"), (4, "line4"), (5, "LINE5"), (6, "LINE6"),
                                     (7, "NEW"), (8, "line7"), (9, "line8"), (10, "line9")]]
    assert f.stat().st_mode & 0o777 == 0o640   # permissions kept by the atomic write
    before = f.read_text()
    code, out, err = _edit(f, "nope", "x")
    assert (code, out) == (2, "") and "not found" in err and f.read_text() == before
    code, _, err = _edit(f, "x = 1", "x = 2")
    assert code == 3 and "2 times" in err and "lines 12, 14" in err and f.read_text() == before
    assert _edit(f, "line", "L")[0] == 3 and _edit(f, "", "L")[0] == 1
    assert editor.occurrences("aaa", "aa") == [0, 1]   # overlapping matches count: ambiguous
    # atomic: a failing write leaves the file whole and no temp file behind
    def full_disk(*_):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", full_disk)
        code, _, err = _edit(f, "y = 1", "y = 2")
    assert code == 1 and "No space left" in err and f.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.py"]
    # CRLF and non-UTF-8 bytes survive; the command line shape is checked
    g = tmp_path / "crlf.txt"
    g.write_bytes(b"a\r\nb\xff\r\nc\r\n")
    assert editor.main([str(g), "--", "b", "B"]) == 0 and g.read_bytes() == b"a\r\nB\xff\r\nc\r\n"
    assert editor.main([str(g), "b"]) == 1 and "usage" in capsys.readouterr().err
    r = subprocess.run([sys.executable, editor.__file__, str(g), "--", "c", "C"], capture_output=True, text=True)
    assert r.returncode == 0 and "edited successfully" in r.stdout and g.read_bytes().endswith(b"C\r\n")


def test_parse_gold_patch(task):
    [fp] = parse_patch(task.answer["patch"])
    assert (fp.old_path, fp.new_path, len(fp.hunks)) == ("calc/ops.py", "calc/ops.py", 1)
    assert "    return a + b" in fp.hunks[0].old and "    return a * b" in fp.hunks[0].new


def test_expert_widen():
    from envs.swe.expert import widen

    lines = ["def a():", "    return 1", "", "", "def b():", "    return 1", ""]
    old, new, after = widen(lines, 5, 6, ["    return 2"], "m.py")   # the changed line is not unique
    assert (old, new) == ("def b():\n    return 1", "def b():\n    return 2")
    assert after == ["def a():", "    return 1", "", "", "def b():", "    return 2", ""]
    old, new, _ = widen(lines, 2, 2, ["    x = 1"], "m.py")   # an insertion: anchored on the code above
    assert (old, new) == ("def a():\n    return 1", "def a():\n    return 1\n    x = 1")
    old, new, _ = widen(lines, 4, 4, ["", ""], "m.py")   # never ends on a blank line ($(...) drops it)
    assert not old.endswith("\n") and not new.endswith("\n") and new.count("\n") == old.count("\n") + 2


# -- sandbox ro_binds ----------------------------------------------------------------------------


def test_sandbox_ro_binds(tmp_path, root):
    tools = Path(tempfile.mkdtemp(dir=root))
    os.chmod(tools, 0o755)
    (tools / "mytool").write_text("#!/bin/sh\necho tool:$1\n")
    os.chmod(tools / "mytool", 0o755)
    backends = ["process"] + (["bwrap"] if bwrap_problem() is None else [])
    for backend in backends:
        with make_sandbox(backend, ro_binds={str(tools): "/opt/t"}) as sb:
            r = sb.run(["sh", "-c", "mytool hi; echo $PATH"])
            assert r.stdout.startswith("tool:hi\n"), (backend, r)
            assert r.stdout.split("\n")[1].startswith("/opt/t:" if backend == "bwrap" else f"{tools}:")
            if backend == "bwrap":   # mounted read-only
                r = sb.run(["sh", "-c", "touch /opt/t/x"])
                assert "Read-only file system" in r.stderr
    assert sorted(p.name for p in tools.iterdir()) == ["mytool"]
    with pytest.raises(ValueError, match="ro_binds"):
        make_sandbox("process", ro_binds={"relative": "/opt/t"})
    with pytest.raises(ValueError, match="ro_binds"):
        make_sandbox("container", container="c", ro_binds={str(tools): "/opt/t"})


# -- episodes ------------------------------------------------------------------------------------


@needs_bwrap
def test_episode_edit_submit_score(task, root):
    env = make_env(root)
    assert env.open(task) is task
    ws = env.workspace
    assert (ws / "calc" / "ops.py").read_text().count("return a + b") == 2   # the bug is applied
    r = env.step(reply("git status --short && which edit_via_str_replace && python3 -m pytest -q tests 2>&1 | tail -n 1"))
    obs = r.messages[0]
    assert obs["role"] == "user" and not r.done and r.info == {"steps": 1, "submitted": False}
    assert obs["content"].startswith("<returncode>0</returncode>\n<output>\n/opt/forge/bin/edit_via_str_replace\n")
    assert "2 failed, 1 passed" in obs["content"]
    r = env.step(Action(text="I'll just fix it.", tool_calls=[]))   # malformed: an observation, a step
    assert not r.done and r.info["steps"] == 2 and "Format error" in r.messages[0]["content"]
    r = env.step(reply(EDIT_MUL))
    assert "<returncode>0</returncode>" in r.messages[0]["content"] and "return a * b" in r.messages[0]["content"]
    r = env.step(reply("echo " + "x" * 200_000))   # longer than one argv string may be: refused, not run
    assert not r.done and "200005 characters long" in r.messages[0]["content"]
    r = env.step(reply("python3 /opt/forge/bin/edit_via_str_replace calc/ops.py -- 'return a + b' 'return a+b'"))
    assert "<returncode>0</returncode>" in r.messages[0]["content"]   # also callable by path
    r = env.step(reply("echo MINI_SWE_AGENT_FINAL_OUTPUT && git add -A && git diff --cached"))
    assert (r.messages, r.done, r.info) == ([], True, {"steps": 6, "submitted": True})
    assert env.step(reply("ls")).done   # nothing runs after the submission
    snap = env.snapshot()
    assert snap["submitted"] and snap["steps"] == 6
    assert "-    return a + b\n+    return a * b" in snap["patch"] and "-    return a + b\n+    return a+b" in snap["patch"]
    assert ".git" not in snap["patch"] and "__pycache__" not in snap["patch"]
    reward = env.score(task, [], snap)
    assert reward.total == 1.0 and reward.parts == {"submitted": 1.0, "applied": 1.0, "f2p_passed": 1.0,
                                                    "p2p_passed": 1.0, "resolved": 1.0}, reward
    episode_root = ws.parent
    env.close()
    env.close()   # idempotent
    assert not episode_root.exists() and env.workspace is None
    assert env.snapshot() == snap   # what the episode ended with, after close


@needs_bwrap
def test_score_in_fresh_env(task, root):
    env = make_env(root)   # the reward actor's situation: never opened, only task + snapshot
    gold = env.score(task, [], {"patch": task.answer["patch"]})
    assert gold.total == 1.0 and gold.error is None
    empty = env.score(task, [], {"patch": "", "submitted": True})
    assert empty.total == 0.0 and empty.parts["applied"] == 1.0 and empty.parts["f2p_passed"] == 0.0
    assert env.score(task, [], None).total == 0.0
    not_submitted = env.score(task, [], {"patch": task.answer["patch"], "submitted": False})
    assert not_submitted.total == 0.0 and not_submitted.parts["submitted"] == 0.0   # Klear: never submitted -> 0
    garbage = env.score(task, [], {"patch": "diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-x\n+y\n"})
    assert garbage.total == 0.0 and garbage.parts["applied"] == 0.0
    # editing only the tests (to expect the buggy values) is discarded: the bug remains
    tests_only = ("diff --git a/tests/test_calc.py b/tests/test_calc.py\n--- a/tests/test_calc.py\n"
                  "+++ b/tests/test_calc.py\n@@ -9 +9 @@ def test_add():\n-    assert mul(3, 4) == 12\n"
                  "+    assert mul(3, 4) == 7\n@@ -13 +13 @@ def test_mul():\n-    assert square(5) == 25\n"
                  "+    assert square(5) == 10\n")
    r = env.score(task, [], {"patch": tests_only, "submitted": True})
    assert r.total == 0.0 and r.parts["applied"] == 1.0 and r.parts["f2p_passed"] == 0.0, r
    # the fix plus a sabotaged test and a pytest-shadowing module: still judged by the real tests
    extra = ("diff --git a/tests/test_calc.py b/tests/test_calc.py\n--- a/tests/test_calc.py\n"
             "+++ b/tests/test_calc.py\n@@ -5 +5 @@ def test_add():\n-    assert add(2, 3) == 5\n"
             "+    assert add(2, 3) == 6\n"
             "diff --git a/pytest.py b/pytest.py\nnew file mode 100644\n--- /dev/null\n+++ b/pytest.py\n"
             "@@ -0,0 +1 @@\n+raise SystemExit(0)\n")
    r = env.score(task, [], {"patch": task.answer["patch"] + extra})
    assert r.total == 1.0 and r.parts["p2p_passed"] == 1.0, r
    assert not any(Path(root, env.owner_tag).iterdir())   # scratch trees removed
    bad = Task(id="x", env="swe", messages=[], tools=[], answer={**task.answer, "FAIL_TO_PASS": []})
    assert "FAIL_TO_PASS is empty" in env.score(bad, [], {"patch": ""}).error


@needs_bwrap
def test_git_commit_cannot_hide_changes(task, root):
    env = make_env(root)
    env.open(task)
    try:
        env.step(reply(EDIT_MUL))
        r = env.step(reply("git commit -qam 'fix' && git log --oneline | head -n 3 && git diff HEAD~1 --stat"))
        assert "<returncode>0</returncode>" in r.messages[0]["content"] and "1 file changed" in r.messages[0]["content"]
        env.step(reply("rm -rf .git && echo 'fake' > .gitignore_not && git status; true"))
        r = env.step(reply("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"))
        assert r.done and r.info["submitted"]
        snap = env.snapshot()
        assert "+    return a * b" in snap["patch"] and "+fake" in snap["patch"]
        assert env.score(task, [], snap).total == 1.0
    finally:
        env.close()


@needs_bwrap
def test_step_limit_timeout_and_unsubmitted(task, root):
    env = make_env(root, step_limit=3, command_timeout_s=1)
    env.open(task)
    try:
        r = env.step(reply("echo early; sleep 5; echo late"))
        assert not r.done and r.messages[0]["content"].startswith("The last command <command>echo early; sleep 5")
        assert "timed out after 1 seconds" in r.messages[0]["content"] and "<output>\nearly\n</output>" in r.messages[0]["content"]
        r = env.step(reply("echo still here"))
        assert not r.done and "still here" in r.messages[0]["content"]
        r = env.step(reply(EDIT_MUL))   # the last allowed reply runs, then the episode is truncated
        assert r.done and r.info == {"steps": 3, "submitted": False, "truncated": True}
        assert "return a * b" in r.messages[0]["content"]
        snap = env.snapshot()
        assert not snap["submitted"] and "+    return a * b" in snap["patch"]
        assert env.score(task, [], snap).total == 0.0   # a fix never submitted scores 0
    finally:
        env.close()


@needs_bwrap
def test_sweep_and_bad_task_data(task, root, tasks_dir):
    tag = f"dead-{uuid.uuid4().hex[:6]}"
    env = make_env(root, owner_tag=tag)
    env.open(task)
    ws = env.workspace
    env._finalizer.detach()   # as if the actor died: nothing cleans up
    env._ep.sandbox.close()
    assert ws.exists() and sweep(root, tag) == [str(Path(root) / tag)] and not ws.exists()
    assert sweep(root, tag) == []
    with pytest.raises(ValueError, match="owner_tag"):
        sweep(root, "../x")
    wrong = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
    bad = Task(id="b", env="swe", messages=[], tools=[], answer={**task.answer, "bug_patch": wrong})
    with pytest.raises(ValueError, match="calc-1.0__mul.*bug_patch does not apply"):
        make_env(root).open(bad)
    with pytest.raises(ValueError, match="calc-1.0__mul.*does not exist"):
        Instance.from_task(Task(id="b", env="swe", messages=[], tools=[], answer={**task.answer, "repo": "repos/nope"}))
    with pytest.raises(ValueError, match="SweEnv backend"):
        SweEnv(backend="container")


# -- task source and expert ----------------------------------------------------------------------


def test_task_source(source, tasks_dir, tmp_path):
    a, b = source.tasks("heldout", 5, 1), source.tasks("heldout", 5, 1)
    assert [t.id for t in a] == [t.id for t in b] and len(a) == 2   # n > available: all of them
    t = source.tasks("train", 1, 0)[0]
    assert (t.env, t.tools, t.id) == ("swe", [], "calc-1.0__mul")
    assert [m["role"] for m in t.messages] == ["system", "user"]
    assert "edit_via_str_replace" in t.messages[0]["content"] and "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT" in t.messages[0]["content"]
    assert "12 commands" in t.messages[0]["content"] and "mul(3, 4) returns 7" in t.messages[1]["content"]
    assert t.answer["tasks_dir"] == str(tasks_dir) and t.answer["FAIL_TO_PASS"] == F2P
    with pytest.raises(ValueError, match="unknown split"):
        source.tasks("dev", 1, 0)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{**t.answer, "FAIL_TO_PASS": "tests/x.py::t"}]), tmp_path / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet, row 0 .*calc-1.0__mul.*FAIL_TO_PASS"):
        SweTasks(str(tmp_path)).tasks("train", 1, 0)


@needs_bwrap
def test_expert_replay(source, task):
    messages = source.expert(task)
    roles = [m["role"] for m in messages]
    assert roles[-1] == "assistant" and roles[:-1] == ["assistant", "user"] * (len(roles) // 2)
    commands = [parse_reply(m["content"]).command for m in messages if m["role"] == "assistant"]
    assert all(commands) and commands[0].startswith("grep -rn 'def mul'") and commands[-1] == "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
    assert any(c.startswith("old=$(cat <<'OLD'\ndef mul(a, b):\n    return a + b\nOLD") for c in commands)
    observations = [m["content"] for m in messages if m["role"] == "user"]
    assert "FAILED" in observations[2] and "2 passed" in observations[-1]   # real outputs
    broken = Task(id=task.id, env="swe", messages=task.messages, tools=[],
                  answer={**task.answer, "patch": task.answer["patch"].replace("a * b", "a - b")})
    with pytest.raises(ExpertError, match="command failed"):
        expert_conversation(broken, source.env_kwargs)
    # played once, then read from the tasks folder's cache (keyed by the gold patch)
    (cached,) = source.expert_cache.glob(f"{task.id}.*.json")
    assert json.loads(cached.read_text()) == messages and source.expert(task) == messages
    with pytest.raises(ExpertError):  # another gold patch is another key: played, and fails
        source.expert(broken)


def test_submission_filter_excludes(tmp_path):
    from envs.swe.env import RUNNER_PATTERNS, TEST_PATTERNS
    from envs.swe.workspace import apply_patch

    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    for rel in ("pkg/mod.py", "pkg/tests/test_a.py", "conftest.py", "setup.cfg"):
        (tmp_path / rel).write_text("x\n")

    def change(rel: str) -> str:
        return f"diff --git a/{rel} b/{rel}\n--- a/{rel}\n+++ b/{rel}\n@@ -1 +1 @@\n-x\n+y\n"

    def create(rel: str) -> str:
        return f"diff --git a/{rel} b/{rel}\nnew file mode 100644\n--- /dev/null\n+++ b/{rel}\n@@ -0,0 +1 @@\n+y\n"

    patch = "".join([change("pkg/mod.py"), change("pkg/tests/test_a.py"), change("conftest.py"), change("setup.cfg"),
                     create("pkg/test_new.py"), create("sitecustomize.py"), create("pkg/pytest.py"), create("new_test.py")])
    assert apply_patch(tmp_path, patch, TEST_PATTERNS + RUNNER_PATTERNS) is None
    assert (tmp_path / "pkg" / "mod.py").read_text() == "y\n"   # the source change went in, nothing else
    assert all((tmp_path / rel).read_text() == "x\n" for rel in ("pkg/tests/test_a.py", "conftest.py", "setup.cfg"))
    assert not any((tmp_path / rel).exists() for rel in ("pkg/test_new.py", "sitecustomize.py", "pkg/pytest.py", "new_test.py"))
    assert "does not apply" in apply_patch(tmp_path, change("pkg/mod.py"))   # all or nothing, with git's reason


# -- escapes through the env's bash tool ---------------------------------------------------------


@pytest.fixture(scope="module")
def escape_env(task, root):
    env = make_env(root, command_timeout_s=8, memory_mb=1024, max_processes=32, file_size_mb=8)
    env.open(task)
    yield env
    env.close()


def _obs(env: SweEnv, command: str) -> str:
    r = env.step(reply(command))
    assert not r.done and len(r.messages) == 1 and r.messages[0]["role"] == "user"
    return r.messages[0]["content"]


def _still_works(env: SweEnv) -> None:
    assert _obs(env, "echo alive") == "<returncode>0</returncode>\n<output>\nalive\n</output>"
    uid = env._ep.sandbox._uid
    if uid is not None:
        assert proctree._live_pids_of_uid(uid) == [], "processes of the sandbox uid outlived the step"


@needs_bwrap
def test_escape_read_host_files(escape_env, root):
    secret_dir = Path(tempfile.mkdtemp(dir=root))
    os.chmod(secret_dir, 0o755)
    token = uuid.uuid4().hex
    (secret_dir / "secret.txt").write_text(token)
    (secret_dir / "secret.txt").chmod(0o644)
    obs = _obs(escape_env, f"cat {secret_dir}/secret.txt; ls /root; cat /proc/1/root{secret_dir}/secret.txt; "
                           f"grep -r {token} /tmp /opt /work /proc/1/cwd 2>/dev/null; ls ..")
    assert token not in obs.replace(f"grep -r {token}", "") and "No such file" in obs
    _still_works(escape_env)


@needs_bwrap
def test_escape_write_outside(escape_env, root):
    target = Path(tempfile.mkdtemp(dir=root))
    os.chmod(target, 0o777)
    name = uuid.uuid4().hex
    obs = _obs(escape_env, f"echo x > /usr/{name}; echo x > /etc/{name}; echo x > {target}/{name}; "
                           f"echo x > /opt/forge/bin/{name}; echo x > ../{name}; true")
    assert "Read-only file system" in obs or "Permission denied" in obs
    assert not list(target.iterdir()) and not Path(f"/usr/{name}").exists() and not Path(f"/etc/{name}").exists()
    assert not (escape_env.workspace.parent / name).exists()
    _still_works(escape_env)


@needs_bwrap
def test_escape_loopback_network(escape_env):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    try:
        obs = _obs(escape_env, f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); "
                               "print('CONNECTED')\"")
        assert "CONNECTED" not in obs and "ConnectionRefusedError" in obs
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
    _still_works(escape_env)


@needs_bwrap
def test_escape_fork_bomb(escape_env):
    before = len(psutil.pids())
    obs = _obs(escape_env, "f(){ f | f & }; f; sleep 2; echo done")
    assert "Resource temporarily unavailable" in obs or "timed out" in obs
    _still_works(escape_env)
    assert len(psutil.pids()) < before + 20


@needs_bwrap
def test_escape_memory_bomb(escape_env):
    obs = _obs(escape_env, "python3 -c 'b = bytearray(8 << 30)'")
    assert obs.startswith("<returncode>1</returncode>") and "MemoryError" in obs
    obs = _obs(escape_env, "python3 -c 'x = []\nwhile True: x.append(bytearray(64 << 20))'")
    assert obs.startswith("<returncode>1</returncode>") and "MemoryError" in obs
    _still_works(escape_env)


@needs_bwrap
def test_escape_fill_disk(escape_env):
    obs = _obs(escape_env, "head -c 100M /dev/zero > big.bin; ls -l big.bin | cut -d' ' -f5; rm big.bin")
    assert "File size limit exceeded" in obs and f"\n{8 << 20}\n" in obs   # capped at file_size_mb
    obs = _obs(escape_env, "head -c 100M /dev/zero > /tmp/big.bin; ls -l /tmp/big.bin | cut -d' ' -f5")
    assert "File size limit exceeded" in obs or "No space left" in obs
    _still_works(escape_env)


@needs_bwrap
def test_escape_orphan_child(escape_env):
    marker = f"forge-swe-orphan-{uuid.uuid4().hex[:8]}"
    obs = _obs(escape_env, f"setsid nohup sh -c 'sleep 1000; : {marker}' >/dev/null 2>&1 & "
                           f"(sleep 1000; : {marker}) & echo spawned")
    assert obs == "<returncode>0</returncode>\n<output>\nspawned\n</output>"
    alive = [p.pid for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert alive == []
    _still_works(escape_env)


@needs_bwrap
def test_escape_huge_output(escape_env):
    obs = _obs(escape_env, "python3 -c \"import sys\nsys.stdout.write('HEAD\\n')\nfor _ in range(100): "
                           "sys.stdout.write('x' * (1 << 20))\nsys.stdout.write('\\nTAIL\\n')\"")
    total = 5 + 100 * (1 << 20) + 6
    assert obs.startswith("<returncode>0</returncode>\n<warning>")
    assert f"<output_head>\nHEAD\n{'x' * 4995}\n</output_head>" in obs
    assert f"<elided_chars>\n{total - 10_000} characters elided\n</elided_chars>" in obs
    assert obs.endswith(f"<output_tail>\n{'x' * 4994}\nTAIL\n\n</output_tail>")
    assert len(obs) < 11_000
    _still_works(escape_env)


@needs_bwrap
@pytest.mark.parametrize("mode,expected", [("gold", 1.0), ("empty", 0.0), ("tests_only", 0.0)])
def test_eval_swe_replays(tasks_dir, mode, expected, tmp_path):
    """``forge-ray eval swe``'s replays through the real parsing, sandbox and checker: the gold
    patch resolves every task; submitting nothing, or making the failing tests skip, none."""
    from forge_ray.eval.swe import SweEvalConfig, run_swe_eval

    out = tmp_path / "swe.json"
    summary = run_swe_eval(SweEvalConfig(str(tasks_dir), mode=mode, backend="bwrap", out=str(out)))
    assert summary["n"] == 2 and summary["pass_rate"] == expected and summary["errors"] == 0
    assert json.loads(out.read_text())["pass_rate"] == expected
    for row in summary["per_task"]:
        assert row["parts"]["submitted"] == 1.0 and row["parts"]["applied"] == 1.0  # scored, not refused
        assert row["parts"]["p2p_passed"] == 1.0 and row["parts"]["f2p_passed"] == expected


@needs_bwrap
def test_repository_shipped_as_archive(tasks_dir, tmp_path):
    """A tasks folder whose repository is ``repos/<name>.tar.gz`` (as `forge-ray swe make-tasks`
    writes it) plays and scores like one with the folder: gold resolves, empty does not."""
    from forge_ray.env.archive import pack_tree
    from forge_ray.eval.swe import SweEvalConfig, run_swe_eval

    packed = tmp_path / "packed"
    shutil.copytree(tasks_dir, packed, ignore=shutil.ignore_patterns("experts"))
    pack_tree(packed / "repos" / "calc-1.0", packed / "repos" / "calc-1.0.tar.gz")
    shutil.rmtree(packed / "repos" / "calc-1.0")
    for mode, expected in (("gold", 1.0), ("empty", 0.0)):
        assert run_swe_eval(SweEvalConfig(str(packed), mode=mode, backend="bwrap"))["pass_rate"] == expected
