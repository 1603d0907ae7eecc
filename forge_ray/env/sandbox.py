"""Run untrusted commands for environments: isolation, resource limits, bounded output.

    with make_sandbox() as sb:                # bwrap if usable, else process (+ WARNING)
        r = sb.run(["python3", "-c", "print(open('in.txt').read())"], files={"in.txt": "hi"})

Backends: ``bwrap`` (bubblewrap: read-only system, private /work, no network, own namespaces;
as root each sandbox drops to its own unprivileged host uid), ``process`` (rlimits only, no
isolation: a fallback that logs a WARNING), ``container`` (``docker/podman exec``, untested).
All of them kill the whole process tree at the wall-clock timeout and read stdout/stderr
incrementally, keeping head and tail. docs/sandbox.md says what each guarantees and not.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from forge_ray.env.proctree import (  # noqa: F401 - truncate_output is part of this API
    SandboxError,
    SandboxLimits,
    SandboxResult,
    claim_uid,
    execute,
    Launch,
    prlimit_prefix,
    release_uid,
    truncate_output,
)

log = logging.getLogger(__name__)

BACKENDS = ("auto", "bwrap", "process", "container")
INSTALL_HINT = "run scripts/install_system_deps.sh as root (apt-get install bubblewrap)"
INNER_WORKDIR = "/work"
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class Sandbox:
    """Runs commands under one backend's isolation and ``limits``; use as a context manager."""

    backend = "abstract"

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._lock = threading.Lock()   # one run at a time: a run's end kills all its uid's processes

    @property
    def workdir(self) -> str:
        raise NotImplementedError

    def run(self, argv: Sequence[str], stdin: str | None = None, files: Mapping[str, str | bytes] | None = None,
            env: Mapping[str, str] | None = None) -> SandboxResult:
        """Run ``argv`` in the work dir after writing ``files`` (paths relative to it) there."""
        if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
        with self._lock:
            if files:
                self.write_files(files)
            return execute(self._launch(list(argv), dict(env or {})), stdin, self.limits, self.backend)

    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        raise NotImplementedError

    def _launch(self, argv: list[str], env: dict[str, str]) -> Launch:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cleanup(path: str | None, uid: int | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
    release_uid(uid)


def _check_binds(ro_binds: Mapping[str, str] | None) -> dict[str, str]:
    """``ro_binds`` as absolute host dir -> absolute inside path; refuses anything else."""
    binds = {}
    for host, inside in (ro_binds or {}).items():
        if not (os.path.isabs(host) and os.path.isdir(host)):
            raise ValueError(f"ro_binds: host path {host!r} is not an existing absolute directory")
        if not os.path.isabs(inside) or os.path.normpath(inside) in ("/", INNER_WORKDIR):
            raise ValueError(f"ro_binds: inside path {inside!r} must be absolute, not / or {INNER_WORKDIR}")
        binds[os.path.normpath(host)] = os.path.normpath(inside)
    return binds


class _HostSandbox(Sandbox):
    """A sandbox whose work dir is a host directory (bwrap, process).

    ``ro_binds`` (host dir -> path inside) makes directories of tools visible read-only and puts
    them in front of PATH: bwrap mounts each at its inside path; the process backend cannot
    mount, so it puts the host dirs themselves on PATH."""

    def __init__(self, limits: SandboxLimits | None = None, workdir: str | os.PathLike | None = None,
                 ro_binds: Mapping[str, str] | None = None) -> None:
        super().__init__(limits)
        self.ro_binds = _check_binds(ro_binds)
        self._uid = claim_uid()
        owned = workdir is None
        path = Path(tempfile.mkdtemp(prefix="forge-sandbox-") if owned else workdir).resolve()
        path.mkdir(parents=True, exist_ok=True)
        if self._uid is not None:
            os.chown(path, self._uid, self._uid)
        self._workdir = path
        self._finalizer = weakref.finalize(self, _cleanup, str(path) if owned else None, self._uid)

    @property
    def workdir(self) -> str:
        return str(self._workdir)

    def _resolve(self, rel: str, create_parents: bool = False) -> Path:
        """The host path of ``rel`` inside the work dir; refuses escapes and symlinks."""
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise ValueError(f"sandbox file path must be relative, without '..': {rel!r}")
        cur = self._workdir
        for part in parts[:-1]:
            cur = cur / part
            if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
                raise ValueError(f"sandbox file path {rel!r}: {part!r} is not a directory")
            if not cur.exists() and create_parents:
                cur.mkdir()
                if self._uid is not None:
                    os.chown(cur, self._uid, self._uid)
        return cur / parts[-1]

    def _open(self, rel: str, flags: int, create_parents: bool = False) -> int:
        """O_NOFOLLOW (no planted symlink), O_NONBLOCK (no planted FIFO), regular files only."""
        fd = os.open(self._resolve(rel, create_parents), flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"sandbox file {rel!r} is not a regular file")
        return fd

    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        for rel, content in files.items():
            data = content.encode() if isinstance(content, str) else bytes(content)
            fd = self._open(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, create_parents=True)
            try:
                if self._uid is not None:
                    os.fchown(fd, self._uid, self._uid)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def read_file(self, rel: str, max_bytes: int = 1 << 20) -> str:
        """A file the program wrote (at most ``max_bytes``); never follows a symlink."""
        fd = self._open(rel, os.O_RDONLY)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(max_bytes).decode("utf-8", errors="replace")
        finally:
            os.close(fd)

    def close(self) -> None:
        self._finalizer()


class ProcessSandbox(_HostSandbox):
    """A plain subprocess with rlimits, own session, timeout and truncation. No namespaces:
    the program sees the host's files and network. Only for machines without bubblewrap."""

    backend = "process"

    def __init__(self, limits: SandboxLimits | None = None, workdir: str | os.PathLike | None = None,
                 ro_binds: Mapping[str, str] | None = None) -> None:
        super().__init__(limits, workdir, ro_binds)
        log.warning("SANDBOX WARNING: using the 'process' backend: NO filesystem or network isolation "
                    "for untrusted code (bubblewrap missing or unusable; %s)", INSTALL_HINT)

    def _launch(self, argv: list[str], env: dict[str, str]) -> Launch:
        base = {"PATH": ":".join([*self.ro_binds, _BASE_PATH]), "HOME": self.workdir, "TMPDIR": self.workdir,
                "LANG": "C.UTF-8"}
        return Launch(argv, self.workdir, {**base, **env}, self._uid)


@lru_cache(maxsize=1)
def _bwrap_version() -> tuple[int, ...]:
    out = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, timeout=10).stdout
    try:
        return tuple(int(x) for x in out.split()[-1].split("."))
    except (IndexError, ValueError):
        return (0,)


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


class BwrapSandbox(_HostSandbox):
    """bubblewrap: read-only system, private /work, no network, own pid/ipc/uts/user namespaces."""

    backend = "bwrap"

    def __init__(self, limits: SandboxLimits | None = None, workdir: str | os.PathLike | None = None,
                 ro_binds: Mapping[str, str] | None = None) -> None:
        problem = bwrap_problem()
        if problem is not None:
            raise SandboxError(f"bwrap backend unavailable: {problem}; {INSTALL_HINT}, or use backend='process'")
        if os.geteuid() == 0:   # bwrap runs as the sandbox uid: it must reach the work dir
            path = Path(workdir if workdir is not None else Path(tempfile.gettempdir()) / "forge-sandbox-*").resolve()
            for parent in path.parents:
                if parent.exists() and not os.stat(parent).st_mode & 0o001:
                    raise SandboxError(f"work dir {path} is unreachable for the sandbox uid: {parent} is not "
                                       "world-searchable (chmod o+x it, or use a directory under /tmp)")
        super().__init__(limits, workdir, ro_binds)

    def _launch(self, argv: list[str], env: dict[str, str]) -> Launch:
        path = ":".join([*self.ro_binds.values(), _BASE_PATH])
        env = {"PATH": path, "HOME": INNER_WORKDIR, "TMPDIR": "/tmp", "LANG": "C.UTF-8", **env}
        modern = _bwrap_version() >= (0, 8)
        cmd = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
               "--hostname", "sandbox", "--die-with-parent", "--new-session",
               *(["--disable-userns"] if modern else []), *_system_binds(),
               "--proc", "/proc", "--dev", "/dev",
               *(["--size", str(self.limits.tmp_mb << 20)] if modern else []), "--tmpfs", "/tmp",
               "--bind", self.workdir, INNER_WORKDIR, "--chdir", INNER_WORKDIR, "--clearenv"]
        for host, inside in self.ro_binds.items():
            cmd += ["--ro-bind", host, inside]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        prefix = prlimit_prefix(self.limits)   # inside: NPROC then counts this sandbox's user namespace
        inner = prefix is not None and prefix[0].startswith(("/usr/", "/bin/", "/sbin/"))
        cmd += ["--", *(prefix if inner else []), *argv]
        return Launch(cmd, None, {"PATH": _BASE_PATH}, self._uid, rlimits=not inner)


class ContainerSandbox(Sandbox):
    """``docker exec``/``podman exec`` into an already running container named ``container``.

    UNTESTED in this repository (no running container runtime on the development machine). forge_ray
    enforces only the wall timeout and output truncation; isolation and resource limits are
    whatever the container was started with. On timeout the exec client is killed, and the
    runtime may leave the command running inside the container.
    """

    backend = "container"

    def __init__(self, container: str, limits: SandboxLimits | None = None, workdir: str = INNER_WORKDIR,
                 runtime: str | None = None) -> None:
        super().__init__(limits)
        self.runtime = runtime or shutil.which("docker") or shutil.which("podman")
        if not container or self.runtime is None:
            raise SandboxError("container backend needs a container name and docker or podman on PATH")
        self.container, self._workdir = container, workdir

    @property
    def workdir(self) -> str:
        return self._workdir

    def _exec(self, argv: list[str], env: Mapping[str, str]) -> list[str]:
        flags = [f"--env={k}={v}" for k, v in env.items()]
        return [self.runtime, "exec", "-i", f"--workdir={self._workdir}", *flags, self.container, *argv]

    def _launch(self, argv: list[str], env: dict[str, str]) -> Launch:
        return Launch(self._exec(argv, env), None, dict(os.environ), rlimits=False)

    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1"'
        for rel, content in files.items():
            text = content if isinstance(content, str) else content.decode()
            r = execute(Launch(self._exec(["sh", "-c", script, "sh", rel], {}), None, dict(os.environ),
                                 rlimits=False), text, self.limits, self.backend)
            if not r.ok:
                raise SandboxError(f"writing {rel!r} into container {self.container}: {r.stderr.strip()}")


@lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None if bubblewrap can start a sandbox here (as the uid sandboxes use), else why not."""
    if shutil.which("bwrap") is None:
        return "bwrap is not on PATH"
    uid = claim_uid()
    try:
        launch = Launch(["bwrap", "--unshare-all", "--unshare-user", *_system_binds(), "--proc", "/proc",
                          "--dev", "/dev", "--", "/bin/true"], "/", {"PATH": _BASE_PATH}, uid, rlimits=False)
        r = execute(launch, None, SandboxLimits(wall_seconds=20), "bwrap")
    finally:
        release_uid(uid)
    return None if r.ok else f"bwrap cannot create a sandbox here (exit {r.exit_code}): {r.stderr.strip()}"


def available_backend() -> str:
    """``"bwrap"`` where bubblewrap works, else ``"process"`` (no isolation)."""
    return "bwrap" if bwrap_problem() is None else "process"


def make_sandbox(backend: str = "auto", limits: SandboxLimits | None = None,
                 workdir: str | os.PathLike | None = None, container: str | None = None,
                 ro_binds: Mapping[str, str] | None = None) -> Sandbox:
    """A sandbox of ``backend`` (auto: bwrap if usable, else process with a WARNING).
    ``ro_binds``: host dir -> inside path, read-only and on PATH (not for ``container``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = available_backend()
    if backend == "bwrap":
        return BwrapSandbox(limits, workdir, ro_binds)
    if backend == "process":
        return ProcessSandbox(limits, workdir, ro_binds)
    if ro_binds:
        raise ValueError("ro_binds is not supported by the 'container' backend (mount them when starting the container)")
    if container is None:
        raise ValueError("backend 'container' needs container=NAME (a running docker/podman container)")
    return ContainerSandbox(container, limits, str(workdir or INNER_WORKDIR))
