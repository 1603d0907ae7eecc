"""The paper's pull-request filters, each a pure function returning a drop reason or None.

Both subsets: merged pull requests only, no bot authors, and (from daVinci-Dev's code) no
linked issue with more than 20 comments. The Python subset also needs every changed file to be
Python source or documentation and 1-5 Python files changed. The 32k-token cap is applied after
rendering, where the tokens are counted (``build``).
"""
from __future__ import annotations

import re
from typing import Any

from forge_ray.data.schema import changed_paths

BOT_RE = re.compile(r"\[bot\]|(^|[^a-z])(dependabot|renovate|github-actions|pre-commit-ci|greenkeeper|snyk-bot|mergify"
                    r"|allcontributors|codecov|imgbot|bors)([^a-z]|$)|(^|[-_.<])bot@|-bot(\b|@)", re.I)
PYTHON_EXTS = (".py", ".pyi")
DOC_EXTS = (".md", ".rst", ".txt")
MAX_ISSUE_COMMENTS = 20


def is_bot(author: str) -> bool:
    """True for the automation accounts that open pull requests (dependabot, renovate, ``*[bot]``...)."""
    return bool(author) and bool(BOT_RE.search(author))


def pr_drop_reason(record: dict[str, Any], blocked_repos: frozenset[str] = frozenset()) -> str | None:
    """Why ``record`` is dropped from every subset, or None. ``blocked_repos`` (lower-case
    names) are repositories and packages of the evaluation sets: all their PRs go."""
    if not record.get("merged", True):
        return "not_merged"
    if is_bot(record.get("author", "")):
        return "bot_author"
    if record["repo_name"].lower().rsplit("/", 1)[-1] in blocked_repos or record["repo_name"].lower() in blocked_repos:
        return "eval_repository"
    issue = record.get("related_issue")
    if issue and len(issue.get("comments") or []) > MAX_ISSUE_COMMENTS:
        return "issue_too_many_comments"
    if not any(c["diffs"] for c in record["commits"]):
        return "no_edits"
    return None


def python_drop_reason(record: dict[str, Any], max_files: int = 5) -> str | None:
    """Why ``record`` is not in the Python subset, or None: every changed file must be Python
    or documentation, and 1..``max_files`` of them Python."""
    paths = changed_paths(record)
    if any(not p.endswith(PYTHON_EXTS + DOC_EXTS) for p in paths):
        return "non_python_files"
    n_py = sum(p.endswith(PYTHON_EXTS) for p in paths)
    if not 1 <= n_py <= max_files:
        return "python_files_out_of_range"
    return None
