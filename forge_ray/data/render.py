"""A pull-request record (``forge_ray.data.schema``) rendered as one mid-training text, in either of
daVinci-Dev's two formats, each verified before it is returned.

**Markdown** (``render_markdown``), the contextually-native format: what an agent would read, then
what it would do::

    # Repository Context
    Name: owner/repo
    Description: ...

    # Issue                         (only when the PR has a non-empty related issue)
    Title: ...

    <issue body>

    ## Comment 1
    <comment>

    # Pull Request
    Title: ...

    <PR body>

    # Relevant Files Found
    ## path/to/file.py
    ```
    <the file's full content before the PR>
    ```

    ## path/to/other.py
    ...

    # Edits
    <pr_summary>

    <commit message (refined_message when non-empty)>

    Edit: path/to/file.py
    Search:
    '''
    <old text>
    '''
    Replace:
    '''
    <new text>
    '''

    Delete: path/to/removed.py

Each hunk of a commit's per-file patch becomes one search/replace block: the hunk's old lines
(context and removed) and new lines (context and added), widened one line above and below at a time
(up to ``MAX_WIDEN`` each side) until the search text occurs exactly once in the file as it is at that
point. Blocks of one file are computed in order on a running copy of it. An added file is one block
with an empty search (create it with the replace text); a removed file is a ``Delete:`` line. A code
fence is longer than any backtick run in the file. Text blocks keep their exact content except that a
missing final newline is added before the closing quotes.

**XML** (``render_xml``), the general format in the style of The Stack v2: XML-like tags, each on its
own line, around verbatim text (nothing is escaped but the ``path`` attribute), and unified-diff
patches::

    <repository>
    owner/repo
    <description>
    </repository>
    <issue>
    <title>

    <body>
    <issue comment>
    <comment>
    </issue comment>
    </issue>
    <pr>
    <title>

    <body>
    </pr>
    <file path="path/to/file.py">
    <content before the PR>
    </file>
    <pr summary>
    <summary>
    </pr summary>
    <pr commit>
    <message>
    <commit file path="path/to/file.py" status="modified">
    <patch>
    @@ -1,3 +1,4 @@
    ...
    </patch>
    </commit file>
    </pr commit>
    <pr is merged>true</pr is merged>

Verification: ``render_markdown`` replays the very blocks it rendered over the relevant files, as a
reader would (``replay``), and ``render_xml`` applies the patches over them (``apply_patch``); either
must reproduce ``post_contents(record)`` for every touched path, or ``RenderError`` is raised. Its
``reason`` (one of ``REASONS``) is the drop reason a manifest records.
"""
from __future__ import annotations

import html
import re
from typing import Any, Iterable, NamedTuple

from forge_ray.data.patch import PatchError, apply_patch, parse_hunks, split_lines
from forge_ray.data.schema import changed_paths

MAX_WIDEN = 20
REASONS = ("patch_does_not_apply", "search_not_unique", "replay_mismatch", "no_edits", "binary")

Files = dict[str, "str | None"]


class RenderError(ValueError):
    """A record that cannot be rendered faithfully; ``reason`` is a slug from ``REASONS``."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Edit(NamedTuple):
    """One rendered action on ``path``: replace the unique occurrence of ``search`` with ``replace``;
    ``search == ""`` on an absent (or empty) file creates it; ``search is None`` deletes the file."""

    path: str
    search: str | None
    replace: str | None


# ----------------------------------------------------------------------------- file states

def _text_only(path: str, content: str | None) -> None:
    if content is not None and "\x00" in content:
        raise RenderError("binary", path)


def relevant_contents(record: dict[str, Any]) -> Files:
    """The relevant files' contents before the PR, by path (``binary`` when one holds a NUL byte)."""
    files: Files = {}
    for f in record.get("relevant_files") or []:
        _text_only(f["path"], f["content"])
        files[f["path"]] = f["content"]
    return files


def _patched(path: str, old: str, patch: str) -> str:
    try:
        return apply_patch(old, patch)
    except PatchError as e:
        raise RenderError("patch_does_not_apply", f"{path}: {e}") from None


def _apply_diff(files: Files, diff: dict[str, Any]) -> str | None:
    """Applies one per-file diff to ``files`` in place and returns the path's new content. An added
    file (or one not known yet) starts from ""; a removed file ends as None (its patch, when the
    content is known, must still apply). No patch and no known content → ``binary``."""
    path, patch, status = diff["path"], diff.get("patch") or "", diff.get("status") or "modified"
    old = files.get(path)
    if status == "removed":
        if old is not None and patch:
            _patched(path, old, patch)
        files[path] = None
        return None
    if not patch and old is None and status != "added":
        raise RenderError("binary", f"{path}: no patch and no content")
    files[path] = new = _patched(path, "" if status == "added" or old is None else old, patch)
    return new


def post_contents(record: dict[str, Any]) -> Files:
    """Every touched path's content after the PR (None: the path does not exist then). From
    ``record["post_files"]`` (a list of ``{path, content}`` or a dict) when it is not None, where a
    touched path it lacks is taken as gone; else by applying each commit's patches in order over the
    relevant files. Raises ``RenderError`` (``patch_does_not_apply``, ``binary``)."""
    paths = changed_paths(record)
    post = record.get("post_files")
    if post is not None:
        given = post if isinstance(post, dict) else {f["path"]: f["content"] for f in post}
        out = {p: given.get(p) for p in paths}
    else:
        files = relevant_contents(record)
        for commit in record["commits"]:
            for diff in commit["diffs"]:
                _apply_diff(files, diff)
        out = {p: files.get(p) for p in paths}
    for path, content in out.items():
        _text_only(path, content)
    return out


def _verify(got: Files, want: Files) -> None:
    for path, content in want.items():
        if got.get(path) != content:
            raise RenderError("replay_mismatch", f"{path} differs from its content after the PR")


# ----------------------------------------------------------------------------- search/replace edits

def _occurrences(text: str, search: str, limit: int = 2) -> int:
    """How many times ``search`` occurs in ``text``, overlaps included, counting up to ``limit``."""
    n, i = 0, text.find(search)
    while i >= 0 and n < limit:
        n += 1
        i = text.find(search, i + 1)
    return n


def _unique_edit(path: str, lines: list[str], at: int, old: list[str], new: list[str]) -> Edit:
    """The block turning ``lines[at:at+len(old)]`` (== ``old``) into ``new``, its search widened
    symmetrically with surrounding lines until it occurs once in ``"".join(lines)``."""
    text, end = "".join(lines), at + len(old)
    for k in range(MAX_WIDEN + 1):
        lo, hi = max(0, at - k), min(len(lines), end + k)
        search = "".join(lines[lo:hi])
        if _occurrences(text, search) == 1:
            return Edit(path, search, "".join(lines[lo:at] + new + lines[end:hi]))
    raise RenderError("search_not_unique", f"{path}: hunk at line {at + 1} stays ambiguous")


def _hunk_edits(path: str, content: str, patch: str) -> tuple[list[Edit], str]:
    """One block per hunk of ``patch`` over ``content``, each against the text left by the
    previous ones; returns the blocks and the final text."""
    try:
        hunks = parse_hunks(patch)
    except PatchError as e:
        raise RenderError("patch_does_not_apply", f"{path}: {e}") from None
    lines, delta, edits = split_lines(content), 0, []
    for hunk in hunks:
        at, old, new = hunk.old_index() + delta, hunk.old_lines(), hunk.new_lines()
        if at < 0 or lines[at:at + len(old)] != old:
            raise RenderError("patch_does_not_apply", f"{path}: hunk @@ -{hunk.old_start} does not match")
        edits.append(_unique_edit(path, lines, at, old, new))
        lines[at:at + len(old)] = new
        delta += len(new) - len(old)
    return edits, "".join(lines)


def _diff_edits(files: Files, diff: dict[str, Any]) -> list[Edit]:
    path, status, old = diff["path"], diff.get("status") or "modified", files.get(diff["path"])
    new = _apply_diff(files, diff)
    if status == "removed":
        return [Edit(path, None, None)]
    if status == "added" or old is None:
        return [Edit(path, "", new)]
    edits, text = _hunk_edits(path, old, diff.get("patch") or "")
    if text != new:
        raise RenderError("replay_mismatch", f"{path}: blocks and patch disagree")
    return edits


def commit_edits(record: dict[str, Any]) -> list[list[Edit]]:
    """The search/replace blocks of each commit of ``record``, in order, computed over the relevant
    files as every previous block left them. Raises ``RenderError``."""
    files = relevant_contents(record)
    return [[e for diff in commit["diffs"] for e in _diff_edits(files, diff)] for commit in record["commits"]]


def _replay_one(state: Files, edit: Edit) -> None:
    path, search, replace = edit
    text = state.get(path)
    if search is None:
        if text is None:
            raise RenderError("replay_mismatch", f"Delete: {path}, which does not exist")
        state[path] = None
    elif text is None:
        if search:
            raise RenderError("replay_mismatch", f"Edit: {path}, which does not exist")
        state[path] = replace
    elif (n := _occurrences(text, search)) != 1:
        raise RenderError("replay_mismatch", f"Edit: {path}: search text occurs {n}{'+' if n > 1 else ''} times")
    else:
        i = text.find(search)
        state[path] = text[:i] + (replace or "") + text[i + len(search):]


def replay(files: Files, commits_edits: Iterable[Iterable[Edit]]) -> Files:
    """``files`` (path → content, None or absent: no such file) after the blocks of each commit, read
    literally: a search must occur exactly once in its file and is replaced once; an empty search on
    an absent file creates it; ``Delete`` needs an existing file. Raises
    ``RenderError("replay_mismatch")``. ``files`` is not modified."""
    state = dict(files)
    for edits in commits_edits:
        for edit in edits:
            _replay_one(state, Edit(*edit))
    return state


# ----------------------------------------------------------------------------- text pieces

def _lines(*parts: str) -> str:
    return "\n".join(p for p in parts if p)


def _issue(record: dict[str, Any]) -> dict[str, Any] | None:
    issue = record.get("related_issue")
    if not issue or not (issue.get("title") or issue.get("body") or issue.get("comments")):
        return None
    return issue


def _comment_text(comment: Any) -> str:
    return str((comment.get("body") if isinstance(comment, dict) else comment) or "")


def _message(commit: dict[str, Any]) -> str:
    return (commit.get("refined_message") or commit.get("message") or "").strip()


def _fence(content: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", content)), default=0)
    return "`" * max(3, longest + 1)


def _closed(text: str) -> str:
    """``text`` ending with a newline unless empty, so that a closing line can follow it."""
    return text if not text or text.endswith("\n") else text + "\n"


# ----------------------------------------------------------------------------- Markdown

def _md_context(record: dict[str, Any]) -> list[str]:
    parts = [_lines("# Repository Context", f"Name: {record['repo_name']}",
                    f"Description: {record['repo_description']}" if record.get("repo_description") else "")]
    issue = _issue(record)
    if issue:
        parts.append(_lines("# Issue", f"Title: {issue.get('title') or ''}".rstrip(),
                            "\n" + issue["body"].strip() if issue.get("body") else ""))
        parts += [f"## Comment {i}\n{_comment_text(c).strip()}" for i, c in enumerate(issue.get("comments") or [], 1)]
    parts.append(_lines("# Pull Request", f"Title: {record.get('title') or ''}".rstrip(),
                        "\n" + record["body"].strip() if record.get("body") else ""))
    files = [f"## {f['path']}\n{_fence(f['content'])}\n{_closed(f['content'])}{_fence(f['content'])}"
             for f in record.get("relevant_files") or []]
    parts.append("# Relevant Files Found\n" + "\n\n".join(files))
    return parts


def _quoted(text: str) -> str:
    return f"'''\n{_closed(text)}'''"


def _md_edit(edit: Edit) -> str:
    if edit.search is None:
        return f"Delete: {edit.path}"
    return f"Edit: {edit.path}\nSearch:\n{_quoted(edit.search)}\nReplace:\n{_quoted(edit.replace or '')}"


def render_markdown(record: dict[str, Any]) -> str:
    """``record`` in daVinci-Dev's Markdown format (see the module docstring), verified by replaying
    its blocks. Raises ``RenderError`` (any of ``REASONS``)."""
    edits = commit_edits(record)
    if not any(edits):
        raise RenderError("no_edits")
    _verify(replay(relevant_contents(record), edits), post_contents(record))
    body = [record["pr_summary"].strip()] if (record.get("pr_summary") or "").strip() else []
    for commit, blocks in zip(record["commits"], edits):
        body += ([_message(commit)] if _message(commit) else []) + [_md_edit(e) for e in blocks]
    return "\n\n".join(_md_context(record) + ["# Edits\n" + "\n\n".join(body)]) + "\n"


# ----------------------------------------------------------------------------- XML

def _tag(name: str, body: str, attrs: str = "") -> str:
    return f"<{name}{attrs}>\n{_closed(body)}</{name}>"


def _path_attr(path: str) -> str:
    return f' path="{html.escape(path, quote=True)}"'


def _xml_context(record: dict[str, Any]) -> list[str]:
    parts = [_tag("repository", _lines(record["repo_name"], record.get("repo_description") or ""))]
    issue = _issue(record)
    if issue:
        comments = [_tag("issue comment", _comment_text(c)) for c in issue.get("comments") or []]
        head = _lines(issue.get("title") or "", "\n" + issue["body"] if issue.get("body") else "")
        parts.append(_tag("issue", _lines(head, *comments)))
    parts.append(_tag("pr", _lines(record.get("title") or "", "\n" + record["body"] if record.get("body") else "")))
    parts += [_tag("file", f["content"], _path_attr(f["path"])) for f in record.get("relevant_files") or []]
    if (record.get("pr_summary") or "").strip():
        parts.append(_tag("pr summary", record["pr_summary"]))
    return parts


def _xml_commit(commit: dict[str, Any]) -> str:
    files = [_tag("commit file", _tag("patch", d.get("patch") or ""),
                  _path_attr(d["path"]) + f' status="{d.get("status") or "modified"}"') for d in commit["diffs"]]
    return _tag("pr commit", _lines(_message(commit), *files))


def render_xml(record: dict[str, Any]) -> str:
    """``record`` in the general XML-like format (see the module docstring), verified by applying its
    patches over the relevant files. Raises ``RenderError`` (any of ``REASONS``)."""
    if not any(commit["diffs"] for commit in record["commits"]):
        raise RenderError("no_edits")
    files = relevant_contents(record)
    for commit in record["commits"]:
        for diff in commit["diffs"]:
            _apply_diff(files, diff)
    _verify(files, post_contents(record))
    merged = "true" if record.get("merged", True) else "false"
    parts = _xml_context(record) + [_xml_commit(c) for c in record["commits"]]
    return "\n".join(parts + [f"<pr is merged>{merged}</pr is merged>"]) + "\n"
