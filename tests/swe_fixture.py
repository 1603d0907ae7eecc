"""A tiny SWE tasks folder for tests: package ``calc`` whose ``mul`` adds instead of
multiplying, three tests, the bug and fix patches made with git, one train and two held-out
rows in the schema of ``forge-ray swe make-tasks``."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

OPS = '"""Arithmetic helpers."""\n\n\ndef add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n\n\n' \
      'def square(x):\n    return mul(x, x)\n'
TESTS = ("from calc.ops import add, mul, square\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
         "def test_mul():\n    assert mul(3, 4) == 12\n\n\ndef test_square():\n    assert square(5) == 25\n")
F2P = ["tests/test_calc.py::test_mul", "tests/test_calc.py::test_square"]

def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "safe.directory=*", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout


def build_tasks_dir(base: Path) -> dict:
    """A tasks folder with one instance: ``mul`` adds instead of multiplying."""
    repo = base / "repos" / "calc-1.0"
    (repo / "calc").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "calc" / "__init__.py").write_text('"""calc."""\n')
    (repo / "calc" / "ops.py").write_text(OPS)
    (repo / "tests" / "test_calc.py").write_text(TESTS)
    work = base / "scratch"
    shutil.copytree(repo, work)
    _git("init", "-q", cwd=work)
    _git("add", "-A", cwd=work)
    _git("commit", "-qm", "clean", cwd=work)
    (work / "calc" / "ops.py").write_text(OPS.replace("return a * b", "return a + b"))
    bug = _git("diff", cwd=work)
    _git("commit", "-qam", "bug", cwd=work)
    (work / "calc" / "ops.py").write_text(OPS)
    fix = _git("diff", cwd=work)
    shutil.rmtree(work)
    row = {"instance_id": "calc-1.0__mul", "package": "calc", "version": "1.0", "repo": "repos/calc-1.0",
           "problem_statement": "mul(3, 4) returns 7 instead of 12.", "patch": fix, "bug_patch": bug,
           "FAIL_TO_PASS": F2P, "PASS_TO_PASS": ["tests/test_calc.py::test_add"],
           "mutation": "swap_binop", "file": "calc/ops.py"}
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([row]), base / "train.parquet")
    other = {**row, "instance_id": "calc-1.0__mul_b"}
    pq.write_table(pa.Table.from_pylist([row, other]), base / "heldout.parquet")
    return row
