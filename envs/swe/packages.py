"""Getting a Python package's source and test suite, and finding its parts.

    src = fetch_sdist("toolz", "1.2.0", cache_dir)      # pip download --no-binary :all:, unpacked, cached
    src = from_local("path/to/checkout")                # a directory, or "path@ref" of a git repository
    tree = prepare(export_tree(src.root, "out/repos/toolz-1.2.0"))
    tree.packages, tree.source_files, tree.test_files, tree.problem

``prepare`` handles flat (``pkg/``, ``module.py``) and ``src/`` layouts and tests in
``tests/``, ``test/``, inside the package, or ``test_*.py`` at the top. A tree whose tests
cannot run gets ``problem`` (a sentence naming the package), never an exception.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "forge_ray" / "swe_sdists"
# Directories that are never package code or tests to run, and never copied into a task's repo.
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".tox", ".nox", ".eggs", ".pytest_cache", ".mypy_cache",
              ".ruff_cache", "build", "dist", ".venv", "venv", "node_modules", ".github", ".idea", ".vscode"}
_NOT_PACKAGES = {"tests", "test", "testing", "docs", "doc", "documentation", "examples", "example", "benchmarks",
                 "benchmark", "bench", "tools", "scripts", "bin", "ci", "changelog.d", "requirements", "src"}
_NOT_MODULES = {"setup", "conftest", "noxfile", "versioneer", "fabfile", "tasks", "runtests", "run_tests",
                "bootstrap", "ez_setup", "distribute_setup", "manage", "dodo", "_dump"}
_BINARY_EXT = {".pyc", ".pyo", ".so", ".pyd", ".dll", ".dylib", ".exe", ".o", ".a", ".whl", ".egg", ".zip", ".gz",
               ".tgz", ".bz2", ".xz", ".tar", ".png", ".jpg", ".jpeg", ".gif", ".ico", ".bmp", ".svg", ".pdf",
               ".woff", ".woff2", ".ttf", ".eot", ".mo", ".db", ".sqlite", ".pickle", ".pkl", ".npy", ".npz"}
_MAX_FILE_BYTES = 1 << 20


class PackageError(RuntimeError):
    """A package's source could not be fetched, unpacked or read."""


@dataclass(frozen=True)
class PackageSource:
    """An unpacked source tree of ``name`` at ``version`` (``origin``: where it came from)."""

    name: str
    version: str
    root: Path
    origin: str


@dataclass(frozen=True)
class PackageTree:
    """A prepared tree: what is importable, what may be mutated, what the tests are."""

    name: str
    version: str
    root: Path
    packages: tuple[str, ...]        # package dirs / top-level modules, relative to root
    source_files: tuple[str, ...]    # package .py files that are not tests (mutation targets)
    test_files: tuple[str, ...]
    problem: str | None = None       # why this package's tests cannot run, or None

    @property
    def ok(self) -> bool:
        return self.problem is None


def normalize(name: str) -> str:
    """PEP 503 name: ``More_Itertools`` -> ``more-itertools``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _safe_extract(archive: Path, dest: Path) -> None:
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                if member.startswith("/") or ".." in Path(member).parts:
                    raise PackageError(f"{archive.name}: unsafe path {member!r} in the archive")
            z.extractall(dest)
        return
    with tarfile.open(archive) as t:
        t.extractall(dest, filter="data")   # no absolute paths, no links out, no device files


def _downloaded_file(pip_output: str, spec: str) -> Path:
    found = re.findall(r"(?:Saved|File was already downloaded) (\S+)", pip_output)
    if not found:
        raise PackageError(f"pip download {spec}: could not find the downloaded file in pip's output:\n"
                           f"{pip_output[-1500:]}")
    return Path(found[-1])


def fetch_sdist(name: str, version: str | None = None, cache_dir: str | os.PathLike | None = None) -> PackageSource:
    """Download (or reuse) the sdist of ``name[==version]``, unpack it, return its source root."""
    cache = Path(cache_dir or DEFAULT_CACHE)
    norm = normalize(name)
    if version is not None and (cache / "src" / f"{norm}-{version}").is_dir():
        return _cached(cache / "src" / f"{norm}-{version}", norm, version)
    spec = f"{name}=={version}" if version else name
    (cache / "sdists").mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--disable-pip-version-check",
           "-d", str(cache / "sdists"), spec]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise PackageError(f"pip download {spec} timed out after {e.timeout:.0f} s") from None
    if r.returncode != 0:
        raise PackageError(f"pip download {spec} failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-2000:]}")
    archive = _downloaded_file(r.stdout + r.stderr, spec)
    stem = re.sub(r"\.(tar\.gz|tar\.bz2|tgz|zip)$", "", archive.name)
    got_version = stem.rsplit("-", 1)[-1] if "-" in stem else (version or "0")
    dest = cache / "src" / f"{norm}-{got_version}"
    if not dest.is_dir():
        (cache / "src").mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{norm}-", dir=cache / "src"))
        try:
            _safe_extract(archive, tmp)
            tops = [p for p in tmp.iterdir()]
            root = tops[0] if len(tops) == 1 and tops[0].is_dir() else tmp
            root.rename(dest)
        except (OSError, tarfile.TarError, zipfile.BadZipFile) as e:
            raise PackageError(f"{archive.name}: cannot unpack: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _cached(dest, norm, got_version)


def _cached(root: Path, name: str, version: str) -> PackageSource:
    return PackageSource(name, version, root, f"pypi:{name}=={version}")


def read_metadata(root: Path) -> tuple[str | None, str | None]:
    """(name, version) from PKG-INFO, pyproject.toml, setup.cfg or setup.py, where static."""
    pkg_info = root / "PKG-INFO"
    if pkg_info.is_file():
        text = pkg_info.read_text(errors="replace")
        name, version = re.search(r"^Name: *(.+)$", text, re.M), re.search(r"^Version: *(.+)$", text, re.M)
        if name and version:
            return name.group(1).strip(), version.group(1).strip()
    name = version = None
    if (root / "pyproject.toml").is_file():
        import tomllib

        try:
            project = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {})
            name, version = project.get("name"), project.get("version")
        except tomllib.TOMLDecodeError:
            pass
    if (root / "setup.cfg").is_file() and not (name and version):
        cfg = configparser.ConfigParser(interpolation=None)
        try:
            cfg.read(root / "setup.cfg")
            name = name or cfg.get("metadata", "name", fallback=None)
            v = cfg.get("metadata", "version", fallback=None)
            version = version or (v if v and not v.startswith(("attr:", "file:")) else None)
        except configparser.Error:
            pass
    if (root / "setup.py").is_file() and not name:
        m = re.search(r"""\bname\s*=\s*['"]([^'"]+)['"]""", (root / "setup.py").read_text(errors="replace"))
        name = m.group(1) if m else None
    return name, version


def from_local(path: str | os.PathLike, ref: str | None = None, cache_dir: str | os.PathLike | None = None) -> PackageSource:
    """A local directory, or the tree of git repository ``path`` at ``ref`` (exported to the cache)."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise PackageError(f"local package {path}: not a directory")
    root, origin = path, str(path)
    if ref is not None:
        sha = _git(path, "rev-parse", "--verify", f"{ref}^{{commit}}").strip()
        root = Path(cache_dir or DEFAULT_CACHE) / "git" / f"{path.name}-{sha[:12]}"
        if not root.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".git-export-"))
            archive = tmp / "tree.tar"
            _git(path, "archive", "--format=tar", "-o", str(archive), sha)
            _safe_extract(archive, tmp / "tree")
            root.parent.mkdir(parents=True, exist_ok=True)
            (tmp / "tree").rename(root)
            shutil.rmtree(tmp, ignore_errors=True)
        origin = f"{path}@{ref}"
    name, version = read_metadata(root)
    if version is None and ref is not None:
        version = f"0+g{root.name.rsplit('-', 1)[-1][:7]}"
    return PackageSource(normalize(name or path.name), version or "0", root, origin)


def _git(repo: Path, *args: str) -> str:
    r = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise PackageError(f"git {' '.join(args)} in {repo} failed: {r.stderr.strip()}")
    return r.stdout


def resolve(spec: str, cache_dir: str | os.PathLike | None = None) -> PackageSource:
    """``NAME``, ``NAME==VERSION``, a directory, or ``DIR@REF`` (a git repository at a ref)."""
    base, _, ref = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if Path(spec).is_dir():
        return from_local(spec, cache_dir=cache_dir)
    if base and Path(base).is_dir():
        return from_local(base, ref, cache_dir)
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:==([A-Za-z0-9.+!_-]+))?", spec.strip())
    if m is None:
        raise PackageError(f"{spec!r} is neither NAME, NAME==VERSION, a directory, nor DIR@REF")
    return fetch_sdist(m.group(1), m.group(2), cache_dir)


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    skip = set()
    for name in names:
        full = os.path.join(directory, name)
        if os.path.islink(full):
            skip.add(name)
        elif os.path.isdir(full):
            if name in _SKIP_DIRS or name.endswith(".egg-info") or name.endswith(".dist-info"):
                skip.add(name)
        elif Path(name).suffix.lower() in _BINARY_EXT or os.path.getsize(full) > _MAX_FILE_BYTES:
            skip.add(name)
    return skip


def export_tree(source_root: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the source tree to ``dest`` without VCS data, caches, build outputs, binaries, links."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source_root, dest, ignore=_copy_ignore, symlinks=True)
    return dest


def _is_test_file(rel: Path) -> bool:
    return rel.suffix == ".py" and (rel.name.startswith("test_") or rel.stem.endswith("_test")
                                    or rel.name == "conftest.py" or any(p in ("tests", "test", "testing")
                                                                         for p in rel.parts[:-1]))


def _walk_py(root: Path, base: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        out += [str((Path(dirpath) / f).relative_to(root)) for f in sorted(filenames) if f.endswith(".py")]
    return out


def _packages(root: Path) -> list[str]:
    found = []
    for base in ([root / "src"] if (root / "src").is_dir() else []) + [root]:
        for entry in sorted(base.iterdir()):
            if entry.is_dir() and entry.name not in _NOT_PACKAGES and entry.name not in _SKIP_DIRS \
                    and entry.name.isidentifier() and (entry / "__init__.py").is_file():
                found.append(str(entry.relative_to(root)))
            elif entry.is_file() and entry.suffix == ".py" and entry.stem.isidentifier() \
                    and entry.stem not in _NOT_MODULES and not _is_test_file(Path(entry.name)):
                found.append(str(entry.relative_to(root)))
    return found


def prepare(source: PackageSource | str | os.PathLike, name: str | None = None,
            version: str | None = None) -> PackageTree:
    """Find the importable package(s), the mutable source files and the test files of a tree."""
    if isinstance(source, PackageSource):
        root, name, version = source.root, name or source.name, version or source.version
    else:
        root = Path(source).resolve()
        meta = read_metadata(root) if root.is_dir() else (None, None)
        name, version = normalize(name or meta[0] or root.name), version or meta[1] or "0"
    if not root.is_dir():
        return PackageTree(name, version, root, (), (), (), f"{name}: source root {root} is not a directory")
    packages = _packages(root)
    sources: list[str] = []
    for pkg in packages:
        files = _walk_py(root, root / pkg) if (root / pkg).is_dir() else [pkg]
        sources += [f for f in files if not _is_test_file(Path(f).relative_to(Path(pkg).parent))]
    tests = [f for f in _walk_py(root, root) if Path(f).name.startswith("test_") or Path(f).stem.endswith("_test")]
    problem = None
    if not packages:
        problem = f"{name} {version}: no importable package or module at the top level or under src/ of {root}"
    elif not tests:
        problem = f"{name} {version}: no test files (tests/, test/, test_*.py, *_test.py) in {root}"
    elif not sources:
        problem = f"{name} {version}: the package has no Python source outside its tests"
    return PackageTree(name, version, root, tuple(packages), tuple(sources), tuple(tests), problem)
