#!/usr/bin/python3
"""``edit_via_str_replace``: the SWE environment's one editing tool, a standalone script.

    edit_via_str_replace FILE -- OLD NEW

replaces the text OLD in FILE by NEW, but only when OLD occurs exactly once (overlapping
occurrences count). Exit codes: 0 edited (prints the edited region with line numbers and 3
lines of context), 1 usage or I/O error, 2 OLD not found, 3 OLD found several times (prints
the line number of each occurrence). The write is atomic: a temp file in the same directory,
then ``os.replace``; the file's permission bits are kept.

Standard library only, no imports from this repository: the environment puts a copy of this
file on PATH inside the sandbox, where only ``/usr/bin/python3`` exists. The file's bytes are
kept as they are (``surrogateescape``, no newline translation), so non-UTF-8 bytes and CRLF
line ends survive an edit.
"""
from __future__ import annotations

import os
import sys
import tempfile

USAGE = "usage: edit_via_str_replace FILE -- OLD NEW"
CONTEXT_LINES = 3
EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_SEVERAL = 0, 1, 2, 3
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}


def occurrences(text: str, old: str) -> list[int]:
    """Start offsets of every occurrence of ``old`` in ``text``, overlapping ones included
    (``aa`` in ``aaa`` is two occurrences: replacing "the" one would be a guess)."""
    found, start = [], text.find(old)
    while start != -1:
        found.append(start)
        start = text.find(old, start + 1)
    return found


def line_of(text: str, offset: int) -> int:
    """1-based line number of character ``offset``."""
    return text.count("\n", 0, offset) + 1


def printable(text: str) -> str:
    """``text`` with the undecodable bytes it carries (surrogate escapes) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def snippet(text: str, first: int, last: int, context: int = CONTEXT_LINES) -> str:
    """Lines ``first..last`` (1-based) of ``text`` with ``context`` lines around, numbered
    like ``cat -n``."""
    lines = text.split("\n")
    if lines and lines[-1] == "" and text.endswith("\n"):
        lines.pop()   # the empty string after the final newline is not a line
    lo, hi = max(1, first - context), min(len(lines), last + context)
    return "\n".join(f"{n:6d}\t{lines[n - 1]}" for n in range(lo, hi + 1))


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in its directory and ``os.replace``,
    so a reader (or a crash) never sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=".edit-", dir=directory)
    try:
        with os.fdopen(fd, "w", **_ENCODING) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def parse_args(argv: list[str]) -> tuple[str, str, str] | None:
    """``FILE -- OLD NEW`` (the ``--`` may be left out); None when the shape is wrong."""
    if len(argv) == 4 and argv[1] == "--":
        return argv[0], argv[2], argv[3]
    if len(argv) == 3 and "--" not in argv:
        return argv[0], argv[1], argv[2]
    return None


def edit(path: str, old: str, new: str, out=None, err=None) -> int:
    """Replace the single occurrence of ``old`` in ``path`` by ``new``; returns the exit code.
    Messages go to ``out``/``err`` (default: the current sys.stdout/sys.stderr)."""
    out, err = out or sys.stdout, err or sys.stderr
    shown = printable(path)
    if old == "":
        print("error: OLD is empty; give the exact text to replace", file=err)
        return EXIT_USAGE
    real = os.path.realpath(path)   # edit the target of a symlink, keep the link
    try:
        with open(real, **_ENCODING) as f:
            text = f.read()
    except (OSError, UnicodeError) as e:
        print(f"error: cannot read {shown}: {e.strerror if isinstance(e, OSError) else e}", file=err)
        return EXIT_USAGE
    found = occurrences(text, old)
    if not found:
        print(f"error: OLD not found in {shown}; nothing was changed. Check whitespace and "
              "indentation (view the lines with: nl -ba FILE | sed -n 'A,Bp')", file=err)
        return EXIT_NOT_FOUND
    if len(found) > 1:
        lines = ", ".join(str(line_of(text, at)) for at in found)
        print(f"error: OLD occurs {len(found)} times in {shown}, starting at lines {lines}; nothing "
              "was changed. Add surrounding lines to OLD so that it occurs exactly once", file=err)
        return EXIT_SEVERAL
    at = found[0]
    result = text[:at] + new + text[at + len(old):]
    try:
        atomic_write(real, result)
    except OSError as e:
        print(f"error: cannot write {shown}: {e.strerror}", file=err)
        return EXIT_USAGE
    first = line_of(result, at)
    last = first + new.count("\n")
    print(f"The file {shown} has been edited successfully.", file=out)
    print("The edited lines, with line numbers and context:", file=out)
    print(printable(snippet(result, first, last)), file=out)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    if args is None:
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    return edit(*args)


if __name__ == "__main__":
    sys.exit(main())
