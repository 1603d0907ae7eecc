"""The sandbox (forge_ray/env/sandbox.py, proctree.py): escape suite through bwrap, process backend, truncation, CLI.

Every escape case asserts two things: the program inside was contained, and the host was
left untouched (no file appeared, no connection arrived, no process survived).
"""
from __future__ import annotations

import logging
import os
import selectors
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import psutil
import pytest

from forge_ray.env import proctree, sandbox as sbx
from forge_ray.env.sandbox import SandboxError, SandboxLimits, make_sandbox, truncate_output

needs_bwrap = pytest.mark.skipif(
    __import__("shutil").which("bwrap") is None,
    reason="bubblewrap not installed; run scripts/install_system_deps.sh as root")
IS_ROOT = os.geteuid() == 0
FORGE_RAY = str(Path(sys.executable).parent / "forge-ray")


def _marker() -> str:
    return f"forge-sbx-{uuid.uuid4().hex[:12]}"


def _procs_with(marker: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def _assert_no_leftovers(sb, marker: str | None = None) -> None:
    if marker is not None:
        assert _procs_with(marker) == [], f"processes with {marker} outlived the run"
    if getattr(sb, "_uid", None) is not None:
        assert proctree._live_pids_of_uid(sb._uid) == [], "processes of the sandbox uid outlived the run"


@pytest.fixture
def bwrap_sb():
    with make_sandbox("bwrap", SandboxLimits(wall_seconds=10, cpu_seconds=5)) as sb:
        yield sb


# -- happy path ---------------------------------------------------------------------------------


@needs_bwrap
def test_bwrap_happy_path(bwrap_sb):
    r = bwrap_sb.run(["echo", "hi"])
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.truncated, r.killed_by, r.backend) == (
        0, "hi\n", "", False, False, None, "bwrap")
    r = bwrap_sb.run(["python3", "-c", "import sys; print(6 * 7); print('err', file=sys.stderr); sys.exit(5)"])
    assert (r.exit_code, r.stdout, r.stderr) == (5, "42\n", "err\n")
    code = "import os; d = open('in/task.txt').read(); open('out.txt', 'w').write(d.upper()); print(os.getcwd())"
    r = bwrap_sb.run(["python3", "-c", code], files={"in/task.txt": "hello"})
    assert (r.exit_code, r.stdout) == (0, "/work\n"), r.stderr
    assert bwrap_sb.read_file("out.txt") == "HELLO"
    assert (Path(bwrap_sb.workdir) / "out.txt").read_text() == "HELLO"
    r = bwrap_sb.run(["python3", "-c", "import sys; print(sys.stdin.read()[::-1])"], stdin="abc")
    assert r.stdout == "cba\n"
    r = bwrap_sb.run(["definitely-not-a-command"])
    assert r.exit_code != 0 and "definitely-not-a-command" in r.stderr


@needs_bwrap
def test_bwrap_host_file_io_refuses_escapes(bwrap_sb, tmp_path):
    target = tmp_path / "host.txt"
    target.write_text("host")
    os.chmod(tmp_path, 0o755)
    # a planted symlink must not make the host (root) write or read through it
    r = bwrap_sb.run(["sh", "-c", f"ln -s {target} evil && ln -s {tmp_path} evildir && mkfifo fifo"])
    assert r.exit_code == 0, r.stderr
    with pytest.raises(OSError):   # a FIFO nobody reads must not hang the host (ENXIO)
        bwrap_sb.write_files({"fifo": "x"})
    with pytest.raises(ValueError, match="regular file"):
        bwrap_sb.read_file("fifo")
    with pytest.raises(OSError):
        bwrap_sb.write_files({"evil": "pwned"})
    with pytest.raises(ValueError):
        bwrap_sb.write_files({"evildir/x": "pwned"})
    with pytest.raises(OSError):
        bwrap_sb.read_file("evil")
    for bad in ("../x", "/etc/x", ""):
        with pytest.raises(ValueError):
            bwrap_sb.write_files({bad: "x"})
    assert target.read_text() == "host" and sorted(p.name for p in tmp_path.iterdir()) == ["host.txt"]


# -- escape suite (bwrap) -----------------------------------------------------------------------


@needs_bwrap
def test_escape_read_host_files(bwrap_sb, tmp_path):
    secret = tmp_path / "secret.txt"
    token = _marker()
    secret.write_text(token)
    probe = (f"cat {secret}; cat /proc/1/root{secret}; ls {tmp_path}; cat /etc/shadow; "
             f"cat /proc/*/environ; grep -r {token} /tmp /work /proc/1/cwd 2>/dev/null; exit 0")
    r = bwrap_sb.run(["sh", "-c", probe])
    assert token not in r.stdout and token not in r.stderr
    assert "No such file" in r.stderr
    if Path("/etc/shadow").exists() and IS_ROOT:   # root-only file; the sandbox runs unprivileged
        assert "root:" not in r.stdout and "Permission denied" in r.stderr
    assert secret.read_text() == token


@needs_bwrap
def test_escape_write_outside(bwrap_sb, tmp_path):
    name = _marker()
    os.chmod(tmp_path, 0o777)   # even a world-writable host dir is out of reach: it is not mounted
    targets = [f"/usr/{name}", f"/etc/{name}", f"/usr/lib/{name}", f"{tmp_path}/{name}", f"/{name}", f"/tmp/{name}"]
    script = "; ".join(f"echo x > {t}" for t in targets) + f"; echo ok > /work/{name}; exit 0"
    r = bwrap_sb.run(["sh", "-c", script])
    assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr
    for t in targets:
        assert not Path(t).exists(), f"sandbox wrote {t} on the host"
    assert (Path(bwrap_sb.workdir) / name).read_text() == "ok\n"   # only the work dir is writable


@needs_bwrap
def test_escape_network_loopback(bwrap_sb):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    code = (f"import socket\ntry:\n  socket.create_connection(('127.0.0.1', {port}), timeout=2); print('CONNECTED')\n"
            f"except OSError as e:\n  print('refused', e)")
    try:
        r = bwrap_sb.run(["python3", "-c", code])
        assert "CONNECTED" not in r.stdout and r.stdout.startswith("refused"), (r.stdout, r.stderr)
        with selectors.DefaultSelector() as sel:
            sel.register(listener, selectors.EVENT_READ)
            assert sel.select(0.3) == [], "the host listener got a connection from the sandbox"
    finally:
        listener.close()


@needs_bwrap
def test_escape_fork_bomb():
    marker = _marker()
    before = len(psutil.pids())
    limits = SandboxLimits(max_processes=32, wall_seconds=4, cpu_seconds=2)
    with make_sandbox("bwrap", limits) as sb:
        t0 = time.monotonic()
        r = sb.run(["bash", "-c", "f(){ f | f & }; f; sleep 100", marker])
        elapsed = time.monotonic() - t0
        assert elapsed < limits.wall_seconds + 3 and r.timed_out and r.killed_by == "timeout"
        assert "Resource temporarily unavailable" in r.stderr   # the process cap bit
        _assert_no_leftovers(sb, marker)
    assert len(psutil.pids()) < before + 20   # back to normal (slack: others use this host)
    t0 = time.monotonic()
    subprocess.run(["true"], check=True)
    assert time.monotonic() - t0 < 2, "host unresponsive after the fork bomb"


@needs_bwrap
def test_escape_memory_bomb(bwrap_sb):
    r = bwrap_sb.run(["python3", "-c", "b = bytearray(8 << 30)"])
    assert r.exit_code == 1 and "MemoryError" in r.stderr and not r.timed_out
    r = bwrap_sb.run(["python3", "-c", "x = []\nwhile True: x.append(bytearray(64 << 20))"])
    assert r.exit_code == 1 and "MemoryError" in r.stderr and not r.timed_out
    assert psutil.virtual_memory().available > 512 << 20   # host not starved (others share it: no tighter bound)
    _assert_no_leftovers(bwrap_sb)


@needs_bwrap
def test_escape_infinite_loop():
    with make_sandbox("bwrap", SandboxLimits(cpu_seconds=1, wall_seconds=8)) as sb:
        t0 = time.monotonic()
        r = sb.run(["python3", "-c", "while True: pass"])
        assert time.monotonic() - t0 < 6
        assert (r.exit_code, r.killed_by, r.timed_out) == (128 + 24, "SIGXCPU", False)
        _assert_no_leftovers(sb)
    with make_sandbox("bwrap", SandboxLimits(wall_seconds=1)) as sb:   # sleeping: only the wall clock
        marker = _marker()
        r = sb.run(["sh", "-c", f"while :; do sleep 1; done; : {marker}"])
        assert (r.exit_code, r.killed_by, r.timed_out) == (124, "timeout", True)
        assert 1 <= r.wall_seconds < 3
        _assert_no_leftovers(sb, marker)


@needs_bwrap
def test_escape_huge_output(bwrap_sb):
    code = ("import sys\nsys.stdout.write('HEAD\\n')\nchunk = 'x' * (1 << 20)\n"
            "for _ in range(100): sys.stdout.write(chunk)\nsys.stdout.write('\\nTAIL\\n')\n"
            "sys.stderr.write('e' * 3_000_000)")
    tracemalloc.start()
    try:
        t0 = time.monotonic()
        r = bwrap_sb.run(["python3", "-c", code])
        elapsed = time.monotonic() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    total = 5 + 100 * (1 << 20) + 6
    assert r.exit_code == 0 and r.truncated and elapsed < 20
    assert r.stdout == "HEAD\n" + "x" * 4995 + f"\n... [{total - 10_000} characters truncated] ...\n" + "x" * 4994 + "\nTAIL\n"
    assert r.stderr == "e" * 5000 + f"\n... [{3_000_000 - 10_000} characters truncated] ...\n" + "e" * 5000
    assert peak < 8 << 20, f"peak traced memory {peak / 2**20:.1f} MiB while reading 100 MB"


@needs_bwrap
def test_escape_orphan_outlives_parent(bwrap_sb):
    marker = _marker()
    script = (f"setsid nohup sh -c 'sleep 1000; : {marker}' >/dev/null 2>&1 & "
              f"python3 -c \"import os\nif os.fork() == 0:\n  os.setsid()\n  os.execvp('sh', ['sh', '-c', 'sleep 1000; : {marker}'])\"; "
              "sleep 0.3; echo spawned")
    r = bwrap_sb.run(["sh", "-c", script])
    assert (r.exit_code, r.stdout) == (0, "spawned\n") and r.wall_seconds < 5
    _assert_no_leftovers(bwrap_sb, marker)


# -- process backend (no bwrap needed) -----------------------------------------------------------


def test_process_backend(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="forge_ray.env.sandbox"):
        sb = make_sandbox("process", SandboxLimits(wall_seconds=1, max_output_chars=100), workdir=tmp_path / "wd")
    assert any("NO filesystem or network isolation" in rec.getMessage() for rec in caplog.records)
    with sb:
        assert sb.workdir == str((tmp_path / "wd").resolve())
        r = sb.run(["python3", "-c", "import os; print(open('a.txt').read(), os.getcwd() == os.environ['HOME'])"],
                   files={"a.txt": "A"})
        assert (r.exit_code, r.stdout, r.backend) == (0, "A True\n", "process")
        marker = _marker()
        t0 = time.monotonic()
        r = sb.run(["sh", "-c", f"sleep 30; : {marker}"])
        assert (r.exit_code, r.timed_out, r.killed_by) == (124, True, "timeout") and time.monotonic() - t0 < 3
        assert _procs_with(marker) == []
        r = sb.run(["python3", "-c", "print('a' * 50 + 'b' * 100 + 'c' * 50, end='')"])
        assert r.truncated and r.stdout == "a" * 50 + "\n... [100 characters truncated] ...\n" + "c" * 50
    assert (tmp_path / "wd" / "a.txt").exists()   # a caller's work dir is kept


@pytest.mark.skipif(not IS_ROOT, reason="the process backend sweeps leftovers by its own uid only as root")
def test_process_backend_orphans_swept_as_root():
    marker = _marker()
    with make_sandbox("process", SandboxLimits(wall_seconds=5)) as sb:
        r = sb.run(["sh", "-c", f"setsid nohup sh -c 'sleep 1000; : {marker}' >/dev/null 2>&1 & echo ok"])
        assert r.stdout == "ok\n"
        _assert_no_leftovers(sb, marker)


# -- truncation, choice of backend, errors --------------------------------------------------------


def test_truncate_output_exact():
    assert truncate_output("short", 10) == "short"
    assert truncate_output("x" * 10, 10) == "x" * 10
    assert truncate_output("aaaaa" + "b" * 10 + "ccccc", 10) == "aaaaa\n... [10 characters truncated] ...\nccccc"
    assert truncate_output("abcdefg", 3) == "a\n... [4 characters truncated] ...\nfg"
    text = "é€" * 7000 + "🙂" * 11 + "z" * 13
    data = text.encode()
    for step in (1, 3, 4096):   # the streaming capture agrees with the pure function, however split
        cap = proctree._Capture(10_000)
        for i in range(0, len(data), step):
            cap.feed(data[i:i + step])
        cap.feed(b"", final=True)
        assert cap.truncated and cap.text() == truncate_output(text, 10_000)


def test_backend_choice_and_errors(monkeypatch, caplog, tmp_path):
    if IS_ROOT and __import__("shutil").which("bwrap"):   # pytest's tmp dirs sit in a 0700 dir
        with pytest.raises(SandboxError, match="not world-searchable"):
            make_sandbox("bwrap", workdir=tmp_path / "wd")
        assert not (tmp_path / "wd").exists()
    with pytest.raises(ValueError, match="auto, bwrap, process, container"):
        make_sandbox("docker")
    with pytest.raises(ValueError, match="container=NAME"):
        make_sandbox("container")
    with pytest.raises(ValueError, match="max_processes"):
        SandboxLimits(max_processes=0)
    with pytest.raises(ValueError, match="non-empty list"):
        make_sandbox("process").run("echo hi")
    monkeypatch.setenv("PATH", "/nonexistent")   # a machine without bubblewrap
    sbx.bwrap_problem.cache_clear()
    try:
        with pytest.raises(SandboxError, match="install_system_deps.sh"):
            make_sandbox("bwrap")
        assert sbx.available_backend() == "process"
        with caplog.at_level(logging.WARNING, logger="forge_ray.env.sandbox"):
            with make_sandbox("auto") as sb:
                assert sb.backend == "process"
        assert "SANDBOX WARNING" in caplog.text
    finally:
        monkeypatch.undo()
        sbx.bwrap_problem.cache_clear()


# -- CLI ------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FORGE_RAY, "sandbox", "run", *args], capture_output=True, text=True, timeout=60)


def test_cli():
    r = _cli("--", "echo", "hi")
    assert r.returncode == 0 and r.stdout == "hi\n" and "[sandbox] backend=" in r.stderr and "exit=0" in r.stderr
    r = _cli("--", "sh", "-c", "echo oops >&2; exit 3")
    assert r.returncode == 3 and r.stdout == "" and r.stderr.startswith("oops\n") and "exit=3" in r.stderr
    r = _cli("--backend", "process", "--timeout", "1", "--", "sleep", "10")
    assert r.returncode == 124 and "timed_out=yes" in r.stderr and "WARNING" in r.stderr
