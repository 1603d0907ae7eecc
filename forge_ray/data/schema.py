"""The pull-request record every mid-training source produces: daVinci-Dev's public schema.

One row per pull request, as plain dicts so that Ray Data and Arrow carry it unchanged:

    repo_name, repo_description            the repository
    related_issue {title, body, comments}  the linked issue (None when there is none)
    title, body                            the pull request
    pr_summary                             the model-written summary ("" until enhanced)
    relevant_files [{path, content}]       the files the PR modifies or removes, as they were at
                                           the parent of its first commit (added files excluded)
    commits [{message, refined_message, diffs [{path, patch}]}]
                                           in time order; ``patch`` is GitHub's per-file patch:
                                           the unified-diff hunks (``@@ ...``) without headers

forge_ray adds, all optional on read: ``id`` (stable sample id), ``source`` (parquet, git,
release), ``merged``, ``author``, per-diff ``status`` (added, modified, removed) and
``post_files`` [{path, content}] (every touched path's content after the PR; computed from the
patches when a source does not know it). daVinci-Dev's parquet files load as they are: unknown
columns are ignored, missing optional ones get their defaults.
"""
from __future__ import annotations

import hashlib
from typing import Any

ISSUE_FIELDS = ("title", "body", "comments")


def empty_issue() -> dict[str, Any]:
    return {"title": "", "body": "", "comments": []}


def sample_id(repo_name: str, key: str) -> str:
    """A short stable id for a PR of ``repo_name`` identified by ``key`` (a number, a sha, a version pair)."""
    return f"{repo_name}@{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _files(rows: Any) -> list[dict[str, str]]:
    return [{"path": _text(f.get("path")), "content": _text(f.get("content"))} for f in (rows or [])]


def _diff(d: dict[str, Any]) -> dict[str, str]:
    patch = _text(d.get("patch"))
    status = _text(d.get("status")) or ("added" if patch.startswith("@@ -0,0 ") else "modified")
    return {"path": _text(d.get("path")), "patch": patch, "status": status}


def normalize(row: dict[str, Any], source: str = "parquet") -> dict[str, Any]:
    """A record in the full schema from any row that has daVinci-Dev's fields (extra keys dropped,
    missing ones defaulted, ``None`` texts made ""). Raises ``ValueError`` naming a missing
    required field (``repo_name``, ``commits``)."""
    for required in ("repo_name", "commits"):
        if row.get(required) is None:
            raise ValueError(f"PR record lacks {required!r}")
    issue = row.get("related_issue")
    if issue:
        issue = {"title": _text(issue.get("title")), "body": _text(issue.get("body")),
                 "comments": [_text(c.get("body") if isinstance(c, dict) else c) for c in (issue.get("comments") or [])]}
    else:
        issue = None
    commits = [{"message": _text(c.get("message")), "refined_message": _text(c.get("refined_message")),
                "diffs": [_diff(d) for d in (c.get("diffs") or [])]} for c in row["commits"]]
    repo = _text(row["repo_name"])
    ident = _text(row.get("id")) or sample_id(repo, _text(row.get("number") or row.get("pr_number") or row.get("title")) + repr(len(commits)))
    merged = row.get("merged")
    return {
        "id": ident, "source": _text(row.get("source")) or source,
        "repo_name": repo, "repo_description": _text(row.get("repo_description")),
        "related_issue": issue, "title": _text(row.get("title")), "body": _text(row.get("body")),
        "pr_summary": _text(row.get("pr_summary")),
        "relevant_files": _files(row.get("relevant_files")), "commits": commits,
        "merged": True if merged is None else bool(merged), "author": _text(row.get("author")),
        "post_files": _files(row.get("post_files")) if row.get("post_files") is not None else None,
    }


def changed_paths(record: dict[str, Any]) -> list[str]:
    """Every path any commit of ``record`` touches, in first-touched order."""
    seen: dict[str, None] = {}
    for c in record["commits"]:
        for d in c["diffs"]:
            seen.setdefault(d["path"], None)
    return list(seen)
