"""The scripted SWE expert: the gold fix replayed as a canonical mini-swe-agent-plus episode.

The gold patch (buggy -> fixed) is known, so the expert's commands are planned from it: grep
for a name near the change, read the lines around it, run one failing test, apply each hunk
with ``edit_via_str_replace`` (OLD = the hunk's old lines, widened with neighbouring lines of
the file until it occurs exactly once; NEW = the hunk's new lines with the same neighbours),
re-run the failing tests, submit. The conversation is then PLAYED through a real ``SweEnv``:
every observation in it is what the command really printed, and the episode is scored, so an
expert conversation is right by construction; ``expert_conversation`` raises ``ExpertError``
unless the reward is 1.
"""
from __future__ import annotations

import keyword
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.swe.editor import occurrences
from envs.swe.env import EDITOR_NAME, Instance, SweEnv
from envs.swe.protocol import SUBMIT_COMMAND, format_reply
from forge_ray.types import Action, RewardBreakdown, Task

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@ ?(.*)$")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{3,}")
_DEF = re.compile(r"^\s*(?:async\s+)?(def|class)\s+([A-Za-z_][A-Za-z0-9_]*)")
READ_CONTEXT = 5   # lines shown around a hunk when reading


class ExpertError(RuntimeError):
    """The gold patch cannot be turned into a successful expert episode."""


@dataclass
class Hunk:
    old_start: int
    old: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    section: str = ""
    old_noeol: bool = False
    new_noeol: bool = False


@dataclass
class FilePatch:
    old_path: str | None   # None: the file is created
    new_path: str | None   # None: the file is deleted
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""


def _strip_prefix(raw: str, prefix: str) -> str | None:
    raw = raw.split("\t", 1)[0].rstrip("\n")
    if raw == "/dev/null":
        return None
    if raw.startswith('"'):
        raise ExpertError(f"quoted path in the gold patch is not supported: {raw}")
    return raw[len(prefix):] if raw.startswith(prefix) else raw


def parse_patch(text: str) -> list[FilePatch]:
    """The files and hunks of a unified diff (``git diff`` output, ``a/``/``b/`` prefixes)."""
    files: list[FilePatch] = []
    hunk: Hunk | None = None
    last_kind = " "
    for line in text.splitlines():
        if line.startswith("diff --git "):
            files.append(FilePatch(None, None))
            hunk = None
        elif line.startswith("Binary files ") or line.startswith("GIT binary patch"):
            raise ExpertError("binary changes in the gold patch are not supported")
        elif line.startswith("--- ") and hunk is None:
            if not files:
                files.append(FilePatch(None, None))
            files[-1].old_path = _strip_prefix(line[4:], "a/")
        elif line.startswith("+++ ") and hunk is None:
            files[-1].new_path = _strip_prefix(line[4:], "b/")
        elif (m := _HUNK.match(line)) is not None:
            hunk = Hunk(int(m.group(1)), section=m.group(5).strip())
            files[-1].hunks.append(hunk)
        elif hunk is not None and line.startswith("\\"):   # "\ No newline at end of file"
            hunk.old_noeol |= last_kind in " -"
            hunk.new_noeol |= last_kind in " +"
        elif hunk is not None and line[:1] in (" ", "-", "+", ""):
            last_kind, body = (line[:1] or " "), line[1:]
            if last_kind in " -":
                hunk.old.append(body)
            if last_kind in " +":
                hunk.new.append(body)
    for f in files:
        if f.old_path and f.new_path and f.old_path != f.new_path:
            raise ExpertError(f"renames in the gold patch are not supported: {f.old_path} -> {f.new_path}")
    return [f for f in files if f.hunks or f.new_path is None]


@dataclass(frozen=True)
class Step:
    thought: str
    command: str
    must_succeed: bool = False   # the plan is wrong if this command exits non-zero


def _heredoc_var(var: str, text: str) -> str:
    """``var=$(cat <<'TAG' ... TAG)``, with a TAG that is no line of ``text``."""
    tag, lines = var.upper(), set(text.split("\n"))
    while tag in lines:
        tag += "_"
    return f"{var}=$(cat <<'{tag}'\n{text}\n{tag}\n)"


def _edit_command(path: str, old: str, new: str) -> str:
    return f'{_heredoc_var("old", old)} && {_heredoc_var("new", new)} && {EDITOR_NAME} {shlex.quote(path)} -- "$old" "$new"'


def _locate(lines: list[str], hunk: Hunk, expected: int, path: str) -> int:
    """Index in ``lines`` where the hunk's old lines start (nearest match to ``expected``)."""
    n = len(hunk.old)
    if lines[expected:expected + n] == hunk.old:
        return expected
    hits = [i for i in range(len(lines) - n + 1) if lines[i:i + n] == hunk.old]
    if not hits:
        raise ExpertError(f"{path}: a hunk of the gold patch does not match the buggy file")
    return min(hits, key=lambda i: abs(i - expected))


def _core(hunk: Hunk) -> tuple[int, int, list[str]]:
    """The changed part of a hunk, without its context lines: (first, end) in ``hunk.old`` and
    the new lines replacing ``hunk.old[first:end]``."""
    old, new = hunk.old, hunk.new
    p = 0
    while p < min(len(old), len(new)) and old[p] == new[p]:
        p += 1
    q = 0
    while q < min(len(old), len(new)) - p and old[-1 - q] == new[-1 - q]:
        q += 1
    return p, len(old) - q, new[p:len(new) - q]


def widen(lines: list[str], s: int, e: int, new: list[str], path: str) -> tuple[str, str, list[str]]:
    """(OLD, NEW, the lines after the edit) for replacing ``lines[s:e]`` by ``new``, the way a
    careful engineer would: start from the changed lines, add the lines above (up to a
    non-blank one: usually the ``def``) until OLD occurs exactly once in the file, and add lines
    below while a text ends in an empty line (``$(cat <<...)`` drops trailing newlines)."""
    full = "\n".join(lines)
    last = len(lines) - (1 if lines and lines[-1] == "" else 0)   # skip the "" after a final newline
    a, b = s, e
    while True:
        old_block, new_block = lines[a:b], lines[a:s] + new + lines[e:b]
        old = "\n".join(old_block)
        ragged = not old_block or old_block[-1] == "" or (bool(new_block) and new_block[-1] == "")
        if not ragged and len(occurrences(full, old)) == 1:
            return old, "\n".join(new_block), lines[:a] + new_block + lines[b:]
        if ragged and old_block and b < last:
            b += 1
        elif a > 0:   # an insertion is anchored on the line above it
            a -= 1
            while a > 0 and lines[a].strip() == "":
                a -= 1
        elif b < last:
            b += 1
        else:
            raise ExpertError(f"{path}: cannot make a unique OLD for a hunk of the gold patch")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _enclosing(lines: list[str], at: int) -> str:
    """``def NAME``/``class NAME`` of the definition containing ``lines[at]``: walking up, the
    first definition indented less than everything passed so far (or the line itself)."""
    depth = None
    for i in range(min(at, len(lines) - 1), -1, -1):
        line = lines[i]
        if not line.strip():
            continue
        m = _DEF.match(line)
        if m and (depth is None or _indent(line) < depth):
            return f"{m.group(1)} {m.group(2)}"
        depth = _indent(line) if depth is None else min(depth, _indent(line))
    return ""


def _identifier(hunk: Hunk) -> str:
    """A name in the change, when no definition encloses it."""
    first, _, _ = _core(hunk)
    for text in hunk.old[first:] + hunk.new[first:]:
        for name in _IDENT.findall(text):
            if not keyword.iskeyword(name) and name not in ("self", "None", "True", "False"):
                return name
    return ""


def _read_step(path: str, lines: list[str], hunks_at: list[tuple[int, int]]) -> Step:
    lo = max(1, min(s for s, _ in hunks_at) + 1 - READ_CONTEXT)
    hi = min(len(lines), max(e for _, e in hunks_at) + READ_CONTEXT)
    return Step(f"Let me read {path} around the code in question (lines {lo}-{hi}).",
                f"nl -ba {shlex.quote(path)} | sed -n '{lo},{hi}p'")


def _file_steps(workspace: Path, fp: FilePatch) -> tuple[list[Step], list[Step], str]:
    """(read steps, edit steps, what to grep for) for one file of the gold patch."""
    path = fp.path
    if fp.old_path is None:   # a new file
        text = "\n".join(fp.hunks[0].new) + ("" if fp.hunks[0].new_noeol else "\n")
        tag = "EOF"
        while tag in text.split("\n"):
            tag += "_"
        parent = str(Path(path).parent)
        mkdir = f"mkdir -p {shlex.quote(parent)} && " if parent != "." else ""
        return [], [Step(f"The fix needs a new file, {path}. Let me create it.",
                         f"{mkdir}cat <<'{tag}' > {shlex.quote(path)}\n{text}{tag}", True)], ""
    if fp.new_path is None:
        return [], [Step(f"{path} should not exist in the fixed code. Let me remove it.", f"rm {shlex.quote(path)}", True)], ""
    try:
        lines = (workspace / path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeError) as e:
        raise ExpertError(f"cannot read {path} of the buggy repository: {e}") from e
    edits, spans, delta, name = [], [], 0, ""
    for k, hunk in enumerate(fp.hunks):
        if hunk.old_noeol != hunk.new_noeol:
            raise ExpertError(f"{path}: the gold patch changes the final newline; not supported")
        at = _locate(lines, hunk, hunk.old_start - 1 + delta if hunk.old else hunk.old_start + delta, path)
        first, end, replacement = _core(hunk)
        spans.append((at + first, at + end))
        if k == 0:   # an insertion belongs to the code above it
            name = _enclosing(lines, at + first - (first == end)) or _identifier(hunk)
        old, new, lines = widen(lines, at + first, at + end, replacement, path)
        delta += len(hunk.new) - len(hunk.old)
        where = "This is the cause of the problem" if k == 0 else "The fix needs one more change in the same file"
        edits.append(Step(f"{where}: in {path}, the code below is wrong. I will replace it with the "
                          "corrected version.", _edit_command(path, old, new), True))
    return [_read_step(path, (workspace / path).read_text(encoding="utf-8").split("\n"), spans)], edits, name


def plan(instance: Instance, workspace: Path) -> list[Step]:
    """The expert's commands for ``instance``, planned on the host from the buggy workspace."""
    files = parse_patch(instance.patch)
    if not files:
        raise ExpertError(f"swe instance {instance.instance_id!r}: the gold patch changes no file")
    reads: list[Step] = []
    edits: list[Step] = []
    names: list[str] = []
    for fp in files:
        r, e, n = _file_steps(workspace, fp)
        reads, edits, names = reads + r, edits + e, names + [n]
    steps = []
    name = next((n for n in names if n), "")
    if name:
        steps.append(Step(f"I need to find the code behind this problem. Let me search for `{name}`.",
                          f"grep -rn {shlex.quote(name)} --include='*.py' . | head -n 20"))
    steps += reads
    first = instance.fail_to_pass[0]
    steps.append(Step(f"Before changing anything, let me run a test that should pass once the problem is "
                      f"fixed, to see it fail: {first}", f"python3 -m pytest -q {shlex.quote(first)}"))
    steps += edits
    ids = " ".join(shlex.quote(t) for t in instance.fail_to_pass)
    steps.append(Step("Now let me run the failing tests again to check the fix.", f"python3 -m pytest -q {ids}", True))
    steps.append(Step("The tests pass. The fix is complete, so I submit my changes.", SUBMIT_COMMAND))
    return steps


def play_expert(task: Task, env_kwargs: dict[str, Any] | None = None) -> tuple[list[dict], RewardBreakdown]:
    """Play the expert's plan through a fresh ``SweEnv``: (the continuation messages, reward)."""
    env = SweEnv(**(env_kwargs or {}))
    try:
        env.open(task)
        steps = plan(Instance.from_task(task), env.workspace)
        if len(steps) > env.step_limit:
            raise ExpertError(f"swe instance {task.id!r}: the expert needs {len(steps)} steps, the step "
                              f"limit is {env.step_limit}")
        messages: list[dict] = []
        for step in steps:
            text = format_reply(step.thought, step.command)
            messages.append({"role": "assistant", "content": text})
            result = env.step(Action(text=text, tool_calls=[]))
            messages += result.messages
            if step.must_succeed and not (result.messages and result.messages[0]["content"].startswith(
                    "<returncode>0</returncode>")):
                raise ExpertError(f"swe instance {task.id!r}: the expert's command failed:\n{step.command}\n"
                                  f"{result.messages[0]['content'][-1500:] if result.messages else ''}")
            if result.done:
                break
        return messages, env.score(task, [*task.messages, *messages], env.snapshot())
    finally:
        env.close()


def expert_conversation(task: Task, env_kwargs: dict[str, Any] | None = None) -> list[dict]:
    """The expert's continuation of ``task.messages``; ``ExpertError`` unless it scores 1."""
    messages, reward = play_expert(task, env_kwargs)
    if reward.total != 1.0:
        raise ExpertError(f"swe instance {task.id!r}: the expert replay scored {reward.total} "
                          f"(parts {reward.parts}, error {reward.error}); last observation: "
                          f"{messages[-1]['content'][-1500:] if messages else ''}")
    return messages
