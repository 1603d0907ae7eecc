"""Process trees under limits: what every host sandbox backend runs its command with.

``execute`` spawns a launched command (behind ``prlimit``, a sandbox uid when root), reads its
stdout/stderr incrementally keeping head and tail (``truncate_output``), and at the wall-clock
timeout kills the whole tree: the process group, then every process of the sandbox uid.
``SandboxLimits``, ``SandboxResult`` and ``SandboxError`` are re-exported by ``sandbox``.
"""
from __future__ import annotations

import codecs
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("forge_ray.env.sandbox")

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
class Launch:
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


def prlimit_prefix(limits: SandboxLimits) -> list[str] | None:
    """``prlimit --as=... -- `` (util-linux), or None where it is missing (then preexec_fn)."""
    exe = shutil.which("prlimit", path="/usr/bin:/bin:/usr/sbin:/sbin")
    if exe is None:
        return None
    return [exe, *(f"--{n.lower()}={s}:{h}" for n, (s, h) in _rlimit_values(limits).items()), "--"]


_uid_lock = threading.Lock()
_uid_slots: set[int] = set()


def claim_uid() -> int | None:
    """A host uid of this process's own for one sandbox when running as root, else None."""
    if os.geteuid() != 0:
        return None
    with _uid_lock:
        free = next((s for s in range(_UID_SLOTS) if s not in _uid_slots), None)
        if free is None:
            raise SandboxError(f"more than {_UID_SLOTS} live sandboxes in one process; close() some")
        _uid_slots.add(free)
    return _UID_BASE + os.getpid() * _UID_SLOTS + free


def release_uid(uid: int | None) -> None:
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


def _spawn(launch: Launch, limits: SandboxLimits, with_stdin: bool) -> subprocess.Popen:
    cmd, preexec = launch.cmd, None
    if launch.rlimits:
        prefix = prlimit_prefix(limits)
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


def execute(launch: Launch, stdin: str | None, limits: SandboxLimits, backend: str) -> SandboxResult:
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
