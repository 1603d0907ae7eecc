"""Host-side file and git work of the SWE environment: episode roots, repository copies,
patches, the baseline repository and the submission diff, ownership, clean-up.

Nothing here runs model-written code: commands the model writes go through the sandbox
(``env.py``). What runs here is ``git`` on the host, on a tree the model may have tampered
with, so every call is isolated from the host's git configuration (no system or global
config, no hooks, ``safe.directory=*`` because the files belong to the sandbox's uid) and the
baseline's git dir lives outside the tree the sandbox can see.

Layout of an episode root (``<root>/<owner_tag>/ep-XXXX/``, world-searchable so that the
sandbox uid of bwrap-as-root can reach its work dir):

    workspace/      the repository copy the model works in (mounted at /work), with a .git
    baseline.git/   the starting state's git dir: the submission is the diff against it
    tools/          edit_via_str_replace, mounted read-only and put on PATH
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# Kept out of the baseline and of every diff: interpreter and test-runner droppings.
IGNORED = ("__pycache__/", "*.py[cod]", ".pytest_cache/", "*.egg-info/", ".mypy_cache/")
GIT_TIMEOUT_S = 120.0
_IDENTITY = ("-c", "user.name=forge-swe", "-c", "user.email=forge-swe@localhost")
_DATE = "2000-01-01T00:00:00+0000"   # a fixed date: the same task gives the same baseline commit


class GitError(RuntimeError):
    """A host-side git command failed."""


def git(args: list[str], *, cwd: str | Path | None = None, git_dir: str | Path | None = None,
        work_tree: str | Path | None = None, stdin: str | None = None,
        timeout: float = GIT_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run host git isolated from the host's config; raises ``GitError`` with its stderr."""
    cmd = ["git", "-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null", "-c", "core.quotePath=false"]
    if git_dir is not None:
        cmd.append(f"--git-dir={git_dir}")
    if work_tree is not None:
        cmd.append(f"--work-tree={work_tree}")
    here = Path(cwd if cwd is not None else work_tree or ".").resolve()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0", "HOME": "/nonexistent",
           # never discover a repository above the tree (a root inside some checkout)
           "GIT_CEILING_DIRECTORIES": str(here.parent),
           "GIT_AUTHOR_DATE": _DATE, "GIT_COMMITTER_DATE": _DATE}
    try:
        proc = subprocess.run(cmd + args, cwd=here, env=env, input=stdin, capture_output=True, text=True,
                              errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise GitError(f"git {' '.join(args[:2])} timed out after {timeout:g} s") from e
    if proc.returncode != 0:
        raise GitError(f"git {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def apply_patch(tree: str | Path, patch: str, excludes: tuple[str, ...] = ()) -> str | None:
    """Apply a git-style patch to ``tree`` (not a repository); None on success, else git's
    complaint. All or nothing: ``git apply`` changes no file when any hunk fails.
    ``excludes`` are ``git apply --exclude`` patterns (``*`` also matches ``/``)."""
    if not patch.strip():
        return None
    if not patch.endswith("\n"):
        patch += "\n"
    try:
        git(["apply", "--whitespace=nowarn", *(f"--exclude={p}" for p in excludes), "-"], cwd=tree, stdin=patch)
    except GitError as e:
        return str(e)
    return None


def make_dir(path: Path) -> Path:
    """``mkdir -p`` with mode 0755 on what it creates (bwrap-as-root's sandbox uid must be
    able to traverse the episode root to its work dir)."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
        os.chmod(p, 0o755)
    return path


def new_episode_root(root: str | Path, owner_tag: str, prefix: str = "ep-") -> Path:
    """A fresh, world-searchable directory under ``<root>/<owner_tag>/``."""
    owner = make_dir(Path(root).resolve() / owner_tag)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=owner))
    os.chmod(path, 0o755)   # mkdtemp makes 0700
    return path


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a source tree (a folder, or its ``.tar.gz`` archive: ``forge_ray.env.archive``),
    keeping symlinks as symlinks (never following them out of it)."""
    from forge_ray.env.archive import is_archive, unpack_tree

    if is_archive(src):
        if dst.exists():
            raise FileExistsError(f"copy_tree: {dst} exists")
        unpack_tree(src, dst)
    else:
        shutil.copytree(src, dst, symlinks=True)
    os.chmod(dst, 0o755)


def init_baseline(git_dir: Path, work_tree: Path) -> None:
    """Record ``work_tree`` as the starting state: one commit in ``git_dir`` (outside it)."""
    git(["init", "-q", "--template="], git_dir=git_dir, work_tree=work_tree)
    info = git_dir / "info"
    info.mkdir(exist_ok=True)
    (info / "exclude").write_text("\n".join(IGNORED) + "\n")
    # The repository's own .gitignore applies, as it would in a checkout: files it ignores are
    # neither part of the starting state nor of a submission.
    git(["add", "-A", "."], git_dir=git_dir, work_tree=work_tree)
    git([*_IDENTITY, "commit", "-q", "--allow-empty", "--no-verify", "-m", "starting state"],
        git_dir=git_dir, work_tree=work_tree)


def give_git_dir(git_dir: Path, work_tree: Path) -> None:
    """A normal ``.git`` in the work tree for the model (``git diff``/``status``/``commit``
    work as usual): a copy of the baseline's git dir. The submission never reads it."""
    dot_git = work_tree / ".git"
    shutil.copytree(git_dir, dot_git, symlinks=True)
    git(["config", "--unset", "core.worktree"], git_dir=dot_git)
    git(["config", "user.name", "forge-swe"], git_dir=dot_git)
    git(["config", "user.email", "forge-swe@localhost"], git_dir=dot_git)


def diff_against_baseline(git_dir: Path, work_tree: Path) -> str:
    """The work tree's changes since the starting state, as a ``git apply``-able patch. Uses
    only ``git_dir`` (out of the sandbox's reach): a model that commits, resets or deletes its
    own ``.git`` cannot hide or fake what it changed."""
    git(["add", "-A", "."], git_dir=git_dir, work_tree=work_tree)
    head = git(["rev-parse", "HEAD"], git_dir=git_dir, work_tree=work_tree).stdout.strip()
    return git(["diff", "--cached", "--binary", "--no-color", "--no-ext-diff", "--no-textconv", head],
               git_dir=git_dir, work_tree=work_tree).stdout


def chown_tree(path: Path, uid: int) -> None:
    """Give the sandbox's uid the whole tree (``BwrapSandbox`` chowns only its top)."""
    os.lchown(path, uid, uid)
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(top, name), uid, uid)


def _retry_writable(func, path, _exc) -> None:
    """rmtree's error hook: a dir the program made read-only (matters when not root)."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
        func(path)
    except OSError:
        pass


def remove_tree(path: str | Path) -> None:
    """Delete ``path`` and everything in it; quiet when it is already gone."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=_retry_writable)
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)


def sweep(root: str | Path, owner_tag: str | None = None) -> list[str]:
    """Remove episode roots left behind by an env that died before ``close()``.

    With ``owner_tag``: everything under ``<root>/<owner_tag>/`` (the env pool calls this with
    the dead actor's tag when it replaces it). Without: the dirs of every ``pid<N>`` owner
    whose process N no longer runs on this host. Returns the owner dirs removed."""
    base = Path(root)
    if not base.is_dir():
        return []
    if owner_tag is not None:
        if not owner_tag or "/" in owner_tag or owner_tag in (".", ".."):
            raise ValueError(f"sweep: bad owner_tag {owner_tag!r}")
        victims = [base / owner_tag]
    else:
        victims = [p for p in base.iterdir() if p.is_dir() and _dead_pid_owner(p.name)]
    removed = []
    for owner in victims:
        if owner.exists():
            remove_tree(owner)
            removed.append(str(owner))
    return removed


def _dead_pid_owner(name: str) -> bool:
    if not (name.startswith("pid") and name[3:].isdigit()):
        return False
    try:
        os.kill(int(name[3:]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

