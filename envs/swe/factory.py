"""The SWE task factory: real packages + procedural bugs, validated by their own tests.

    summary = make_tasks(["toolz==1.2.0", "path/to/pkg"], "data/swe_tasks", heldout_packages=["parse"])

For each package: fetch and export its clean tree (``<out>/repos/<name>-<version>/``, shipped
at the end as ``<name>-<version>.tar.gz``: ``forge_ray.env.archive``), run its
whole suite twice in the sandbox (tests passing both times are the candidates; the first run
also records which package functions each test calls), then mutate functions that tests
call (``mutate.py``). A mutant is validated in a scratch copy in two steps: first only the
tests that call the mutated function (cheap, and where a bug shows), then, if one failed,
every candidate test (exact FAIL_TO_PASS / PASS_TO_PASS). It is kept iff >= 1 test fails,
nothing hangs and test collection still works. Mutants run in a small thread pool (each is a
sandboxed subprocess); results are consumed in candidate order, so the kept set depends only
on the seed. Outputs: ``train.parquet``, ``heldout.parquet`` (split by package),
``validation_log.jsonl`` (one line per mutant tried) and ``summary.json``.
"""
from __future__ import annotations

import ast
import collections
import difflib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from envs.swe.mutate import KINDS, Mutation, Site, functions, mutation_sites, render
from envs.swe.packages import PackageError, PackageSource, PackageTree, export_tree, normalize, prepare, resolve
from envs.swe.testrun import TestFailure, TestRun, run_tests
from forge_ray.env.sandbox import SandboxError

COLUMNS = ("instance_id", "package", "version", "repo", "problem_statement", "patch", "bug_patch",
           "FAIL_TO_PASS", "PASS_TO_PASS", "mutation", "file", "function")


def unified_diff(path: str, old: str, new: str) -> str:
    """A ``git apply``-able unified diff of one file (a/ b/ prefixes, 3 lines of context)."""
    lines = list(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{path}", f"b/{path}", n=3))
    if not lines:
        return ""
    out = [f"diff --git a/{path} b/{path}\n"]
    for ln in lines:
        out.append(ln if ln.endswith("\n") else ln + "\n\\ No newline at end of file\n")
    return "".join(out)


def _short(message: str, max_lines: int = 4, max_chars: int = 400) -> str:
    # object addresses differ run to run (also when pytest's repr cut them to "...x7f3a...")
    message = re.sub(r" at 0x[0-9a-fA-F]+", "", message)
    message = re.sub(r"(0x|\.\.\.x)[0-9a-fA-F]{6,}", "0x...", message)
    lines = [ln.rstrip() for ln in message.strip().splitlines() if ln.strip()][:max_lines]
    text = "\n".join(lines)
    return text if len(text) <= max_chars else text[:max_chars] + " ..."


def _module(file: str) -> str:
    parts = Path(file).with_suffix("").parts
    parts = parts[1:] if parts[:1] == ("src",) else parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


_INTROS = ("Running the test suite of {pkg} {ver}, {n} test{s} fail{vs} that should pass.",
           "With {pkg} {ver} checked out from source, {n} test{s} of its own suite fail{vs}.",
           "I ran the tests of {pkg} {ver} and {n} of them fail{vs}; they look correct to me.")
_OUTROS = ("Expected: these tests pass, without changing the tests.",
           "The tests describe the intended behaviour; the library code seems to be at fault.",
           "Please fix the library so that these tests pass again.")


def _test_line(failure: TestFailure, sources: set[str]) -> str:
    """The line of the test (not the library) where the failure surfaced."""
    before = []
    for file, _, _, line in failure.frames:
        if file in sources:
            break
        before.append(line)
    return next((ln for ln in reversed(before) if ln), "")


def problem_statement(package: str, version: str, fails: list[str], failures: dict[str, TestFailure],
                      sources: set[str], bug_patch: str, rng: random.Random,
                      qualname_at: Callable[[str, int], str | None] = lambda f, n: None) -> str:
    """An issue report written from the failing run only: tests, failing lines, errors, traceback.

    ``qualname_at(file, line)`` names the function around a traceback line (``Class.method``)."""
    culprit = None
    for t in fails:
        frames = [fr for fr in failures[t].frames if fr[0] in sources] if t in failures else []
        if frames:
            file, line, name, _ = frames[-1]
            culprit = (file, line, qualname_at(file, line) or name)
            break
    first = failures.get(fails[0])
    error = first.type if first is not None else ""
    if culprit is not None:
        where = f"`{_module(culprit[0])}.{culprit[2]}()`"
        title = f"{where} raises {error}" if error and error not in ("AssertionError", "Failed") else \
            f"{where} misbehaves: {fails[0].rsplit('::', 1)[-1]} fails"
    else:
        title = f"{fails[0].rsplit('::', 1)[-1]} fails" + (f" with {error}" if error else "")
    n = len(fails)
    parts = [title, "", rng.choice(_INTROS).format(pkg=package, ver=version, n=n, s="" if n == 1 else "s",
                                                  vs="s" if n == 1 else "")]
    parts += [""] + [f"- `{t}`" for t in fails[:8]] + ([f"- ... and {n - 8} more"] if n > 8 else [])
    for t in fails[:2]:
        f = failures.get(t)
        if f is None:
            continue
        line = _test_line(f, sources)
        parts += ["", f"`{t}`" + (" fails at" if line else " fails with") + ":", "", "```"]
        parts += ([line, ""] if line else []) + [f"{f.type}: {_short(f.message)}" if f.type else _short(f.message), "```"]
    if culprit is not None:
        parts += ["", f"The traceback ends in `{culprit[0]}`, in `{culprit[2]}()`."]
    parts += ["", rng.choice(_OUTROS)]
    return _redact("\n".join(parts) + "\n", bug_patch)


def _qualname_at(text: str | None, line: int) -> str | None:
    """The innermost function of ``text`` whose lines hold ``line``."""
    try:
        tree = ast.parse(text) if text is not None else None
    except (SyntaxError, ValueError):
        tree = None
    around = [fn for fn, _ in functions(tree) if fn.first_line <= line <= fn.end_line] if tree else []
    return max(around, key=lambda fn: fn.first_line).qualname.replace(".<locals>", "") if around else None


def _redact(text: str, patch: str) -> str:
    """Never let a changed line of the patch appear in the statement (e.g. via an error message)."""
    for ln in patch.splitlines():
        if ln[:1] in "+-" and not ln.startswith(("+++", "---")) and len(ln[1:].strip()) >= 6:
            text = text.replace(ln[1:].strip(), "...")
    return text


@dataclass
class PackageReport:
    """What happened to one package (a ``summary.json`` entry)."""

    name: str
    version: str = ""
    split: str = "train"
    origin: str = ""
    clean_tests: int = 0
    covered_functions: int = 0
    sites: int = 0
    unrenderable: int = 0
    duplicates: int = 0
    tried: int = 0
    kept: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    clean_seconds: float = 0.0
    seconds: float = 0.0
    problem: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["yield"] = round(self.kept / self.tried, 4) if self.tried else 0.0
        d["seconds_per_task"] = round(self.seconds / self.kept, 3) if self.kept else None
        return d


@dataclass(frozen=True)
class _Outcome:
    """One validated mutant: kept with its row, or dropped with a reason."""

    instance_id: str
    mutation: Mutation
    kept: bool
    reason: str
    category: str
    seconds: float
    row: dict | None = None


@dataclass
class _Package:
    """Per-package state shared by the validation workers (read-only once validation starts)."""

    tree: PackageTree
    repo_rel: str
    scratch: Path
    candidates: list[str]
    covering: dict[str, list[str]]          # "file:first_line" -> candidate tests calling it
    timeout_s: float                        # for a run of all candidates
    durations: dict[str, float] = field(default_factory=dict)   # clean seconds per test
    sources: dict[str, str] = field(default_factory=dict)   # file -> clean text


def _scratch_copy(pkg: _Package, name: str) -> Path:
    dest = pkg.scratch / name
    shutil.copytree(pkg.tree.root, dest, symlinks=True)
    return dest


def _clean_runs(pkg: _Package, backend: str, timeout_s: float) -> tuple[TestRun, TestRun]:
    """The whole suite twice on fresh copies; the first records who calls what."""
    runs = []
    for i, trace in enumerate((pkg.tree.source_files, None)):
        tree = _scratch_copy(pkg, f"clean{i}")
        try:
            runs.append(run_tests(tree, None, backend=backend, timeout_s=timeout_s, trace=trace))
        finally:
            shutil.rmtree(tree, ignore_errors=True)
    return runs[0], runs[1]


def _why_no_tests(name: str, run: TestRun) -> str:
    if run.timed_out:
        return f"{name}: the clean test suite timed out"
    if run.collection_errors:
        node, report = next(iter(run.collection_errors.items()))
        last = [ln for ln in report.strip().splitlines() if ln.strip()][-1:] or [""]
        return f"{name}: no test passes on the clean tree; collecting {node} fails: {last[0].strip()[:300]}"
    tail = [ln for ln in run.output.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    first = next(iter(run.failures.items()), None)
    example = f"; e.g. {first[0]}: {first[1].type}: {_short(first[1].message, 1, 200)}" if first else ""
    return f"{name}: no test passes on the clean tree (pytest exit {run.exit_code}: {tail[0][:300]}){example}"


def _covering(trace: TestRun, candidates: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for test, keys in trace.calls.items():
        if test in candidates:
            for key in keys:
                out[key].append(test)
    return {k: sorted(v) for k, v in out.items()}


def _interleave(groups: list[list]) -> list:
    out, i = [], 0
    while any(i < len(g) for g in groups):
        out += [g[i] for g in groups if i < len(g)]
        i += 1
    return out


def _candidate_sites(pkg: _Package, seed: int, report: PackageReport) -> list[tuple[str, Site]]:
    """Sites in covered functions, shuffled by ``seed`` and interleaved so that the first N
    spread evenly over the mutation kinds and, within a kind, over the functions."""
    rng = random.Random(f"{seed}|{pkg.tree.name}")
    by_kind: dict[str, dict[tuple[str, str, int], list[tuple[str, Site]]]] = {}
    functions_seen: set[tuple[str, str, int]] = set()
    for file in pkg.tree.source_files:
        text = (pkg.tree.root / file).read_text(encoding="utf-8", errors="surrogateescape")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue   # not Python 3 (a py2-only module): not a mutation target
        pkg.sources[file] = text
        for site in mutation_sites(text, KINDS, tree):
            if f"{file}:{site.first_line}" in pkg.covering:
                fn = (file, site.function, site.first_line)
                functions_seen.add(fn)
                by_kind.setdefault(site.kind, {}).setdefault(fn, []).append((file, site))
    report.covered_functions = len(functions_seen)
    report.sites = sum(len(v) for fns in by_kind.values() for v in fns.values())
    per_kind = []
    for kind in sorted(by_kind):
        groups = [rng.sample(v, len(v)) for _, v in sorted(by_kind[kind].items())]
        rng.shuffle(groups)
        per_kind.append(_interleave(groups))
    rng.shuffle(per_kind)
    return _interleave(per_kind)


def _failing(run: TestRun) -> list[str]:
    """Tests that ran and failed (a test that now skips is neither failing nor passing)."""
    return sorted(t for t in run.results if run.outcomes.get(t) in ("failed", "error"))


def _validate(pkg: _Package, m: Mutation, instance_id: str, backend: str, seed: int) -> _Outcome:
    """Write the mutant into a scratch copy and run the covering tests, then all candidates."""
    start = time.monotonic()
    covering = pkg.covering.get(f"{m.file}:{m.first_line}", [])
    buggy = m.apply(pkg.sources[m.file])

    def drop(reason: str, category: str) -> _Outcome:
        return _Outcome(instance_id, m, False, reason, category, time.monotonic() - start)

    work = pkg.scratch / instance_id
    try:
        # the covering tests took `clean` seconds on the clean tree: a mutant needing far more hangs
        clean = sum(pkg.durations.get(t, 0.0) for t in covering)
        for phase, tests, timeout in (("covering", covering, min(pkg.timeout_s, 15 + 5 * clean)),
                                      ("all", pkg.candidates, pkg.timeout_s)):
            shutil.rmtree(work, ignore_errors=True)
            _scratch_copy(pkg, instance_id)
            (work / m.file).write_text(buggy, encoding="utf-8", errors="surrogateescape")
            run = run_tests(work, tests, backend=backend, timeout_s=timeout)
            if run.timed_out:
                return drop(f"the {phase} tests timed out after {timeout:.0f} s", "timeout")
            if not run.complete or run.exit_code not in (0, 1):
                return drop(f"pytest did not finish normally on the {phase} tests (exit {run.exit_code}; "
                            "crashed, out of memory or interrupted)", "crash")
            if run.collection_errors:
                return drop(f"test collection fails ({next(iter(run.collection_errors))})", "collection_error")
            missing = [t for t in tests if t not in run.outcomes]
            if missing:
                return drop(f"{len(missing)} of the {phase} tests did not run (e.g. {missing[0]})", "crash")
            fails = _failing(run)
            if not fails:
                what = f"none of the {len(tests)} tests calling {m.function}" if phase == "covering" else \
                    "no candidate test in the full run (flaky)"
                return drop(f"{what} failed", "no_failure" if phase == "covering" else "flaky")
        p2p = [t for t in pkg.candidates if run.results.get(t)]
        bug_patch = unified_diff(m.file, pkg.sources[m.file], buggy)
        patch = unified_diff(m.file, buggy, pkg.sources[m.file])
        texts = {**pkg.sources, m.file: buggy}
        statement = problem_statement(pkg.tree.name, pkg.tree.version, fails, run.failures,
                                      set(pkg.tree.source_files), bug_patch, random.Random(f"{seed}|{instance_id}"),
                                      lambda f, n: _qualname_at(texts.get(f), n))
        row = {"instance_id": instance_id, "package": pkg.tree.name, "version": pkg.tree.version,
               "repo": pkg.repo_rel, "problem_statement": statement, "patch": patch, "bug_patch": bug_patch,
               "FAIL_TO_PASS": fails, "PASS_TO_PASS": p2p, "mutation": m.kind, "file": m.file, "function": m.function}
        return _Outcome(instance_id, m, True, f"{len(fails)} fail, {len(p2p)} pass", "kept",
                        time.monotonic() - start, row)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _mutants(pkg: _Package, sites: list[tuple[str, Site]], seed: int, report: PackageReport,
             log_line: Callable[[dict], None]) -> Iterator[tuple[str, Mutation]]:
    """Rendered, de-duplicated mutants in candidate order with their instance ids."""
    seen: set[tuple] = set()
    trees = {f: ast.parse(t) for f, t in pkg.sources.items()}
    for n, (file, site) in enumerate(sites):
        m = render(pkg.sources[file], site, file=file, seed=seed, tree=trees[file])
        if m is None:
            report.unrenderable += 1
            continue
        instance_id = f"{pkg.tree.name}-{pkg.tree.version}.{m.kind}.{n}"
        key = (m.file, m.first_line, m.mutated_function)
        if key in seen:
            report.duplicates += 1
            log_line({"instance": instance_id, "kept": False, "reason": "duplicate of an earlier mutant",
                      "category": "duplicate", "seconds": 0.0})
            continue
        seen.add(key)
        yield instance_id, m


def _validate_all(pkg: _Package, sites: list[tuple[str, Site]], cfg: "_Config", report: PackageReport,
                  log_line: Callable[[dict], None], progress: Callable[[str], None]) -> list[dict]:
    """Run validations ``cfg.workers`` at a time; accept results in order until enough are kept."""
    rows: list[dict] = []
    limit = cfg.max_per_package if cfg.max_per_package is not None else sys.maxsize
    max_tries = cfg.max_tries if cfg.max_tries is not None else (5 * limit if limit != sys.maxsize else sys.maxsize)
    pending: collections.deque[tuple[str, Mutation, Future]] = collections.deque()
    source = _mutants(pkg, sites, cfg.seed, report, log_line)
    with ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="swe-validate") as pool:
        def fill() -> None:
            while len(pending) < cfg.workers and report.tried + len(pending) < max_tries:
                nxt = next(source, None)
                if nxt is None:
                    return
                pending.append((*nxt, pool.submit(_validate, pkg, nxt[1], nxt[0], cfg.backend, cfg.seed)))

        fill()
        while pending and report.kept < limit:
            instance_id, mutation, future = pending.popleft()
            try:
                out: _Outcome = future.result()
            except SandboxError:
                raise   # the sandbox cannot start: every other mutant would fail the same way
            except Exception as e:  # noqa: BLE001 - one bad mutant must not end a long run
                out = _Outcome(instance_id, mutation, False, f"validation raised {e!r}", "error", 0.0)
            report.tried += 1
            report.drops[out.category] = report.drops.get(out.category, 0) + 1
            log_line({"instance": out.instance_id, "kept": out.kept, "reason": out.reason, "category": out.category,
                      "seconds": round(out.seconds, 3), "file": out.mutation.file, "function": out.mutation.function,
                      "line": out.mutation.line, "kind": out.mutation.kind})
            if out.kept:
                report.kept += 1
                report.kinds[out.mutation.kind] = report.kinds.get(out.mutation.kind, 0) + 1
                rows.append(out.row)
            if report.tried % 25 == 0:
                progress(f"  {pkg.tree.name}: tried {report.tried}, kept {report.kept}")
            fill()
        for _, _, f in pending:   # surplus work past the limit: not part of the result
            f.cancel()
    report.drops.pop("kept", None)
    return rows


@dataclass(frozen=True)
class _Config:
    heldout: frozenset[str]
    max_per_package: int | None
    max_tries: int | None
    seed: int
    backend: str
    workers: int
    cache_dir: str | None
    timeout_s: float


def _build_package(spec: str | PackageSource, out: Path, cfg: _Config, log_line: Callable[[dict], None],
                   progress: Callable[[str], None]) -> tuple[PackageReport, list[dict]]:
    start = time.monotonic()
    report = PackageReport(name=str(spec))
    try:
        src = spec if isinstance(spec, PackageSource) else resolve(spec, cfg.cache_dir)
    except PackageError as e:
        report.problem = str(e)
        return report, []
    report.name, report.version, report.origin = src.name, src.version, src.origin
    report.split = "heldout" if src.name in cfg.heldout else "train"
    repo_rel = f"repos/{src.name}-{src.version}"
    tree = prepare(export_tree(src.root, out / repo_rel), src.name, src.version)
    if not tree.ok:
        report.problem = tree.problem
        return report, []
    scratch = Path(tempfile.mkdtemp(prefix=f"forge-swe-{src.name}-"))
    os.chmod(scratch, 0o711)   # the sandbox uid must reach the copies inside
    try:
        pkg = _Package(tree, repo_rel, scratch, [], {}, cfg.timeout_s)
        trace, again = _clean_runs(pkg, cfg.backend, cfg.timeout_s)
        report.clean_seconds = round(time.monotonic() - start, 2)
        pkg.candidates = sorted(set(trace.passed) & set(again.passed))
        report.clean_tests = len(pkg.candidates)
        if not pkg.candidates:
            report.problem = _why_no_tests(f"{src.name} {src.version}", again)
            return report, []
        pkg.covering = _covering(trace, set(pkg.candidates))
        pkg.durations = again.durations
        # generous for a mutant, short enough that one that loops forever does not stall the run
        pkg.timeout_s = min(cfg.timeout_s, max(30.0, 3 * again.wall_seconds + 15))
        sites = _candidate_sites(pkg, cfg.seed, report)
        if not sites:
            report.problem = (f"{src.name} {src.version}: no function of the package is called by a passing test "
                              f"(or no module parses as Python 3)")
            return report, []
        progress(f"[swe make-tasks] {src.name} {src.version} ({report.split}): {report.clean_tests} clean tests, "
                 f"{report.sites} sites in {report.covered_functions} covered functions")
        rows = _validate_all(pkg, sites, cfg, report, log_line, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.seconds = round(time.monotonic() - start, 2)
    return report, rows


def _pack_repo(tree: Path, keep: bool) -> None:
    """The package's clean tree as ``repos/<name>-<version>.tar.gz`` (kept only if it has
    tasks): third-party code ships as one archive, not as files of this repository."""
    from forge_ray.env.archive import SUFFIX, pack_tree

    if tree.is_dir():
        if keep:
            pack_tree(tree, tree.with_name(tree.name + SUFFIX))
        shutil.rmtree(tree)


def _features():
    import datasets

    string, strings = datasets.Value("string"), datasets.Sequence(datasets.Value("string"))
    return datasets.Features({c: strings if c in ("FAIL_TO_PASS", "PASS_TO_PASS") else string for c in COLUMNS})


def write_split(rows: list[dict], path: Path) -> None:
    """Rows as a Hugging Face ``datasets`` parquet file (an empty split keeps the schema)."""
    import datasets

    datasets.disable_progress_bars()
    features = _features()
    ds = datasets.Dataset.from_list(rows, features=features) if rows else \
        datasets.Dataset.from_dict({c: [] for c in COLUMNS}, features=features)
    ds.to_parquet(str(path))


def _summary(reports: list[PackageReport], rows: dict[str, list[dict]], seconds: float) -> dict:
    kept = sum(r.kept for r in reports)
    return {"packages": [r.as_dict() for r in reports], "tasks": kept,
            "train": len(rows["train"]), "heldout": len(rows["heldout"]),
            "tried": sum(r.tried for r in reports), "seconds": round(seconds, 1),
            "tasks_per_minute": round(60 * kept / seconds, 2) if seconds > 0 else 0.0,
            "seconds_per_task": round(seconds / kept, 2) if kept else None}


def make_tasks(sources: Iterable[str | PackageSource], out_dir: str | os.PathLike, *,
               heldout_packages: Iterable[str] = (), max_per_package: int | None = 100, seed: int = 0,
               backend: str = "auto", workers: int = 2, cache_dir: str | os.PathLike | None = None,
               timeout_s: float = 600.0, max_tries: int | None = None,
               progress: Callable[[str], None] | None = None) -> dict:
    """Build validated SWE tasks from ``sources`` (NAME[==VERSION], DIR, DIR@REF) into ``out_dir``.

    Returns the summary (also written to ``summary.json``). ``max_tries`` bounds the mutants
    validated per package (default 5 x ``max_per_package``).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    progress = progress or (lambda s: print(s, file=sys.stderr, flush=True))
    out = Path(out_dir)
    (out / "repos").mkdir(parents=True, exist_ok=True)
    cfg = _Config(frozenset(normalize(p.split("==")[0]) for p in heldout_packages), max_per_package, max_tries,
                  seed, backend, workers, None if cache_dir is None else str(cache_dir), timeout_s)
    start = time.monotonic()
    reports: list[PackageReport] = []
    rows: dict[str, list[dict]] = {"train": [], "heldout": []}
    summary = _summary(reports, rows, 0.0)
    with open(out / "validation_log.jsonl", "w", encoding="utf-8") as log_file:
        def log_line(entry: dict) -> None:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()

        for spec in dict.fromkeys(sources):
            report, pkg_rows = _build_package(spec, out, cfg, log_line, progress)
            _pack_repo(out / "repos" / f"{report.name}-{report.version}", keep=bool(pkg_rows))
            reports.append(report)
            rows[report.split] += pkg_rows
            if report.problem:
                progress(f"[swe make-tasks] {report.name}: skipped: {report.problem}")
            else:
                progress(f"[swe make-tasks] {report.name} {report.version} ({report.split}): kept {report.kept} of "
                         f"{report.tried} mutants (yield {report.as_dict()['yield']:.2f}) in {report.seconds:.0f} s")
            for split, split_rows in rows.items():
                write_split(split_rows, out / f"{split}.parquet")
            summary = _summary(reports, rows, time.monotonic() - start)
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
