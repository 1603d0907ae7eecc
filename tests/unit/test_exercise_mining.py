"""The exercise miner (envs/exercises/mine.py) on a tiny package built here, with the real sandbox.

The sandboxed cases skip only where bubblewrap cannot start (forge_ray.env.sandbox.bwrap_problem).
"""
from __future__ import annotations

import ast
import json
import textwrap
from pathlib import Path

import pytest

from envs.exercises import ExerciseTasks, load_exercises, run_exercise_tests
from envs.exercises.mine import Layout, MineConfig, MiningError, mine_exercises, stub_function
from envs.exercises.mine_cli import main as cli_main
from forge_ray.env.sandbox import bwrap_problem

needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap unusable: {bwrap_problem()}")

CORE = '''\
"""Tiny helpers."""
from ._util import as_list


def clamp(x, lo, hi):
    """Return ``x`` limited to the closed range ``[lo, hi]``."""
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


def window_sums(xs, n):
    """Sums of every run of ``n`` consecutive items of ``xs``, in order."""
    xs = as_list(xs)
    out = []
    for i in range(len(xs) - n + 1):
        out.append(sum(xs[i:i + n]))
    return out


def never_called(a, b):
    """A helper that no test calls, so it is never mined."""
    total = 0
    for x in (a, b):
        total += x
    return total


def undocumented(x):
    y = x * 2
    z = y + 1
    return z


class Stack:
    """A list-backed stack."""

    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def peek_or(self, default=None):
        """The top item without removing it, or ``default`` when the stack is empty."""
        if not self.items:
            return default
        top = self.items[-1]
        return top
'''

TESTS = '''\
from pathlib import Path

from helpers import square
from tinypkg import Stack, clamp, window_sums


def test_clamp():
    assert clamp(5, 0, 3) == 3
    assert clamp(-1, 0, 3) == 0
    assert clamp(square(1), 0, 3) == 1


def test_window_sums(numbers):
    expected = [int(v) for v in Path(__file__).with_name("data").joinpath("sums.txt").read_text().split()]
    assert window_sums(numbers, 2) == expected


def test_stack():
    s = Stack()
    assert s.peek_or("none") == "none"
    s.push(1)
    assert s.peek_or() == 1
'''

FILES = {
    # addopts would break the sandbox's pytest (no pytest-cov there): it must not be carried
    "pyproject.toml": '[project]\nname = "tinypkg"\nversion = "0.1"\n\n[tool.pytest.ini_options]\naddopts = "--cov=tinypkg"\n',
    "src/tinypkg/__init__.py": "from .core import Stack, clamp, never_called, undocumented, window_sums\n",
    "src/tinypkg/core.py": CORE,
    "src/tinypkg/_util.py": 'def as_list(xs):\n    """Any iterable as a new list."""\n    return list(xs)\n',
    "tests/conftest.py": "import pytest\n\n\n@pytest.fixture\ndef numbers():\n    return [1, 2, 3, 4]\n",
    "tests/helpers.py": "def square(x):\n    return x * x\n",
    "tests/data/sums.txt": "3 5 7\n",
    "tests/test_core.py": TESTS,
}
KEPT = {"tinypkg-0.1.tinypkg.core.clamp", "tinypkg-0.1.tinypkg.core.window_sums", "tinypkg-0.1.tinypkg.core.Stack.peek_or"}
FAST = MineConfig(max_per_package=10, timeout_s=20.0)


def make_package(root: Path) -> Path:
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    pkg = make_package(root / "tinypkg")
    summary = mine_exercises([str(pkg)], root / "train", config=FAST, progress=lambda s: None)
    return root, pkg, summary


def _body_lines(ex) -> list[str]:
    """The lines of the reference that the starter lacks: the original body."""
    path = ex.solution_paths[0]
    starter = set(ex.starter[path].splitlines())
    return [ln.strip() for ln in ex.reference[path].splitlines() if ln.strip() and ln not in starter]


@needs_bwrap
def test_covered_functions_are_mined_and_the_rest_dropped_with_reasons(mined):
    root, _, summary = mined
    (report,) = summary["packages"]
    assert report["name"] == "tinypkg" and report["version"] == "0.1" and report["problem"] is None
    assert report["kept"] == 3 and summary["train"] == 3
    assert report["drops"]["not_covered"] == 1            # never_called: no test calls it
    assert report["drops"]["no_docstring"] == 2           # undocumented, Stack.push
    assert report["drops"]["body_too_short"] == 1         # as_list
    assert report["drops"]["not_plain"] == 1              # Stack.__init__ (a dunder)
    assert {ex.name for ex in load_exercises(root / "train")} == KEPT
    assert json.loads((root / "train" / "summary.json").read_text())["packages"][0]["kept"] == 3


@needs_bwrap
def test_stub_fails_and_reference_passes_through_the_runner(mined):
    root, _, _ = mined
    tasks = ExerciseTasks(set=str(root / "train"), heldout_fraction=0.0)
    assert len(tasks.all_tasks("train")) == 3
    for ex in tasks.exercises:
        path = ex.solution_paths[0]
        assert path == "tinypkg/core.py"                  # src/ dropped: the package sits at the top
        assert "pytest.ini" in ex.support and "tinypkg/_util.py" in ex.support
        assert ex.tests == {"tests/test_core.py": TESTS}
        assert {"tests/conftest.py", "tests/helpers.py", "tests/data/sums.txt"} <= set(ex.support)
        assert not any(p.startswith("src/") or p == "pyproject.toml" for p in ex.support)
        stub = run_exercise_tests(ex, {})
        assert not stub.passed and "NotImplementedError" in stub.output
        ref = run_exercise_tests(ex, ex.reference)
        assert ref.passed, ref.output


@needs_bwrap
def test_starter_and_instructions_never_show_the_body(mined):
    root, _, _ = mined
    for ex in load_exercises(root / "train"):
        path = ex.solution_paths[0]
        body = _body_lines(ex)
        assert len(body) >= 3
        assert not any(line in ex.instructions for line in body)
        assert f"in `{path}`; the rest of the module is as it was" in ex.instructions
        assert "raise NotImplementedError" in ex.starter[path]
        func = ex.name.rsplit(".", 1)[-1]
        node = next(n for n in ast.walk(ast.parse(ex.starter[path])) if getattr(n, "name", None) == func)
        assert ast.get_docstring(node) in ex.instructions and f"def {func}(" in ex.instructions
        assert [type(s).__name__ for s in node.body] == ["Expr", "Raise"]
        meta = json.loads((root / "train" / ex.name / ".meta" / "mined.json").read_text())
        assert meta["package"] == "tinypkg" and meta["tests"] == ["tests/test_core.py"]


@needs_bwrap
def test_heldout_packages_never_reach_train(mined, tmp_path):
    _, pkg, _ = mined
    summary = mine_exercises([str(pkg)], tmp_path / "train", heldout=["tinypkg"], config=FAST, progress=lambda s: None)
    assert summary["train"] == 0 and summary["packages"][0]["split"] == "heldout"
    assert "held out" in summary["packages"][0]["problem"]
    assert not [p for p in (tmp_path / "train").iterdir() if p.name != "summary.json"]
    # asked for, the held-out package is mined into its own folder (through the CLI), never into train
    rc = cli_main([str(pkg), "--out", str(tmp_path / "train"), "--heldout", "tinypkg", "--heldout-out",
                   str(tmp_path / "heldout"), "--overwrite"])
    assert rc == 0
    assert {ex.name for ex in load_exercises(tmp_path / "heldout")} == KEPT
    assert not [p for p in (tmp_path / "train").iterdir() if p.name != "summary.json"]


def test_output_folder_checks(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(MiningError, match="must not be inside"):
        mine_exercises([], tmp_path / "train", heldout_out=tmp_path / "train" / "held", progress=lambda s: None)
    (tmp_path / "train" / "notes.txt").write_text("mine")
    with pytest.raises(MiningError, match="not empty"):
        mine_exercises([], tmp_path / "train", progress=lambda s: None)
    with pytest.raises(MiningError, match="notes.txt"):
        mine_exercises([], tmp_path / "train", overwrite=True, progress=lambda s: None)
    assert (tmp_path / "train" / "notes.txt").read_text() == "mine"


def test_stub_function_keeps_signature_and_docstring_only():
    src = textwrap.dedent('''\
        import os


        @decorate
        def f(a,
              b=1):
            """Add ``a`` and ``b`` (a docstring long enough)."""
            c = a + b
            # a comment in the body
            return c


        def g(): """One-liner docstring on the def line, too."""; return 1
        ''')
    tree = ast.parse(src)
    first, stub, header, body = stub_function(src, tree.body[1], 2, 40)
    assert first == 4 and header.startswith("@decorate\ndef f(a,\n      b=1):\n") and header.rstrip().endswith('"""')
    assert "c = a + b" in body and "comment" in body and "c = a + b" not in stub and "comment" not in stub
    assert stub.splitlines()[7] == "    raise NotImplementedError" and stub.endswith("def g(): " + src.split("def g(): ")[1])
    assert stub_function(src, tree.body[1], 4, 40) == "body_too_short"
    assert stub_function(src, tree.body[1], 1, 2) == "body_too_long"
    assert stub_function(src, tree.body[2], 0, 40) == "unstubbable"
    # a form feed is a line break to str.splitlines but not to ast's line numbers
    odd = 'x = 1\n\x0c\ndef h(a):\n    """A docstring that is long enough."""\n    b = a\n    return b\n\x0c\ny = 2\n'
    assert stub_function(odd, ast.parse(odd).body[1], 1, 40)[1] == odd.replace("    b = a\n    return b\n",
                                                                                 "    raise NotImplementedError\n")


def test_support_is_the_import_closure():
    files = {"pkg/__init__.py": "from .a import f\n", "pkg/a.py": "from . import b\n\ndef f():\n    import pkg.c\n",
             "pkg/b.py": "", "pkg/c.py": "", "pkg/unused.py": "", "pkg/data.json": "{}",
             "tests/conftest.py": "", "tests/test_x.py": "import helpers\nfrom pkg import a\n", "tests/helpers.py": "",
             "tests/data/x.txt": "1", "docs/conf.py": "import pkg.unused\n"}
    layout = Layout(files, {p: p for p in files})
    code = layout.closure(["tests/test_x.py"])
    assert code == {"tests/test_x.py", "tests/conftest.py", "tests/helpers.py", "pkg/__init__.py", "pkg/a.py",
                    "pkg/b.py", "pkg/c.py"}
    assert layout.data_files(code) == {"tests/data/x.txt", "pkg/data.json"}
    support = layout.support(["tests/test_x.py"], "pkg/b.py")
    assert "pkg/b.py" not in support and "tests/test_x.py" not in support and "pkg/unused.py" not in support


@needs_bwrap
def test_mined_set_shipped_as_one_archive(mined, tmp_path):
    """``--out FILE.tar.gz`` packs the mined folder into one reproducible archive, which loads
    to the same exercises as the folder."""
    root, pkg, _ = mined
    archive = tmp_path / "train.tar.gz"
    assert cli_main([str(pkg), "--out", str(archive), "--workers", "1", "--timeout", "20"]) == 0
    assert archive.is_file() and not (tmp_path / "train").exists()
    packed, folder = load_exercises(archive), load_exercises(root / "train")
    assert [ex.name for ex in packed] == [ex.name for ex in folder] and set(ex.name for ex in packed) == KEPT
    assert all(a == b for a, b in zip(packed, folder)) and packed[0].source.startswith(f"{archive}:")
