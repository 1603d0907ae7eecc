"""The on-disk exercise format: Exercism's Python track layout, as Aider-Polyglot uses it.

One folder per exercise::

    two-fer/
      .docs/instructions.md            the task (required)
      .docs/introduction.md            optional, shown before the instructions
      .docs/instructions.append.md     optional, shown after them
      .meta/config.json                {"files": {"solution": ["two_fer.py"],
                                                  "test": ["two_fer_test.py"],
                                                  "example": [".meta/example.py"],
                                                  "editor": [...optional read-only helpers]}}
      .meta/example.py                 the reference solution
      two_fer.py                       the starter the model completes
      two_fer_test.py                  the tests

``load_exercises(root)`` finds every folder under ``root`` that has ``.meta/config.json``
(so a single exercise, a flat set, or Exercism's ``exercises/practice/*`` all load as they
are) and returns ``Exercise`` objects; a broken exercise raises ``ExerciseFormatError``
naming the folder and the file. ``write_exercise`` writes one back in the same layout, and
``exercise_to_dict`` / ``exercise_from_dict`` carry one inside a JSON-able task answer.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

CONFIG = ".meta/config.json"
DOCS = (".docs/introduction.md", ".docs/instructions.md", ".docs/instructions.append.md")


class ExerciseFormatError(ValueError):
    """An exercise folder (or an exercise inside a task answer) that does not follow the format."""


@dataclass(frozen=True)
class Exercise:
    """One exercise. Paths are relative to the exercise folder, POSIX style.

    ``starter`` maps each solution path to its starter text (the files the model writes);
    ``reference`` maps the same paths to the reference solution; ``support`` holds read-only
    helper files the tests need (Exercism's ``editor`` files); ``source`` is the folder it was
    loaded from (None when built in memory) and takes no part in equality.
    """

    name: str
    instructions: str
    starter: dict[str, str]
    tests: dict[str, str]
    reference: dict[str, str]
    support: dict[str, str] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)

    @property
    def solution_paths(self) -> list[str]:
        return list(self.starter)

    @property
    def test_paths(self) -> list[str]:
        return list(self.tests)


def check_relpath(path: Any, where: str) -> str:
    """``path`` if it is a relative POSIX path inside the exercise folder, else an error."""
    if not isinstance(path, str) or not path or "\\" in path or "\x00" in path:
        raise ExerciseFormatError(f"{where}: bad file path {path!r}")
    parts = PurePosixPath(path).parts
    if path.startswith("/") or ".." in parts or "." in parts or not parts:
        raise ExerciseFormatError(f"{where}: file path {path!r} must be relative and stay inside the exercise")
    return path


def validate(ex: Exercise) -> Exercise:
    """``ex`` if it is usable (names, paths, at least one solution and test file, a reference
    for every solution file), else ``ExerciseFormatError`` naming the exercise."""
    where = f"exercise {ex.name!r}" + (f" ({ex.source})" if ex.source else "")
    if not isinstance(ex.name, str) or not ex.name or "/" in ex.name or ex.name.startswith("."):
        raise ExerciseFormatError(f"{where}: the name must be a plain folder name")
    if not isinstance(ex.instructions, str) or not ex.instructions.strip():
        raise ExerciseFormatError(f"{where}: empty instructions")
    for label, files in (("solution", ex.starter), ("test", ex.tests), ("reference", ex.reference), ("support", ex.support)):
        if not isinstance(files, dict):
            raise ExerciseFormatError(f"{where}: {label} files must be a mapping of path to text")
        for path, text in files.items():
            check_relpath(path, where)
            if not isinstance(text, str):
                raise ExerciseFormatError(f"{where}: {label} file {path!r} is not text")
    if not ex.starter:
        raise ExerciseFormatError(f"{where}: no solution file")
    if not any(p.endswith(".py") for p in ex.tests):
        raise ExerciseFormatError(f"{where}: no Python test file")
    if set(ex.reference) != set(ex.starter):
        raise ExerciseFormatError(f"{where}: reference files {sorted(ex.reference)} do not match the solution files {sorted(ex.starter)}")
    clash = (set(ex.starter) & set(ex.tests)) | (set(ex.support) & (set(ex.starter) | set(ex.tests)))
    if clash:
        raise ExerciseFormatError(f"{where}: {sorted(clash)} listed as more than one kind of file")
    return ex


def _read(path: Path, folder: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExerciseFormatError(f"{folder}: missing file {path.relative_to(folder).as_posix()}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ExerciseFormatError(f"{folder}: cannot read {path.relative_to(folder).as_posix()}: {e}") from None


def _config_files(folder: Path) -> dict[str, list[str]]:
    """The ``files`` section of ``.meta/config.json``, checked."""
    try:
        config = json.loads(_read(folder / CONFIG, folder))
    except json.JSONDecodeError as e:
        raise ExerciseFormatError(f"{folder / CONFIG}: not valid JSON: {e}") from None
    files = config.get("files") if isinstance(config, dict) else None
    if not isinstance(files, dict):
        raise ExerciseFormatError(f"{folder / CONFIG}: needs a \"files\" object")
    out: dict[str, list[str]] = {}
    for key in ("solution", "test", "example", "editor"):
        value = files.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ExerciseFormatError(f"{folder / CONFIG}: files.{key} must be a list of paths")
        out[key] = [check_relpath(v, str(folder / CONFIG)) for v in value]
    for key in ("solution", "test", "example"):
        if not out[key]:
            raise ExerciseFormatError(f"{folder / CONFIG}: files.{key} is empty")
    if len(out["example"]) != len(out["solution"]):
        raise ExerciseFormatError(f"{folder / CONFIG}: files.example ({len(out['example'])}) must pair one to one "
                                  f"with files.solution ({len(out['solution'])})")
    return out


def join_instructions(parts: list[str]) -> str:
    """Introduction, instructions and appendix as one text (stripped, blank line between)."""
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def load_exercise(folder: str | os.PathLike) -> Exercise:
    """The exercise in ``folder`` (which holds ``.meta/config.json``)."""
    folder = Path(folder)
    files = _config_files(folder)
    if not (folder / DOCS[1]).is_file():
        raise ExerciseFormatError(f"{folder}: missing file {DOCS[1]}")
    docs = [_read(folder / d, folder) for d in DOCS if (folder / d).is_file()]

    def read_all(paths: list[str]) -> dict[str, str]:
        return {p: _read(folder / p, folder) for p in paths}

    reference = {sol: _read(folder / ex, folder) for sol, ex in zip(files["solution"], files["example"])}
    ex = Exercise(name=folder.resolve().name, instructions=join_instructions(docs), starter=read_all(files["solution"]),
                  tests=read_all(files["test"]), reference=reference, support=read_all(files["editor"]), source=str(folder))
    return validate(ex)


def _exercise_folders(root: Path) -> list[Path]:
    """Folders under ``root`` (``root`` included) that hold ``.meta/config.json``; hidden
    folders are not searched, and nothing below an exercise folder is."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if (here / CONFIG).is_file():
            found.append(here)
            dirnames[:] = []
            continue
        if (here / DOCS[1]).is_file():
            raise ExerciseFormatError(f"{here}: has {DOCS[1]} but no {CONFIG}")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def load_exercises(root: str | os.PathLike) -> list[Exercise]:
    """Every exercise under ``root`` (a folder, or a ``.tar.gz`` of one: ``forge_ray.env.archive``),
    sorted by name; names must be unique. An exercise holds its files in memory, so an archive
    is unpacked only for the loading; ``source`` then names the archive and the folder in it."""
    from forge_ray.env.archive import is_archive, unpack_tree

    if is_archive(root) and Path(root).is_file():
        import tempfile

        with tempfile.TemporaryDirectory(prefix="forge-exercises-") as tmp:
            loaded = load_exercises(unpack_tree(root, tmp))
            return [replace(ex, source=f"{root}:{Path(ex.source).relative_to(tmp)}") for ex in loaded]
    root = Path(root)
    if not root.is_dir():
        raise ExerciseFormatError(f"{root}: not a directory of exercises")
    exercises = [load_exercise(f) for f in _exercise_folders(root)]
    if not exercises:
        raise ExerciseFormatError(f"{root}: no exercise found (no folder with {CONFIG})")
    seen: dict[str, str | None] = {}
    for ex in exercises:
        if ex.name in seen:
            raise ExerciseFormatError(f"two exercises named {ex.name!r}: {seen[ex.name]} and {ex.source}")
        seen[ex.name] = ex.source
    return sorted(exercises, key=lambda e: e.name)


def _example_paths(ex: Exercise) -> list[str]:
    if len(ex.reference) == 1:
        return [".meta/example.py"]
    return [f".meta/example/{p}" for p in ex.solution_paths]


def write_exercise(ex: Exercise, root: str | os.PathLike) -> Path:
    """Write ``ex`` as ``root/<name>/`` in the format ``load_exercise`` reads; returns the folder."""
    validate(ex)
    folder = Path(root) / ex.name
    examples = _example_paths(ex)
    config = {"files": {"solution": ex.solution_paths, "test": ex.test_paths, "example": examples,
                        **({"editor": list(ex.support)} if ex.support else {})}}
    out = {CONFIG: json.dumps(config, indent=2) + "\n", DOCS[1]: ex.instructions.strip() + "\n",
           **ex.starter, **ex.tests, **ex.support,
           **{example: ex.reference[sol] for sol, example in zip(ex.solution_paths, examples)}}
    for rel, text in out.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder


def exercise_to_dict(ex: Exercise) -> dict[str, Any]:
    """A JSON-able copy of ``ex`` (what a task's ``answer`` carries)."""
    return {"name": ex.name, "instructions": ex.instructions, "starter": dict(ex.starter), "tests": dict(ex.tests),
            "reference": dict(ex.reference), "support": dict(ex.support)}


def exercise_from_dict(data: Any) -> Exercise:
    """The exercise ``exercise_to_dict`` wrote; ``ExerciseFormatError`` if ``data`` is not one."""
    if not isinstance(data, dict):
        raise ExerciseFormatError(f"an exercise must be a JSON object, got {type(data).__name__}")
    missing = [k for k in ("name", "instructions", "starter", "tests", "reference") if k not in data]
    if missing:
        raise ExerciseFormatError(f"exercise {data.get('name')!r}: missing fields {missing}")
    return validate(Exercise(name=data["name"], instructions=data["instructions"], starter=data["starter"],
                             tests=data["tests"], reference=data["reference"], support=data.get("support") or {}))
