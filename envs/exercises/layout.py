"""A package as laid out in a mined exercise: its text files at their exercise paths (``src/``
dropped) and the import graph between them, from which an exercise takes only the support
files its tests import (``envs/exercises/mine.py``)."""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

PYTEST_INI = ("[pytest]\n# Written by the exercise miner: the exercise folder is pytest's rootdir, and the\n"
              "# package's own pytest settings (addopts, coverage and other plugins) are not carried.\n")
_CONFIG_NAMES = {"pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "setup.py", "PKG-INFO"}
_MAX_DATA_BYTES = 256 << 10


class MiningError(ValueError):
    """Bad input to the miner (an output folder in the way, a clash of paths), naming it."""


@dataclass
class Layout:
    """The package's text files at their exercise paths, and the import graph between them."""

    files: dict[str, str]                       # exercise path -> text
    tree_path: dict[str, str]                   # exercise path -> path in the package tree
    modules: dict[str, str] = field(default_factory=dict)   # dotted name (from the top) -> exercise path
    py_dirs: set[str] = field(default_factory=set)           # folders holding a .py file
    _deps: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for path in self.files:
            parts = PurePosixPath(path).with_suffix("").parts
            if path.endswith(".py") and all(p.isidentifier() for p in parts):
                self.modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
        self.py_dirs |= {str(PurePosixPath(p).parent) for p in self.files if p.endswith(".py")}

    def deps(self, path: str) -> set[str]:
        """Files importing ``path`` runs: its parent packages' ``__init__.py`` and what it imports."""
        if path not in self._deps:
            out = set()
            parent = PurePosixPath(path).parent
            while str(parent) != "." and str(parent / "__init__.py") in self.files:
                out.add(str(parent / "__init__.py"))
                parent = parent.parent
            base = ".".join(parent.parts) if str(parent) != "." else ""   # pytest's rootdir-less import base
            out |= {self.modules[target] for target in self._imported(path, base)}   # their parents: in closure
            out.discard(path)
            self._deps[path] = out
        return self._deps[path]

    def _imported(self, path: str, base: str) -> set[str]:
        """Dotted names of this layout's modules that ``path`` imports (anywhere in it, lazily
        or not): absolute names from the top or from ``base``, relative ones from its package."""
        try:
            tree = ast.parse(self.files[path])
        except (SyntaxError, ValueError):
            return set()
        package = list(PurePosixPath(path).with_suffix("").parts[:-1])   # __init__.py: the package itself
        tops = ["", base] if base else [""]
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                heads, prefixes = [(a.name, []) for a in node.names], tops
            elif isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names]
                if node.level:
                    up = package[:len(package) - node.level + 1]
                    heads, prefixes = [(".".join(up + ([node.module] if node.module else [])), names)], [""]
                else:
                    heads, prefixes = [(node.module or "", names)], tops
            else:
                continue
            for module, names in heads:
                for prefix in prefixes:
                    full = f"{prefix}.{module}" if prefix else module
                    found |= {m for m in [full, *(f"{full}.{n}" for n in names)] if m in self.modules}
        return found

    def closure(self, roots: Iterable[str]) -> set[str]:
        """``roots``, the ``conftest.py`` files above them, and every package file they import."""
        todo = list(roots)
        todo += [str(d / "conftest.py") for root in todo for d in PurePosixPath(root).parents]
        seen: set[str] = set()
        while todo:
            path = todo.pop()
            if path in seen or path not in self.files:
                continue
            seen.add(path)
            todo.extend(self.deps(path))
        return seen

    def data_files(self, code: set[str]) -> set[str]:
        """Non-Python text files the tests may read: those in (or in plain folders below) a
        folder of ``code``, never at the top (README, CHANGELOG...)."""
        dirs = {str(PurePosixPath(p).parent) for p in code} - {"."}
        out = set()
        for path in self.files:
            if path.endswith(".py"):
                continue
            parent = PurePosixPath(path).parent
            while str(parent) != ".":
                if str(parent) in dirs:
                    out.add(path)
                    break
                if str(parent) in self.py_dirs:
                    break
                parent = parent.parent
        return out

    def support(self, tests: list[str], solution: str) -> dict[str, str]:
        code = self.closure([*tests, solution])
        keep = (code | self.data_files(code)) - {solution, *tests}
        return {"pytest.ini": PYTEST_INI, **{p: self.files[p] for p in sorted(keep)}}


def layout_of(tree) -> Layout:
    """The text files of a prepared ``envs.swe.packages.PackageTree`` at their exercise paths
    (``src/`` dropped). The tree is an ``export_tree`` copy: no VCS data, caches, build outputs,
    links or binaries. Top-level non-Python files (README, packaging, tool configs) are left out."""
    strip = "src/" if any(p.startswith("src/") for p in tree.packages) else ""
    files, tree_path = {}, {}
    for path in sorted(p for p in Path(tree.root).rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(tree.root)
        if rel.suffix != ".py" and (len(rel.parts) == 1 or rel.name in _CONFIG_NAMES
                                    or path.stat().st_size > _MAX_DATA_BYTES):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue   # binary data cannot travel in an exercise (text files only)
        tree_rel = rel.as_posix()
        ex_rel = tree_rel[len(strip):] if strip and tree_rel.startswith(strip) else tree_rel
        if ex_rel in files:
            raise MiningError(f"{tree.name} {tree.version}: {tree_rel} and {tree_path[ex_rel]} both land at "
                              f"{ex_rel} once src/ is dropped")
        files[ex_rel], tree_path[ex_rel] = text, tree_rel
    return Layout(files, tree_path)


