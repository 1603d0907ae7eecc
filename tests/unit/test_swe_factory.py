"""The SWE task factory: mutation kinds, the sandboxed test runner, make_tasks end to end.

Real sandbox (bwrap) and the system python's pytest; skipped only where bubblewrap cannot run.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from envs.swe import mutate
from envs.swe.factory import make_tasks, unified_diff
from envs.swe.factory_cli import read_packages_file
from envs.swe.packages import prepare
from envs.swe.testrun import run_tests
from forge_ray.env.sandbox import bwrap_problem

needs_bwrap = pytest.mark.skipif(bwrap_problem() is not None, reason=f"bubblewrap unusable: {bwrap_problem()}")

# One function per kind (plus a neighbour that must stay untouched) and what must change.
KIND_CASES = {
    "flip_comparison": ("def f(a, b):\n    return a < b  # cmp\n", "a < b"),
    "swap_binop": ("def f(a, b):\n    c = a + b\n    c *= 2\n    return c and a\n", "a + b"),
    "off_by_one": ("def f(xs, n):\n    for i in range(n):\n        xs[i] = 0\n    return xs[-1]\n", "range(n)"),
    "change_constant": ("def f(x):\n    return x * 10 if True else 2.5\n", "10"),
    "drop_if_branch": ("def f(x):\n    if x > 0:\n        y = 1\n    else:\n        y = 2\n    return y\n", "y = 1"),
    "drop_else_branch": ("def f(x):\n    y = 0\n    if x:\n        y = 1\n    elif x is None:\n        y = 3\n"
                         "    else:\n        y = 2\n    return y\n", "y = 2"),
    "swap_call_args": ("def f(a, b):\n    return divmod(a, b)\n", "divmod(a, b)"),
    "remove_return": ("def f(a):\n    return a + 1\n", "return a + 1"),
    "negate_condition": ("def f(x):\n    while x > 0:\n        x -= 1\n    return 1 if x else 0\n", "while x > 0"),
    "remove_statement": ("def f(x):\n    \"\"\"Doc.\"\"\"\n    out = []\n    out.append(x)\n    return out\n",
                         "out.append(x)"),
}
NEIGHBOUR = "\n\n# a comment that stays\ndef g(z):\n    if z < 3:\n        return z + 1\n    return z - 1\n"


@pytest.mark.parametrize("kind", mutate.KINDS)
def test_every_kind_changes_exactly_its_function(kind):
    body, _ = KIND_CASES[kind]
    source = "import os\n\n\n" + body + NEIGHBOUR
    fn_end = 3 + body.count("\n")
    muts = list(mutate.mutations(source, file="m.py", seed=3, kinds=(kind,)))
    muts = [m for m in muts if m.function == "f"]
    assert muts, f"no {kind} mutation of f"
    for m in muts:
        new = m.apply(source)
        compile(new, "m.py", "exec")
        assert m.kind == kind and m.file == "m.py" and m.first_line == 4 and 4 <= m.line <= fn_end
        old_lines, new_lines = source.splitlines(True), new.splitlines(True)
        assert new_lines[:3] == old_lines[:3]                                        # before f: identical
        tail = len(old_lines) - fn_end
        assert new_lines[len(new_lines) - tail:] == old_lines[fn_end:]            # after f (and g): identical
        assert ast.dump(ast.parse(new)) != ast.dump(ast.parse(source))
    again = [m.mutated_function for m in mutate.mutations(source, file="m.py", seed=3, kinds=(kind,))
             if m.function == "f"]
    assert again == [m.mutated_function for m in muts]                          # deterministic in the seed


def test_mutation_details():
    def one(source, kind, seed=0):
        return [m.apply(source) for m in mutate.mutations(source, seed=seed, kinds=(kind,))]

    assert one("def f(a, b):\n    return a in b\n", "flip_comparison") == ["def f(a, b):\n    return a not in b\n"]
    assert one("def f(a, b):\n    return a or b\n", "swap_binop") == ["def f(a, b):\n    return a and b\n"]
    assert one("def f(a):\n    return a[i]  # keep é\n", "off_by_one")[0] in (
        "def f(a):\n    return a[i + 1]  # keep é\n", "def f(a):\n    return a[i - 1]  # keep é\n")
    assert one("def f(a):\n    return (a - 1)\n", "remove_return") == ["def f(a):\n    return None\n"]
    assert one("def f(a):\n    if not a:\n        return 1\n", "negate_condition") == [
        "def f(a):\n    if a:\n        return 1\n"]
    assert one("def f(a):\n    x = 1\n", "remove_statement") == ["def f(a):\n    pass\n"]
    # a dropped if-branch keeps the else body, dedented; an elif becomes the if
    assert one("def f(x):\n    if x:\n        a = 1\n    else:\n        a = 2\n        b = 3\n", "drop_if_branch") == [
        "def f(x):\n    a = 2\n    b = 3\n"]
    assert one("def f(x):\n    if x:\n        a = 1\n    elif x is None:\n        a = 3\n", "drop_if_branch")[0] == \
        "def f(x):\n    if x is None:\n        a = 3\n"
    nested = "class K:\n    def m(self):\n        def inner(t):\n            return t + 1\n        return inner\n"
    assert {m.function for m in mutate.mutations(nested)} == {"K.m", "K.m.<locals>.inner"}


PKG_CORE = '''\
def add(a, b):
    return a + b


def clamp(x, lo, hi):
    if x < lo:
        return lo
    return min(x, hi)


def triple(x):
    y = x * 3
    return y


def never_tested(n):
    return n - 1
'''
PKG_TESTS = '''\
import pytest
from tinypkg.core import add, clamp, triple


def test_add():
    assert add(2, 3) == 5


@pytest.mark.parametrize("x,expected", [(-1, 0), (5, 5), (11, 10)])
def test_clamp(x, expected):
    assert clamp(x, 0, 10) == expected


def test_triple_is_int():
    assert isinstance(triple(2), int)
'''


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def scratch():
    """A directory the sandbox uid can reach (pytest's own tmp root is 0700 when root)."""
    path = Path(tempfile.mkdtemp(prefix="forge-swe-test-"))
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _tinypkg(root: Path, name: str = "tinypkg") -> Path:
    return _write(root, {"pyproject.toml": f'[project]\nname = "{name}"\nversion = "0.1.0"\n',
                         f"src/{name}/__init__.py": "", f"src/{name}/core.py": PKG_CORE,
                         "tests/test_core.py": PKG_TESTS.replace("tinypkg", name)})


@needs_bwrap
def test_run_tests_results(scratch):
    tree = _tinypkg(scratch / "t")
    _write(tree, {"tests/test_more.py": "def test_fails():\n    assert 1 == 2, 'boom'\n",
                  "tests/test_broken.py": "import no_such_module\n\ndef test_never():\n    pass\n"})
    whole = run_tests(tree, None, timeout_s=120)
    assert whole.complete and not whole.timed_out and whole.exit_code == 1
    assert whole.durations["tests/test_core.py::test_add"] >= 0
    assert whole.results["tests/test_core.py::test_clamp[11-10]"] is True
    assert whole.results["tests/test_more.py::test_fails"] is False
    assert whole.failures["tests/test_more.py::test_fails"].type == "AssertionError"
    assert "boom" in whole.failures["tests/test_more.py::test_fails"].message
    assert "tests/test_broken.py" in whole.collection_errors
    assert sum(whole.results.values()) == 5
    ids = ["tests/test_core.py::test_clamp[-1-0]", "tests/test_core.py::test_add", "tests/test_core.py::test_nope",
           "tests/test_broken.py::test_never", "tests/missing.py::test_x", "tests/test_more.py::test_fails"]
    some = run_tests(tree, ids, timeout_s=120)
    assert some.results == {ids[0]: True, ids[1]: True, ids[2]: False, ids[3]: False, ids[4]: False, ids[5]: False}
    assert run_tests(tree, ["nope.py::test_x"]).results == {"nope.py::test_x": False}
    assert not any(p.name.startswith(".forge-testrun") for p in tree.iterdir())   # results file removed
    assert not list(tree.rglob("__pycache__"))


@needs_bwrap
def test_run_tests_traces_calls_and_times_out(scratch):
    tree = _tinypkg(scratch / "t")
    run = run_tests(tree, ["tests/test_core.py::test_add"], trace=["src/tinypkg/core.py"], timeout_s=120)
    assert run.calls["tests/test_core.py::test_add"] == ("src/tinypkg/core.py:1",)
    _write(tree, {"tests/test_slow.py": "def test_slow():\n    while True:\n        pass\n"})
    slow = run_tests(tree, ["tests/test_slow.py::test_slow"], timeout_s=3)
    assert slow.timed_out and slow.results == {"tests/test_slow.py::test_slow": False}
    _write(tree, {"tests/test_exit.py": "import os\n\ndef test_exit():\n    os._exit(0)\n"})
    ids = ["tests/test_exit.py::test_exit", "tests/test_core.py::test_add"]
    dead = run_tests(tree, ids, timeout_s=60)   # exit 0, but pytest never finished: not a pass
    assert not dead.complete and dead.results == {ids[0]: False, ids[1]: False}


def test_prepare_layouts(tmp_path):
    tree = prepare(_tinypkg(tmp_path / "a"))
    assert (tree.name, tree.version, tree.packages) == ("tinypkg", "0.1.0", ("src/tinypkg",))
    assert tree.source_files == ("src/tinypkg/__init__.py", "src/tinypkg/core.py")
    assert tree.test_files == ("tests/test_core.py",) and tree.ok
    flat = _write(tmp_path / "b", {"mod.py": "x = 1\n", "setup.py": "", "test_mod.py": "def test_x(): pass\n"})
    assert prepare(flat).source_files == ("mod.py",)
    notests = prepare(_write(tmp_path / "c", {"pkg/__init__.py": ""}))
    assert not notests.ok and "no test files" in notests.problem


def test_unified_diff_handles_missing_final_newline(tmp_path):
    old, new = "a\nb\nc", "a\nB\nc"
    (tmp_path / "f.txt").write_text(old)
    patch = unified_diff("f.txt", old, new)
    subprocess.run(["git", "apply", "-"], input=patch, text=True, cwd=tmp_path, check=True)
    assert (tmp_path / "f.txt").read_text() == new


def test_packages_file(tmp_path):
    (tmp_path / "p.txt").write_text("# SWE packages\ntoolz==1.2.0\nparse==1.22.4   # held out\n\n")
    assert read_packages_file(tmp_path / "p.txt") == (["toolz==1.2.0", "parse==1.22.4"], ["parse"])


@needs_bwrap
def test_make_tasks_end_to_end(tmp_path, scratch):
    _tinypkg(scratch / "tinypkg")
    _tinypkg(scratch / "otherpkg", "otherpkg")
    out = tmp_path / "out"
    summary = make_tasks([str(scratch / "tinypkg"), str(scratch / "otherpkg")], out, heldout_packages=["otherpkg"],
                         max_per_package=None, seed=1, workers=2, progress=lambda s: None)
    import pyarrow.parquet as pq

    train, heldout = (pq.read_table(out / f"{s}.parquet").to_pylist() for s in ("train", "heldout"))
    assert {r["package"] for r in train} == {"tinypkg"} and {r["package"] for r in heldout} == {"otherpkg"}
    assert summary["tasks"] == len(train) + len(heldout) and summary["train"] == len(train)
    log = [json.loads(ln) for ln in (out / "validation_log.jsonl").read_text().splitlines()]
    assert {e["function"] for e in log if "function" in e} <= {"add", "clamp", "triple"}   # never_tested: no mutants
    ids = [r["instance_id"] for r in train]
    assert len(ids) == len(set(ids)) and all(i.startswith("tinypkg-0.1.0.") for i in ids)
    add_bug = next(r for r in train if r["function"] == "add" and r["mutation"] == "swap_binop")
    assert add_bug["FAIL_TO_PASS"] == ["tests/test_core.py::test_add"]
    assert "tests/test_core.py::test_clamp[11-10]" in add_bug["PASS_TO_PASS"] and len(add_bug["PASS_TO_PASS"]) == 4
    # `y = x * 2` or `y = x * 4` keeps an int: no test notices, dropped with its reason
    unnoticed = [e for e in log if e["function"] == "triple" and e["kind"] in ("off_by_one", "change_constant")]
    assert unnoticed and all(not e["kept"] and e["category"] == "no_failure" and "triple" in e["reason"]
                             for e in unnoticed)
    from forge_ray.env.archive import resolve_tree, unpack_tree

    assert not (out / "repos" / "tinypkg-0.1.0").exists()  # shipped as its archive only
    repo = unpack_tree(resolve_tree(out / "repos" / "tinypkg-0.1.0"), tmp_path / "unpacked")
    assert (repo / "src/tinypkg/core.py").read_text() == PKG_CORE and not (repo / ".git").exists()
    for row in train:
        changed = [ln[1:].strip() for ln in row["bug_patch"].splitlines()
                   if ln[:1] in "+-" and not ln.startswith(("+++", "---")) and ln[1:].strip()]
        assert not any(c in row["problem_statement"] for c in changed if len(c) >= 6), row["problem_statement"]
        assert "diff --git" not in row["problem_statement"] and row["mutation"] not in row["problem_statement"]
        assert row["FAIL_TO_PASS"] and not set(row["FAIL_TO_PASS"]) & set(row["PASS_TO_PASS"])
        assert row["repo"] == "repos/tinypkg-0.1.0" and row["file"] == "src/tinypkg/core.py"
    work = tmp_path / "roundtrip"
    shutil.copytree(repo, work)
    for row in train[:3]:
        for patch in (row["bug_patch"], row["patch"]):
            subprocess.run(["git", "apply", "-"], input=patch, text=True, cwd=work, check=True)
        assert (work / "src/tinypkg/core.py").read_text() == PKG_CORE
    packages = {p["name"]: p for p in json.loads((out / "summary.json").read_text())["packages"]}
    assert packages["tinypkg"]["kept"] == len(train) and packages["otherpkg"]["split"] == "heldout"
    assert 0 < packages["tinypkg"]["yield"] < 1
