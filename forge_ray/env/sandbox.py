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

import codecs
import logging
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

log = logging.getLogger(__name__)

BACKENDS = ("auto", "bwrap", "process", "container")
INSTALL_HINT = "run scripts/install_system_deps.sh as root (apt-get install bubblewrap)"
INNER_WORKDIR = "/work"
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_DRAIN_SECONDS = 0.5   # after the program exits, how long to wait for EOF from leftovers
_SWEEP_SECONDS = 5.0
# Root drops each sandbox to its own uid: a block of 256 uids per host pid, far above the
# ranges /etc/subuid hands out, below 2**31 (tools mishandle larger uids).
_UID_BASE, _UID_SLOTS = 1_000_000_000, 256


class SandboxError(RuntimeError):
    """The sandbox itself cannot be set up (not: the program inside failed)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits. Memory is address space (RLIMIT_AS); processes count the sandbox uid's."""

    cpu_seconds: int = 10
    memory_mb: int = 1024
    max_processes: int = 64
    file_size_mb: int = 64
    tmp_mb: int = 64            # size of the bwrap /tmp tmpfs (bubblewrap >= 0.8)
    wall_seconds: float = 30.0
    max_output_chars: int = 10_000

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "memory_mb", "max_processes", "file_size_mb", "tmp_mb", "wall_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_output_chars < 2:
            raise ValueError(f"SandboxLimits.max_output_chars must be >= 2, got {self.max_output_chars!r}")


@dataclass(frozen=True)
class SandboxResult:
    """``exit_code``: the program's status; 128+N when killed by signal N; 124 on wall timeout."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    truncated: bool
    wall_seconds: float
    killed_by: str | None       # "timeout", or a signal name ("SIGXCPU", "SIGKILL", ...)
    backend: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _note(cut: int) -> str:
    return f"\n... [{cut} characters truncated] ...\n"


def truncate_output(text: str, max_chars: int) -> str:
    """``text`` if it fits in ``max_chars``, else its head and tail around a note of the cut."""
    if len(text) <= max_chars:
        return text
    head = max_chars // 2
    tail = max_chars - head
    return text[:head] + _note(len(text) - head - tail) + text[len(text) - tail:]


class _Capture:
    """Decodes a byte stream incrementally, keeping only head + rolling tail and the count."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.head_cap = max_chars // 2
        self.tail_cap = max_chars - self.head_cap
        self.head = ""
        self.tail = ""
        self.total = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self._decoder.decode(data, final)
        self.total += len(text)
        if len(self.head) < self.head_cap:
            take = self.head_cap - len(self.head)
            self.head += text[:take]
            text = text[take:]
        if text:
            self.tail += text
            if len(self.tail) > 2 * self.tail_cap:
                self.tail = self.tail[-self.tail_cap:]

    @property
    def truncated(self) -> bool:
        return self.total > self.max_chars

    def text(self) -> str:
        if not self.truncated:
            return self.head + self.tail
        return self.head + _note(self.total - self.head_cap - self.tail_cap) + self.tail[-self.tail_cap:]


@dataclass(frozen=True)
class _Launch:
    cmd: list[str]
    cwd: str | None
    env: dict[str, str]
    uid: int | None = None      # host uid to run as (root only); its processes are swept
    rlimits: bool = True        # prefix or preexec rlimits (False: already inside cmd, or container)


def _rlimit_values(limits: SandboxLimits) -> dict[str, tuple[int, int]]:
    mb = 1 << 20
    wanted = {
        "AS": (limits.memory_mb * mb, limits.memory_mb * mb),
        "CPU": (limits.cpu_seconds, limits.cpu_seconds + 1),   # SIGXCPU, then SIGKILL a second later
        "NPROC": (limits.max_processes, limits.max_processes),
        "FSIZE": (limits.file_size_mb * mb, limits.file_size_mb * mb),
        "CORE": (0, 0),
    }
    out = {}
    for name, (soft, hard) in wanted.items():   # never ask for more than this process may grant
        cur_hard = resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))[1]
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        out[name] = (soft, hard)
    return out


def _prlimit_prefix(limits: SandboxLimits) -> list[str] | None:
    """``prlimit --as=... -- `` (util-linux), or None where it is missing (then preexec_fn)."""
    exe = shutil.which("prlimit", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if exe is None:
        return None
    return [exe, *(f"--{n.lower()}={s}:{h}" for n, (s, h) in _rlimit_values(limits).items()), "--"]


_uid_lock = threading.Lock()
_uid_slots: set[int] = set()


def _claim_uid() -> int | None:
    """A host uid of this process's own for one sandbox when running as root, else None."""
    if os.geteuid() != 0:
        return None
    with _uid_lock:
        free = next((s for s in range(_UID_SLOTS) if s not in _uid_slots), None)
        if free is None:
            raise SandboxError(f"more than {_UID_SLOTS} live sandboxes in one process; close() some")
        _uid_slots.add(free)
    return _UID_BASE + os.getpid() * _UID_SLOTS + free


def _release_uid(uid: int | None) -> None:
    if uid is not None:
        with _uid_lock:
            _uid_slots.discard((uid - _UID_BASE) % _UID_SLOTS)


_PF_EXITING = 0x4


def _live_pids_of_uid(uid: int) -> list[int]:
    """Processes of ``uid`` that can still run code: not zombies, not already in exit.

    (The pid-namespace init bwrap leaves behind is reparented to the host's init, which may
    take seconds to reap it; it is dead already and is not waited for.)"""
    pids, wanted = [], str(uid).encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                status = f.read()
            at = status.index(b"\nUid:")
            if wanted not in status[at:status.index(b"\n", at + 1)].split():
                continue
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                after = f.read().rsplit(b")", 1)[1].split()   # state ppid pgrp session tty tpgid flags
            if after[0] in (b"Z", b"X"):
                continue
            flags = int(after[6])
        except (OSError, ValueError, IndexError):   # exited meanwhile
            continue
        if not flags & _PF_EXITING:
            pids.append(int(entry.name))
    return pids


def _sweep_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a sandbox's own) until none is left."""
    deadline = time.monotonic() + _SWEEP_SECONDS
    while pids := _live_pids_of_uid(uid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            log.warning("sandbox uid %d: %d processes survive SIGKILL: %s", uid, len(pids), pids)
            return
        time.sleep(0.005)


def _spawn(launch: _Launch, limits: SandboxLimits, with_stdin: bool) -> subprocess.Popen:
    cmd, preexec = launch.cmd, None
    if launch.rlimits:
        prefix = _prlimit_prefix(limits)
        if prefix is not None:
            cmd = prefix + cmd
        else:
            values = [(getattr(resource, f"RLIMIT_{n}"), v) for n, v in _rlimit_values(limits).items()]
            preexec = lambda: [resource.setrlimit(*v) for v in values]  # noqa: E731
    drop = {} if launch.uid is None else {"user": launch.uid, "group": launch.uid, "extra_groups": []}
    return subprocess.Popen(
        cmd, cwd=launch.cwd, env=launch.env, stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
        preexec_fn=preexec, **drop)


def _has_exited(proc: subprocess.Popen) -> bool:
    """Whether the program ended, without reaping it: its pid keeps naming its process group."""
    if proc.returncode is not None or not hasattr(os, "waitid"):
        return proc.poll() is not None
    return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_tree(proc: subprocess.Popen, uid: int | None) -> None:
    """SIGKILL the program's process group (start_new_session made it), reap, sweep its uid."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if uid is not None:
        _sweep_uid(uid)


def _service(sel: selectors.BaseSelector, key: selectors.SelectorKey) -> None:
    fd = key.fd
    if isinstance(key.data, list):   # [memoryview of what stdin still has to get]
        try:
            key.data[0] = key.data[0][os.write(fd, key.data[0][:65536]):]
            done = not key.data[0]
        except (BrokenPipeError, BlockingIOError) as e:
            done = isinstance(e, BrokenPipeError)
        if done:
            sel.unregister(fd)
            os.close(fd)
        return
    data = os.read(fd, 65536)
    if data:
        key.data.feed(data)
    else:
        sel.unregister(fd)
        os.close(fd)


def _pump(proc: subprocess.Popen, stdin: bytes | None, deadline: float, uid: int | None,
          out: _Capture, err: _Capture) -> bool:
    """Stream the pipes until EOF and exit, enforcing the deadline; True if it timed out."""
    sel = selectors.DefaultSelector()
    sel.register(os.dup(proc.stdout.fileno()), selectors.EVENT_READ, out)
    sel.register(os.dup(proc.stderr.fileno()), selectors.EVENT_READ, err)
    proc.stdout.close()
    proc.stderr.close()
    if proc.stdin is not None:
        fd = os.dup(proc.stdin.fileno())
        proc.stdin.close()
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_WRITE, [memoryview(stdin or b"")])
    timed_out, exited_at = False, None
    try:
        while True:
            now = time.monotonic()
            if exited_at is None and ((done := _has_exited(proc)) or now >= deadline):
                timed_out = not done
                _kill_tree(proc, uid)   # on exit too: leftovers (background, setsid'ed) die with it
                exited_at = now
            fds = sel.get_map()
            if exited_at is not None and (not fds or now - exited_at > _DRAIN_SECONDS):
                break
            wait = _DRAIN_SECONDS if exited_at is not None else max(0.0, min(0.1, deadline - now))
            if not fds:
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    pass
                continue
            for key, _ in sel.select(wait):
                _service(sel, key)
    finally:
        for key in list(sel.get_map().values()):
            sel.unregister(key.fd)
            os.close(key.fd)
        sel.close()
    out.feed(b"", final=True)
    err.feed(b"", final=True)
    return timed_out


def _exit_status(returncode: int, timed_out: bool) -> tuple[int, str | None]:
    if timed_out:
        return 124, "timeout"
    sig = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 128 + signal.NSIG else 0
    if sig:
        try:
            return 128 + sig, signal.Signals(sig).name
        except ValueError:
            pass
    return returncode, None


def _execute(launch: _Launch, stdin: str | None, limits: SandboxLimits, backend: str) -> SandboxResult:
    start = time.monotonic()
    try:
        proc = _spawn(launch, limits, stdin is not None)
    except OSError as e:   # only without prlimit/bwrap in front: the command itself is missing
        return SandboxResult(127, "", f"{launch.cmd[0]}: {e.strerror}\n", False, False,
                             time.monotonic() - start, None, backend)
    out, err = _Capture(limits.max_output_chars), _Capture(limits.max_output_chars)
    try:
        timed_out = _pump(proc, None if stdin is None else stdin.encode(), start + limits.wall_seconds,
                          launch.uid, out, err)
    finally:
        if proc.returncode is None:
            _kill_tree(proc, launch.uid)
    code, killed_by = _exit_status(proc.returncode, timed_out)
    return SandboxResult(code, out.text(), err.text(), timed_out, out.truncated or err.truncated,
                         time.monotonic() - start, killed_by, backend)


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
            return _execute(self._launch(list(argv), dict(env or {})), stdin, self.limits, self.backend)

    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        raise NotImplementedError

    def _launch(self, argv: list[str], env: dict[str, str]) -> _Launch:
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
    _release_uid(uid)


class _HostSandbox(Sandbox):
    """A sandbox whose work dir is a host directory (bwrap, process)."""

    def __init__(self, limits: SandboxLimits | None = None, workdir: str | os.PathLike | None = None) -> None:
        super().__init__(limits)
        self._uid = _claim_uid()
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

    def __init__(self, limits: SandboxLimits | None = None, workdir: str | os.PathLike | None = None) -> None:
        super().__init__(limits, workdir)
        log.warning("SANDBOX WARNING: using the 'process' backend: NO filesystem or network isolation "
                    "for untrusted code (bubblewrap missing or unusable; %s)", INSTALL_HINT)

    def _launch(self, argv: list[str], env: dict[str, str]) -> _Launch:
        base = {"PATH": _BASE_PATH, "HOME": self.workdir, "TMPDIR": self.workdir, "LANG": "C.UTF-8"}
        return _Launch(argv, self.workdir, {**base, **env}, self._uid)


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

    def __init__(self, limits: SandboxLimits | None = None, workdir: str | os.PathLike | None = None) -> None:
        problem = bwrap_problem()
        if problem is not None:
            raise SandboxError(f"bwrap backend unavailable: {problem}; {INSTALL_HINT}, or use backend='process'")
        if os.geteuid() == 0:   # bwrap runs as the sandbox uid: it must reach the work dir
            path = Path(workdir if workdir is not None else Path(tempfile.gettempdir()) / "forge-sandbox-*").resolve()
            for parent in path.parents:
                if parent.exists() and not os.stat(parent).st_mode & 0o001:
                    raise SandboxError(f"work dir {path} is unreachable for the sandbox uid: {parent} is not "
                                       "world-searchable (chmod o+x it, or use a directory under /tmp)")
        super().__init__(limits, workdir)

    def _launch(self, argv: list[str], env: dict[str, str]) -> _Launch:
        env = {"PATH": _BASE_PATH, "HOME": INNER_WORKDIR, "TMPDIR": "/tmp", "LANG": "C.UTF-8", **env}
        modern = _bwrap_version() >= (0, 8)
        cmd = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--unshare-user", "--uid", "65534", "--gid", "65534",
               "--hostname", "sandbox", "--die-with-parent", "--new-session",
               *(["--disable-userns"] if modern else []), *_system_binds(),
               "--proc", "/proc", "--dev", "/dev",
               *(["--size", str(self.limits.tmp_mb << 20)] if modern else []), "--tmpfs", "/tmp",
               "--bind", self.workdir, INNER_WORKDIR, "--chdir", INNER_WORKDIR, "--clearenv"]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        prefix = _prlimit_prefix(self.limits)   # inside: NPROC then counts this sandbox's user namespace
        inner = prefix is not None and prefix[0].startswith(("/usr/", "/bin/", "/sbin/"))
        cmd += ["--", *(prefix if inner else []), *argv]
        return _Launch(cmd, None, {"PATH": _BASE_PATH}, self._uid, rlimits=not inner)


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

    def _launch(self, argv: list[str], env: dict[str, str]) -> _Launch:
        return _Launch(self._exec(argv, env), None, dict(os.environ), rlimits=False)

    def write_files(self, files: Mapping[str, str | bytes]) -> None:
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1"'
        for rel, content in files.items():
            text = content if isinstance(content, str) else content.decode()
            r = _execute(_Launch(self._exec(["sh", "-c", script, "sh", rel], {}), None, dict(os.environ),
                                 rlimits=False), text, self.limits, self.backend)
            if not r.ok:
                raise SandboxError(f"writing {rel!r} into container {self.container}: {r.stderr.strip()}")


@lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None if bubblewrap can start a sandbox here (as the uid sandboxes use), else why not."""
    if shutil.which("bwrap") is None:
        return "bwrap is not on PATH"
    uid = _claim_uid()
    try:
        launch = _Launch(["bwrap", "--unshare-all", "--unshare-user", *_system_binds(), "--proc", "/proc",
                          "--dev", "/dev", "--", "/bin/true"], "/", {"PATH": _BASE_PATH}, uid, rlimits=False)
        r = _execute(launch, None, SandboxLimits(wall_seconds=20), "bwrap")
    finally:
        _release_uid(uid)
    return None if r.ok else f"bwrap cannot create a sandbox here (exit {r.exit_code}): {r.stderr.strip()}"


def available_backend() -> str:
    """``"bwrap"`` where bubblewrap works, else ``"process"`` (no isolation)."""
    return "bwrap" if bwrap_problem() is None else "process"


def make_sandbox(backend: str = "auto", limits: SandboxLimits | None = None,
                 workdir: str | os.PathLike | None = None, container: str | None = None) -> Sandbox:
    """A sandbox of ``backend`` (auto: bwrap if usable, else process with a WARNING)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = available_backend()
    if backend == "bwrap":
        return BwrapSandbox(limits, workdir)
    if backend == "process":
        return ProcessSandbox(limits, workdir)
    if container is None:
        raise ValueError("backend 'container' needs container=NAME (a running docker/podman container)")
    return ContainerSandbox(container, limits, str(workdir or INNER_WORKDIR))
