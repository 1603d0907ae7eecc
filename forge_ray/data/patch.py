"""GitHub-style per-file patches: parse, apply strictly, and make them.

A patch is what GitHub's API gives as a file's ``patch``: unified-diff hunks with no ``---``/``+++``
headers, lines joined by ``\\n`` (a final ``\\n`` is optional)::

    @@ -12,4 +12,5 @@ optional section heading
     context line
    -removed line
    +added line
    \\ No newline at end of file

The header is ``@@ -old_start,old_len +new_start,new_len @@`` (``,len`` omitted when it is 1; with a
length of 0 the start is the line *after which* the hunk sits, so an added file is ``@@ -0,0 +1,n @@``).
A ``\\ No newline at end of file`` line says that the line before it is its file's last and has no
line ending; it follows a ``-`` line (the old file), a ``+`` line (the new one) or a context line
(both). Texts are split into lines at ``\\n`` only, so ``\\r`` stays part of a line.

Pure functions, standard library only.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

NO_NEWLINE = "\\ No newline at end of file"
_HEADER = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


class PatchError(ValueError):
    """A patch that does not parse, or does not apply to the text it is applied to."""


@dataclass
class Hunk:
    """One ``@@`` hunk: its header numbers, its lines with their ``' '``, ``'-'``, ``'+'`` prefix (no
    line ending) and, in ``no_newline`` (parallel to ``lines``), whether each is followed by the
    no-newline marker."""

    old_start: int
    old_len: int
    new_start: int
    new_len: int
    lines: list[str] = field(default_factory=list)
    no_newline: list[bool] = field(default_factory=list)

    def _side(self, keep: str) -> list[str]:
        return [line[1:] + ("" if eol else "\n")
                for line, eol in zip(self.lines, self.no_newline) if line[0] in keep]

    def old_lines(self) -> list[str]:
        """The old file's lines this hunk covers (context and removed), with their line endings."""
        return self._side(" -")

    def new_lines(self) -> list[str]:
        """The new file's lines this hunk covers (context and added), with their line endings."""
        return self._side(" +")

    def old_index(self) -> int:
        """0-based index in the old file where the hunk's old lines start (or where it inserts)."""
        return self.old_start - 1 if self.old_len else self.old_start


def split_lines(text: str) -> list[str]:
    """``text``'s lines, each keeping its ``\\n`` (the last one may lack it); ``[]`` for ``""``."""
    lines = text.split("\n")
    last = lines.pop()
    return [line + "\n" for line in lines] + ([last] if last else [])


def _header(line: str) -> Hunk:
    m = _HEADER.match(line)
    if not m:
        raise PatchError(f"bad hunk header: {line[:80]!r}")
    a, b, c, d = m.groups()
    return Hunk(int(a), 1 if b is None else int(b), int(c), 1 if d is None else int(d))


def _read_body(hunk: Hunk, rows: list[str], i: int) -> int:
    """Reads ``hunk``'s lines from ``rows[i:]`` until its counts are met; returns the next index."""
    old, new = hunk.old_len, hunk.new_len
    while old > 0 or new > 0:
        if i >= len(rows):
            raise PatchError("hunk is shorter than its header says")
        row = rows[i] or " "  # an empty row is an empty context line whose space was stripped
        i += 1
        if row.startswith("\\"):
            _mark(hunk)
            continue
        kind = row[0]
        if kind not in " -+" or (kind != "+" and old == 0) or (kind != "-" and new == 0):
            raise PatchError(f"unexpected hunk line: {row[:80]!r}")
        old -= kind != "+"
        new -= kind != "-"
        hunk.lines.append(row)
        hunk.no_newline.append(False)
    if i < len(rows) and rows[i].startswith("\\"):
        _mark(hunk)
        i += 1
    return i


def _mark(hunk: Hunk) -> None:
    if not hunk.lines or hunk.no_newline[-1]:
        raise PatchError("misplaced no-newline marker")
    hunk.no_newline[-1] = True


def parse_hunks(patch: str) -> list[Hunk]:
    """The hunks of a GitHub-style patch, in order (``[]`` for an empty patch). Raises
    ``PatchError`` on anything that is not a well-formed hunk."""
    rows = patch.split("\n")
    hunks: list[Hunk] = []
    i = 0
    while i < len(rows):
        if not rows[i] and all(not r for r in rows[i:]):
            break  # trailing newline(s)
        hunk = _header(rows[i])
        i = _read_body(hunk, rows, i + 1)
        hunks.append(hunk)
    return hunks


def apply_patch(old: str, patch: str) -> str:
    """``old`` with ``patch`` applied. Strict: each hunk's context and removed lines must equal the
    old text's lines at the hunk's stated position, line endings included (so a no-newline marker
    must match the text's missing final newline); hunks must come in order without overlapping.
    Raises ``PatchError`` otherwise. ``apply_patch("", p)`` builds an added file; a patch removing
    every line gives ``""``."""
    lines = split_lines(old)
    out: list[str] = []
    pos = 0
    for n, hunk in enumerate(parse_hunks(patch), 1):
        at, want = hunk.old_index(), hunk.old_lines()
        if at < pos or lines[at:at + len(want)] != want:
            raise PatchError(f"hunk {n} (@@ -{hunk.old_start},{hunk.old_len}) does not match the text")
        out += lines[pos:at] + hunk.new_lines()
        pos = at + len(want)
    out += lines[pos:]
    text = "".join(out)
    if any(not line.endswith("\n") for line in out[:-1]):
        raise PatchError("a line without a newline is not the last one")
    return text


def _range(start: int, stop: int) -> str:
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def _rows(prefix: str, lines: list[str]) -> list[str]:
    rows = []
    for line in lines:
        rows.append(prefix + (line[:-1] if line.endswith("\n") else line))
        if not line.endswith("\n"):
            rows.append(NO_NEWLINE)
    return rows


def make_patch(old: str, new: str, context: int = 3) -> str:
    """The GitHub-style patch (no headers, no final newline, ``""`` when the texts are equal) that
    turns ``old`` into ``new``, with ``context`` lines of context and no-newline markers, so that
    ``apply_patch(old, make_patch(old, new)) == new``."""
    a, b = split_lines(old), split_lines(new)
    rows: list[str] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        rows.append(f"@@ -{_range(i1, i2)} +{_range(j1, j2)} @@")
        for tag, x1, x2, y1, y2 in group:
            if tag == "equal":
                rows += _rows(" ", a[x1:x2])
                continue
            rows += _rows("-", a[x1:x2]) + _rows("+", b[y1:y2])
    return "\n".join(rows)
