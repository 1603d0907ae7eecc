"""Where pull requests come from: local git history, consecutive package releases, parquet files.

Every source yields records in the schema of ``forge_ray.data.schema`` (plain dicts).

**git** (``git_prs``) reads the first-parent history of ``HEAD``:

* a first-parent *merge* commit ``M`` is one merged pull request; its commits are those the merge
  brought in (``git rev-list --reverse --topo-order M^1..M^2``), oldest first. When those do not
  form one chain (the branch itself merged side branches), the first-parent line of ``M^2`` is
  used instead, so that each commit's diff starts where the previous one ended. The title is the
  merge subject, except for GitHub's ``Merge pull request #N from user/branch``, whose title is
  the first line of the message body (the body is the rest).
* *linear* stretches (non-merge first-parent commits) are cut into PR-like units: consecutive
  commits with the same author email, each authored within ``max_gap_hours`` of the previous
  one, at most ``max_unit_commits`` per unit; a merge commit ends a stretch. The title is the
  first commit's subject, the body the rest of its message.

A unit's base is the parent of its first commit (the empty tree for a root commit). Each commit
is diffed against its first parent (``git diff --no-renames -U3``), split per file; binary files
and submodules are not recorded (``has_binary`` says a unit touched a binary file), a type change
(file <-> symlink) is recorded as a modification. ``relevant_files`` are the text files that the
unit's *net* diff (base vs last commit) modifies or removes, as they were at base (at most 50);
``post_files`` is every recorded path's content at the last commit (removed paths omitted).

**releases** (``release_prs``) turns consecutive sdists of one package into one PR-like record
each: a single commit ``Release <pkg> <old> -> <new>`` holding ``make_patch`` per-file patches
of the text files, the title ``<pkg> <new>``, and as body the new version's changelog section.

**parquet** (``parquet_prs``) reads daVinci-Dev's own files through ``schema.normalize``.
"""
from __future__ import annotations

import email.parser
import glob
import hashlib
import logging
import os
import re
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from forge_ray.data.schema import normalize, sample_id

log = logging.getLogger(__name__)

MAX_RELEVANT_FILES = 50
MAX_RELEASE_FILE_BYTES = 1 << 20
_BINARY_PROBE = 8000  # git's own heuristic: a NUL byte in the first 8000 bytes means binary
_GITLINK = "160000"
_STATUS = {"A": "added", "M": "modified", "D": "removed", "T": "modified"}


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _is_binary(data: bytes) -> bool:
    return b"\0" in data[:_BINARY_PROBE]


# ----------------------------------------------------------------------------------------- git
class _Commit(NamedTuple):
    sha: str
    parents: list[str]
    author: str
    email: str
    time: int
    message: str


class _Entry(NamedTuple):
    """One line of ``git diff --raw``."""
    old_mode: str
    new_mode: str
    old_sha: str
    new_sha: str
    status: str
    path: str


class _Git:
    """Runs git in one repository; blob contents come from one long-lived ``cat-file --batch``."""

    def __init__(self, repo_dir: str | Path):
        self.repo = str(repo_dir)
        self._batch: subprocess.Popen | None = None
        self.env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_PAGER": "cat"}

    def run(self, *args: str, check: bool = True) -> bytes:
        cmd = ["git", "-C", self.repo, "-c", "core.quotePath=false", "-c", "diff.suppressBlankEmpty=false", *args]
        p = subprocess.run(cmd, capture_output=True, env=self.env)
        if check and p.returncode:
            raise RuntimeError(f"git {' '.join(args[:3])} failed in {self.repo}: {_text(p.stderr).strip()}")
        return p.stdout

    def read(self, name: str) -> bytes | None:
        """The blob named ``name`` (a sha or ``rev:path``), or None when there is no such blob."""
        if "\n" in name:  # the batch protocol is line-based
            p = subprocess.run(["git", "-C", self.repo, "cat-file", "blob", name], capture_output=True, env=self.env)
            return p.stdout if p.returncode == 0 else None
        if self._batch is None:
            self._batch = subprocess.Popen(["git", "-C", self.repo, "cat-file", "--batch"], env=self.env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._batch.stdin and self._batch.stdout
        self._batch.stdin.write(name.encode() + b"\n")
        self._batch.stdin.flush()
        header = self._batch.stdout.readline().split()
        if len(header) != 3:  # "<name> missing" / "ambiguous"
            return None
        data = self._batch.stdout.read(int(header[2]))
        self._batch.stdout.read(1)
        return data if header[1] == b"blob" else None

    def close(self) -> None:
        if self._batch is not None:
            assert self._batch.stdin
            self._batch.stdin.close()
            self._batch.wait()
            self._batch = None


def _log(git: _Git) -> dict[str, _Commit]:
    """Every commit reachable from HEAD, by sha."""
    fmt = "--format=%H%x00%P%x00%an%x00%ae%x00%at%x00%B"
    out = _text(git.run("log", "-z", "--no-show-signature", fmt, "HEAD")).split("\0")
    commits = {}
    for i in range(0, len(out) - 5, 6):
        sha, parents, name, mail, when, message = out[i:i + 6]
        commits[sha] = _Commit(sha, parents.split(), name, mail, int(when), message.rstrip("\n"))
    return commits


def _parse_raw(data: bytes) -> tuple[list[_Entry], bytes]:
    """The ``--raw -z`` entries at the start of ``data``, and what follows them (the patch)."""
    entries, pos = [], 0
    while data.startswith(b":", pos):
        meta_end = data.index(b"\0", pos)
        path_end = data.index(b"\0", meta_end + 1)
        old_mode, new_mode, old_sha, new_sha, status = _text(data[pos + 1:meta_end]).split()
        entries.append(_Entry(old_mode, new_mode, old_sha, new_sha, status[0], _text(data[meta_end + 1:path_end])))
        pos = path_end + 1
    if data.startswith(b"\0", pos):
        pos += 1
    return entries, data[pos:]


_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def _unquote(s: str) -> str:
    """A C-style quoted git path (``"a/we\\"ird"``) as text, up to its closing quote."""
    out, i = bytearray(), 1
    while i < len(s) and s[i] != '"':
        if s[i] == "\\" and i + 1 < len(s):
            if s[i + 1] in "01234567":
                out.append(int(s[i + 1:i + 4], 8) & 0xFF)
                i += 4
                continue
            out.append(_ESCAPES.get(s[i + 1], ord(s[i + 1]) & 0xFF))
            i += 2
            continue
        out += s[i].encode()
        i += 1
    return _text(bytes(out))


def _header_path(header: str) -> str:
    """The path of a ``diff --git a/P b/P`` header line (without ``diff --git ``); no renames."""
    if header.startswith('"'):
        return _unquote(header)[2:]
    return header[2:2 + (len(header) - 5) // 2]


def _file_patches(patch: str) -> dict[str, tuple[str, bool]]:
    """Per path: the hunks of its (first) section without headers, and whether it is binary."""
    out: dict[str, tuple[str, bool]] = {}
    for chunk in re.split(r"(?m)^diff --git ", patch)[1:]:
        header, _, rest = chunk.partition("\n")
        lines = rest.split("\n")
        first = next((i for i, line in enumerate(lines) if line.startswith("@@")), None)
        binary = first is None and any(line.startswith(("Binary files ", "GIT binary patch")) for line in lines)
        hunks = "" if first is None else "\n".join(lines[first:])
        out.setdefault(_header_path(header), (hunks[:-1] if hunks.endswith("\n") else hunks, binary))
    return out


def _commit_diffs(git: _Git, parent: str, sha: str) -> tuple[list[dict[str, str]], bool]:
    """The per-file diffs of ``parent`` -> ``sha`` and whether a binary file was among them."""
    out = git.run("diff", "--raw", "-p", "-z", "--no-renames", "--no-abbrev", "-U3", "--no-color",
                  "--no-ext-diff", "--no-textconv", "--submodule=short", "--src-prefix=a/", "--dst-prefix=b/",
                  parent, sha, "--")
    entries, rest = _parse_raw(out)
    patches = _file_patches(_text(rest))
    diffs, has_binary = [], False
    for e in entries:
        if _GITLINK in (e.old_mode, e.new_mode):
            continue
        status = _STATUS.get(e.status)
        if e.status == "T":  # shown as a removal plus an addition: one modification instead
            from forge_ray.data.patch import make_patch

            old, new = git.read(e.old_sha) or b"", git.read(e.new_sha) or b""
            binary = _is_binary(old) or _is_binary(new)
            hunks = "" if binary else make_patch(_text(old), _text(new))
        else:
            hunks, binary = patches.get(e.path, ("", False))
        has_binary |= binary
        if binary or status is None or (not hunks and status == "modified"):
            continue  # binary, unmerged, or a mode-only change
        diffs.append({"path": e.path, "patch": hunks, "status": status})
    return diffs, has_binary


def _files_of_unit(git: _Git, base: str, last: str, touched: list[str]) -> tuple[list, list]:
    """``relevant_files`` (net modified/removed text files at ``base``) and ``post_files``."""
    entries, _ = _parse_raw(git.run("diff", "--raw", "-z", "--no-renames", "--no-abbrev", base, last, "--"))
    keep = set(touched)
    relevant = []
    for e in entries:
        if e.status in "MDT" and e.path in keep and _GITLINK not in (e.old_mode, e.new_mode):
            data = git.read(e.old_sha)
            if data is not None and not _is_binary(data):
                relevant.append({"path": e.path, "content": _text(data)})
        if len(relevant) >= MAX_RELEVANT_FILES:
            break
    post = []
    for path in touched:
        data = git.read(f"{last}:{path}")
        if data is not None:
            post.append({"path": path, "content": _text(data)})
    return relevant, post


def _chain(commits: dict[str, _Commit], merge: _Commit, git: _Git) -> list[str]:
    """The commits merge ``merge`` brought in, oldest first, as one first-parent chain."""
    side = _text(git.run("rev-list", "--reverse", "--topo-order", f"{merge.parents[0]}..{merge.parents[1]}")).split()
    if all(commits[b].parents[:1] == [a] for a, b in zip(side, side[1:])):
        return side
    members, line, sha = set(side), [], merge.parents[1]
    while sha in members:
        line.append(sha)
        sha = commits[sha].parents[0] if commits[sha].parents else ""
    return line[::-1]


def _split_message(message: str) -> tuple[str, str]:
    subject, _, body = message.strip().partition("\n")
    return subject.strip(), body.strip()


def _merge_title(message: str) -> tuple[str, str]:
    """Title and body of a merge: GitHub's ``Merge pull request #N`` keeps the title in its body."""
    subject, body = _split_message(message)
    if re.match(r"Merge pull request #\d+ from ", subject) and body:
        return _split_message(body)
    return subject, body


def _units(commits: dict[str, _Commit], first_parent: list[str], git: _Git,
           max_unit_commits: int, max_gap_hours: float) -> Iterator[tuple[list[str], str, str]]:
    """(commit shas, title, body) of every PR-like unit along the first-parent history."""
    unit: list[str] = []
    for sha in first_parent + [""]:
        c = commits.get(sha)
        if unit and (c is None or len(c.parents) > 1 or len(unit) >= max_unit_commits
                     or c.email != commits[unit[-1]].email
                     or abs(c.time - commits[unit[-1]].time) > max_gap_hours * 3600):
            yield (unit, *_split_message(commits[unit[0]].message))
            unit = []
        if c is None:
            break
        if len(c.parents) > 1:
            shas = _chain(commits, c, git)
            if shas:
                yield (shas, *_merge_title(c.message))
        else:
            unit.append(sha)


def _git_record(git: _Git, commits: dict[str, _Commit], shas: list[str], empty_tree: str,
                repo_name: str, description: str, title: str, body: str) -> dict[str, Any]:
    first = commits[shas[0]]
    base = first.parents[0] if first.parents else empty_tree
    out_commits, touched, has_binary = [], {}, False
    for sha in shas:
        c = commits[sha]
        diffs, binary = _commit_diffs(git, c.parents[0] if c.parents else empty_tree, sha)
        has_binary |= binary
        touched.update((d["path"], None) for d in diffs)
        out_commits.append({"message": c.message, "refined_message": "", "diffs": diffs})
    relevant, post = _files_of_unit(git, base, shas[-1], list(touched))
    record = normalize({
        "id": sample_id(repo_name, shas[0]), "repo_name": repo_name, "repo_description": description,
        "title": title, "body": body, "commits": out_commits, "relevant_files": relevant,
        "post_files": post, "merged": True, "author": f"{first.author} <{first.email}>",
    }, "git")
    record["has_binary"] = has_binary
    return record


def git_prs(repo_dir: str | Path, repo_name: str | None = None, description: str = "",
            max_unit_commits: int = 5, max_gap_hours: float = 6.0) -> Iterator[dict[str, Any]]:
    """Pull requests (merges) and PR-like units (linear stretches) of a local git repository's
    first-parent history of HEAD, oldest first; see the module docstring for the rules."""
    repo_dir = Path(repo_dir)
    repo_name = repo_name or repo_dir.resolve().name
    git = _Git(repo_dir)
    if not git.run("rev-parse", "--verify", "-q", "HEAD", check=False).strip():
        return  # no commits yet
    try:
        commits = _log(git)
        first_parent = _text(git.run("rev-list", "--first-parent", "--reverse", "HEAD")).split()
        empty_tree = _text(git.run("hash-object", "-t", "tree", os.devnull)).strip()
        for shas, title, body in _units(commits, first_parent, git, max_unit_commits, max_gap_hours):
            yield _git_record(git, commits, shas, empty_tree, repo_name, description, title, body)
    finally:
        git.close()


# ------------------------------------------------------------------------------------ releases
_SDIST_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


def canonical_name(name: str) -> str:
    """A package name compared the PEP 503 way: case and runs of ``-_.`` do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_sdist_name(path: str | Path) -> tuple[str, str] | None:
    """(package, version) from an sdist file name (``toolz-0.12.1.tar.gz``), or None."""
    from packaging.version import InvalidVersion, Version

    name = Path(path).name
    suffix = next((s for s in _SDIST_SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        return None
    stem = name[:-len(suffix)]
    for i in [m.start() for m in re.finditer("-", stem)][::-1]:
        try:
            Version(stem[i + 1:])
        except InvalidVersion:
            continue
        return stem[:i], stem[i + 1:]
    return None


def group_releases(paths: list[str | Path]) -> dict[str, list[Path]]:
    """sdists by canonical package name, each list in version order (one file per version,
    ``.tar.gz`` preferred); files whose names are not ``<name>-<version>.<sdist suffix>`` are skipped."""
    from packaging.version import Version

    by_version: dict[str, dict[Version, Path]] = {}
    for path in sorted(map(Path, paths), key=lambda p: (not p.name.endswith(".tar.gz"), p.name)):
        parsed = parse_sdist_name(path)
        if parsed is None:
            log.warning("not an sdist name, skipped: %s", path)
            continue
        by_version.setdefault(canonical_name(parsed[0]), {}).setdefault(Version(parsed[1]), path)
    return {pkg: [versions[v] for v in sorted(versions)] for pkg, versions in sorted(by_version.items())}


def _safe_parts(name: str) -> list[str]:
    """The path components of archive member ``name``; ValueError when it would leave the folder."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise ValueError(f"archive member with an absolute path: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"archive member leaving the archive: {name!r}")
    return parts


def extract_sdist(path: str | Path, dest: str | Path) -> Path:
    """Extracts an sdist's regular files under ``dest`` without its top-level ``pkg-ver/`` folder
    (links and devices skipped); refuses (ValueError) absolute member paths and ``..``."""
    path, dest = Path(path), Path(dest)
    members: list[tuple[list[str], Any]] = []
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                members.append((_safe_parts(info.filename.replace("\\", "/")), None if info.is_dir() else info))
            _write_members(members, dest, zf.read)
    else:
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                members.append((_safe_parts(m.name), m if m.isfile() else None))
            _write_members(members, dest, lambda m: tf.extractfile(m).read())
    return dest


def _write_members(members: list[tuple[list[str], Any]], dest: Path, read) -> None:
    tops = {parts[0] for parts, _ in members if parts}
    strip = len(tops) == 1 and all(len(parts) > 1 or m is None for parts, m in members if parts)
    for parts, member in members:
        parts = parts[1:] if strip else parts
        if member is None or not parts:
            continue
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read(member))


def _read_tree(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Text files under ``root`` (path -> text) and the skipped binary/large ones (path -> hash);
    PKG-INFO and ``*.egg-info/`` are left out altogether."""
    texts, skipped = {}, {}
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root).as_posix()
        if not file.is_file() or file.is_symlink() or file.name == "PKG-INFO" \
                or any(p.endswith(".egg-info") for p in rel.split("/")[:-1]):
            continue
        data = file.read_bytes()
        if len(data) > MAX_RELEASE_FILE_BYTES or _is_binary(data):
            skipped[rel] = hashlib.sha1(data).hexdigest()
        else:
            texts[rel] = _text(data)
    return texts, skipped


def _pkg_info(root: Path) -> dict[str, str]:
    file = root / "PKG-INFO"
    if not file.is_file():
        return {}
    msg = email.parser.HeaderParser().parsestr(_text(file.read_bytes()))
    return {k: str(msg.get(k, "")).strip() for k in ("Name", "Version", "Summary")}


# ----------------------------------------------------------------------------------- changelog
_CHANGELOG = re.compile(r"(CHANGELOG|CHANGES|HISTORY|NEWS|RELEASE[\w-]*)(\.(md|rst|txt))?", re.I)
_ATX = re.compile(r"(#{1,6})\s+\S")
_PLAIN = re.compile(r"\s*(?:(?:version|release)\s+)?\[?v?\d+(?:\.\d+)+[\w.+-]*\]?"
                    r"(?:\s*(?:\(.*\)|[-\u2013\u2014:,].*|\d{4}-\d\d-\d\d.*))?\s*", re.I)


def _adornment(line: str) -> str | None:
    s = line.rstrip()
    if len(s) >= 3 and not s[0].isalnum() and not s[0].isspace() and s == s[0] * len(s):
        return s[0]
    return None


def _headings(lines: list[str]) -> list[tuple[int, int, str, int]]:
    """(first line, title line, family, level) of each heading: Markdown ``#`` (level = number of
    ``#``), RST/setext under- or overlines (level = order of first appearance of the style) and
    plain ``Version X`` / ``X (date)`` lines (family "plain", level 0)."""
    out, styles, fence, skip = [], [], False, -1
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        if fence or i <= skip or not line.strip():
            continue
        prev_blank = i == 0 or not lines[i - 1].strip() or _adornment(lines[i - 1]) is not None
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        char = _adornment(line)
        if char and i + 2 < len(lines) and lines[i + 1].strip() and _adornment(lines[i + 2]) == char:
            style, title, skip = (char, True), i + 1, i + 2
        elif not char and prev_blank and _adornment(nxt):
            style, title, skip = (_adornment(nxt), False), i, i + 1
        else:
            m = _ATX.match(line)
            if m:
                out.append((i, i, "md", len(m.group(1))))
            elif _PLAIN.fullmatch(line):
                out.append((i, i, "plain", 0))
            continue
        if style not in styles:
            styles.append(style)
        out.append((i, title, "rst", styles.index(style) + 1))
    return out


def changelog_section(text: str, version: str) -> str:
    """The section of changelog ``text`` documenting ``version``: from the heading line that
    names it to the next heading of the same kind (Markdown, RST, plain) at its level or above;
    "" when there is none."""
    from packaging.version import InvalidVersion, Version

    names = {version}
    try:
        names.add(str(Version(version)))
    except InvalidVersion:
        pass
    token = re.compile(r"(?<![\w.])v?(?:%s)(?!\w|\.\w)" % "|".join(map(re.escape, names)))
    lines = text.splitlines()
    heads = _headings(lines)
    for n, (start, title, family, level) in enumerate(heads):
        if not token.search(lines[title]):
            continue
        end = next((s for s, _, f, lv in heads[n + 1:] if f == family and lv <= level), len(lines))
        return "\n".join(lines[start:end]).strip("\n").rstrip()
    return ""


def release_notes(files: dict[str, str], version: str) -> str:
    """``version``'s changelog section from the first changelog file (top level, then ``docs/``)
    that has one."""
    def is_log(path: str) -> bool:
        folder, _, name = path.rpartition("/")
        return folder in ("", "docs", "doc") and bool(_CHANGELOG.fullmatch(name))

    for path in sorted(filter(is_log, files), key=lambda p: (p.count("/"), p.lower())):
        section = changelog_section(files[path], version)
        if section:
            return section
    return ""


def _release_record(name: str, old: tuple, new: tuple) -> dict[str, Any]:
    """One record from the (version, texts, skipped, pkg-info) of two consecutive releases."""
    from forge_ray.data.patch import make_patch

    (v_old, t_old, s_old, _), (v_new, t_new, s_new, info) = old, new
    excluded = set(s_old) | set(s_new)
    diffs, relevant, post = [], [], []
    for path in sorted((set(t_old) | set(t_new)) - excluded):
        a, b = t_old.get(path), t_new.get(path)
        if a == b:
            continue
        status = "added" if a is None else "removed" if b is None else "modified"
        diffs.append({"path": path, "patch": make_patch(a or "", b or ""), "status": status})
        if a is not None and len(relevant) < MAX_RELEVANT_FILES:
            relevant.append({"path": path, "content": a})
        if b is not None:
            post.append({"path": path, "content": b})
    summary = info.get("Summary", "")
    record = normalize({
        "id": sample_id(name, f"{v_old}->{v_new}"), "repo_name": name,
        "repo_description": "" if summary == "UNKNOWN" else summary,
        "title": f"{name} {v_new}", "body": release_notes(t_new, v_new), "relevant_files": relevant,
        "commits": [{"message": f"Release {name} {v_old} -> {v_new}", "diffs": diffs}],
        "post_files": post, "merged": True, "author": "",
    }, "release")
    record["has_binary"] = any(s_old.get(p) != s_new.get(p) for p in excluded)
    return record


def release_prs(dists: list[str | Path], package: str | None = None) -> Iterator[dict[str, Any]]:
    """One PR-like record per pair of consecutive releases (by version) of a package's sdists;
    ``package`` picks one package from ``dists`` (default: every package found)."""
    groups = group_releases(dists)
    if package is not None:
        groups = {k: v for k, v in groups.items() if k == canonical_name(package)}
    for paths in groups.values():
        prev = None
        for path in paths:
            file_name, version = parse_sdist_name(path)
            with tempfile.TemporaryDirectory(prefix="forge_ray_sdist_") as tmp:
                root = extract_sdist(path, tmp)
                texts, skipped = _read_tree(root)
                info = _pkg_info(root)
            current = (version, texts, skipped, info)
            if prev is not None:
                yield _release_record(info.get("Name") or file_name, prev, current)
            prev = current


# ------------------------------------------------------------------------------------- parquet
_PARQUET_COLUMNS = ("id", "source", "repo_name", "repo_description", "related_issue", "title", "body",
                    "pr_summary", "relevant_files", "commits", "merged", "author", "post_files",
                    "number", "pr_number")


def _parquet_files(path_or_glob: str | Path) -> list[Path]:
    path = Path(path_or_glob)
    if path.is_dir():
        return sorted(path.rglob("*.parquet"))
    if any(ch in str(path_or_glob) for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(str(path_or_glob), recursive=True))
    if not path.exists():
        raise FileNotFoundError(path)
    return [path]


def parquet_prs(path_or_glob: str | Path, batch_size: int = 256) -> Iterator[dict[str, Any]]:
    """Rows of daVinci-Dev-schema parquet files (a file, a folder, or a glob) as records; only the
    schema's columns are read. A malformed row raises ValueError naming its file and row."""
    import pyarrow.parquet as pq

    for file in _parquet_files(path_or_glob):
        pf = pq.ParquetFile(file)
        columns = [c for c in pf.schema_arrow.names if c in _PARQUET_COLUMNS]
        row = 0
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            for item in batch.to_pylist():
                try:
                    yield normalize(item, "parquet")
                except (ValueError, TypeError, AttributeError, KeyError) as e:
                    raise ValueError(f"{file}: row {row}: malformed PR record: {e}") from e
                row += 1
