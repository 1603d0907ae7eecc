"""GitHub-style per-file patches (forge_ray.data.patch): parsing, strict application, and the
make_patch/apply_patch round trip."""
from __future__ import annotations

import random

import pytest

from forge_ray.data.patch import Hunk, PatchError, apply_patch, make_patch, parse_hunks, split_lines

GITHUB_PATCH = """@@ -1,4 +1,5 @@ def main():
 import os
-import sys
+import sys, re
+import json
 
 x = 1
@@ -9,2 +10,2 @@ class A:
 def f():
-    return 1
\\ No newline at end of file
+    return 2
\\ No newline at end of file"""

OLD = "import os\nimport sys\n\nx = 1\n\n\n\n\ndef f():\n    return 1"
NEW = "import os\nimport sys, re\nimport json\n\nx = 1\n\n\n\n\ndef f():\n    return 2"


def test_parse_hunks_reads_headers_lines_and_markers():
    first, second = parse_hunks(GITHUB_PATCH)
    assert (first.old_start, first.old_len, first.new_start, first.new_len) == (1, 4, 1, 5)
    assert first.lines == [" import os", "-import sys", "+import sys, re", "+import json", " ", " x = 1"]
    assert not any(first.no_newline)
    assert second.lines == [" def f():", "-    return 1", "+    return 2"]
    assert second.no_newline == [False, True, True]
    assert second.old_lines() == ["def f():\n", "    return 1"]
    assert second.new_lines() == ["def f():\n", "    return 2"]
    assert parse_hunks("") == []
    assert parse_hunks("@@ -3 +3 @@\n-a\n+b\n") == [Hunk(3, 1, 3, 1, ["-a", "+b"], [False, False])]


def test_apply_a_github_patch():
    assert apply_patch(OLD, GITHUB_PATCH) == NEW
    assert apply_patch(OLD, GITHUB_PATCH + "\n") == NEW  # a final newline on the patch is optional


def test_a_context_line_whose_space_was_stripped_still_counts():
    assert apply_patch("a\n\nb\n", "@@ -1,3 +1,3 @@\n a\n\n-b\n+c") == "a\n\nc\n"


def test_added_and_removed_files():
    assert apply_patch("", "@@ -0,0 +1,2 @@\n+x\n+y") == "x\ny\n"
    assert apply_patch("", "@@ -0,0 +1 @@\n+x\n\\ No newline at end of file") == "x"
    assert apply_patch("x\ny\n", "@@ -1,2 +0,0 @@\n-x\n-y") == ""
    assert apply_patch("x", "@@ -1 +0,0 @@\n-x\n\\ No newline at end of file") == ""


@pytest.mark.parametrize("old, patch", [
    ("a\nb\nc\n", "@@ -1,2 +1,2 @@\n a\n-c\n+d"),              # removed line differs
    ("a\nb\nc\n", "@@ -2,2 +2,2 @@\n a\n-b\n+d"),              # right lines, wrong position
    ("a\nb", "@@ -2 +2 @@\n-b\n+c"),                            # text lacks the final newline the patch has
    ("a\nb\n", "@@ -2 +2 @@\n-b\n\\ No newline at end of file\n+c"),  # and the other way round
    ("a\nb\nc\n", "@@ -2 +2 @@\n-b\n+B\n@@ -1 +1 @@\n-a\n+A"),  # hunks out of order
    ("a\n", "@@ -1 +1 @@\n-a\n+b\n@@ -1 +1 @@\n-a\n+c"),       # overlapping hunks
    ("a\nb\n", "@@ -1 +1 @@\n-a\n+x\n\\ No newline at end of file"),  # a no-newline line that is not last
    ("a\n", "@@ -1 +1 @@\n-a"),                                  # hunk shorter than its header
    ("a\n", "@@ -1 +1 @@\n-a\n+b\n+c"),                          # longer than its header
    ("a\n", "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b"),            # file headers are not GitHub's format
    ("a\n", "@@ -1 +1 @@\n-a\n\\ No newline at end of file\n\\ No newline at end of file\n+b"),
    ("a\n", "@@ -1 +1 @@\n*a\n+b"),
])
def test_apply_is_strict(old, patch):
    with pytest.raises(PatchError):
        apply_patch(old, patch)


def test_make_patch_formats_like_git():
    # what `git diff` prints for these texts, less its headers and the hunk section heading
    assert make_patch(OLD, NEW) == "\n".join([
        "@@ -1,5 +1,6 @@", " import os", "-import sys", "+import sys, re", "+import json", " ", " x = 1", " ",
        "@@ -7,4 +8,4 @@", " ", " ", " def f():", "-    return 1", "\\ No newline at end of file",
        "+    return 2", "\\ No newline at end of file"])
    assert make_patch("same\n", "same\n") == ""
    assert make_patch("", "") == ""
    assert make_patch("", "x") == "@@ -0,0 +1 @@\n+x\n\\ No newline at end of file"
    assert make_patch("x\n", "") == "@@ -1 +0,0 @@\n-x"
    assert make_patch("a\nb\nc\n", "a\nc\n", context=0) == "@@ -2 +1,0 @@\n-b"
    assert make_patch("a\nc\n", "a\nb\nc\n", context=0) == "@@ -1,0 +2 @@\n+b"


_LINES = ["a", "b", "c", "", " ", "def f():", "    return 1", "x\r", "\\ tricky", "@@ -1 +1 @@", "-", "+"]


def _random_text(rng: random.Random, max_lines: int = 12) -> str:
    text = "\n".join(rng.choice(_LINES) for _ in range(rng.randint(0, max_lines)))
    return text + "\n" if text and rng.random() < 0.6 else text


def _mutate(rng: random.Random, text: str) -> str:
    lines = split_lines(text)
    for _ in range(rng.randint(0, 4)):
        op, i = rng.random(), rng.randint(0, len(lines))
        if op < 0.4:
            lines.insert(i, rng.choice(_LINES) + "\n")
        elif lines and op < 0.7:
            del lines[min(i, len(lines) - 1)]
        elif lines:
            lines[min(i, len(lines) - 1)] = rng.choice(_LINES) + "\n"
    out = "".join(lines)
    return out[:-1] if out.endswith("\n") and rng.random() < 0.3 else out


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_on_random_texts(seed):
    rng = random.Random(seed)
    for n in range(1500):
        old = _random_text(rng)
        new = _random_text(rng) if n % 3 == 0 else _mutate(rng, old)
        if n % 10 == 0:
            old, new = ("", new) if n % 20 == 0 else (old, "")
        context = rng.choice([0, 1, 3])
        patch = make_patch(old, new, context)
        assert apply_patch(old, patch) == new, (old, new, patch)
        assert (patch == "") == (old == new)
        for hunk in parse_hunks(patch):
            assert len(hunk.old_lines()) == hunk.old_len and len(hunk.new_lines()) == hunk.new_len


def test_split_lines():
    assert split_lines("") == []
    assert split_lines("a") == ["a"]
    assert split_lines("a\n") == ["a\n"]
    assert split_lines("a\r\n\nb") == ["a\r\n", "\n", "b"]
