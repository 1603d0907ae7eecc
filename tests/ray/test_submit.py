"""Ray tier: a shortened quickstart submitted as a Ray job to a real local head with the dashboard,
once through `forge-ray submit --follow` and once through the plain `ray job submit` command that
`forge-ray submit --print-only` renders (with --no-wait, then `ray job status`), token auth on.

The head is ours alone: its own temp dir, free ports, loopback only, its own auth token (passed
as RAY_AUTH_TOKEN, so ~/.ray/auth_token and other clusters on the machine are left alone).
"""
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SHORT = ["run.steps=2", "sft.examples=64", "sft.epochs=1", "sft.batch_size=16", "env.eval_tasks=8", "env.train_tasks=100",
         "rollout.batch_prompts=4", "learner.batch_groups=4", "rollout.group_size=4", "learner.micro_batch=8",
         "learner.drop_zero_variance=false",  # an untrained model may score 0 everywhere: still update and sync
         "rollout.max_new_tokens=24", "rollout.max_context=400", "rollout.kv_cache_mb=256", "run.wandb_mode=disabled"]
JOB_TIMEOUT_S = 1200  # one shortened run takes a few minutes on 2 busy cores


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for_jobs_api(url: str, token: str, proc: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    request = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    pytest.fail(f"the Jobs API at {url} did not come up in {timeout_s} s:\n{log.read_text()[-4000:]}")


def stop_head(proc: subprocess.Popen) -> None:
    """Stop only this head. `ray stop` would kill every Ray on the machine (it matches processes by
    name). `ray start --block` instead owns the node: on SIGTERM it drains and kills the processes
    it started (GCS, raylet, dashboard, agents; the raylet takes its workers down). Anything left
    in the process group we created for it (start_new_session) is then killed by group id, which
    reaches only processes descended from this head."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def head():
    temp = Path(tempfile.mkdtemp(prefix="frsub", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    token = secrets.token_hex(32)
    gcs, dash, client, agent, agent_grpc, metrics, rt_env = free_ports(7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "WANDB_SERVICE"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={rt_env}", "--num-cpus=8", f"--temp-dir={temp}", "--disable-usage-stats"]
    log = temp / "ray-start.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=temp)
    url = f"http://127.0.0.1:{dash}"
    try:
        wait_for_jobs_api(url, token, proc, log)
        # The clients: the job's `python` and `ray` are this venv's; the token only in RAY_AUTH_TOKEN.
        client_env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
        yield {"url": url, "env": client_env, "temp": temp, "metrics": f"http://127.0.0.1:{metrics}/metrics"}
    finally:
        stop_head(proc)
        shutil.rmtree(temp, ignore_errors=True)


def forge_metrics(url: str) -> set[str]:
    """Names of the forge_* series on a Prometheus endpoint (empty when it does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return set()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return {n.removeprefix("ray_") for n in names if n.removeprefix("ray_").startswith("forge_")}


def sets(overrides: list[str]) -> list[str]:
    return [w for o in overrides for w in ("--set", o)]


def test_forge_ray_submit_follow(head):
    overrides = SHORT + [f"run.root={head['temp'] / 'runs'}"]
    cmd = [str(BIN / "forge-ray"), "submit", "jobs/quickstart.yaml", "--address", head["url"], "--follow", *sets(overrides)]
    # RAY_AUTH_MODE is not set: forge-ray must turn token auth on from RAY_AUTH_TOKEN by itself.
    r = subprocess.run(cmd, cwd=ROOT, env=head["env"], capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-6000:]}\nstderr:\n{r.stderr[-3000:]}"
    assert r.stdout.splitlines()[0].startswith("raysubmit_")  # the job id comes first
    assert "held-out success" in r.stdout and "SUCCEEDED" in r.stderr
    assert list((head["temp"] / "runs").glob("quickstart-*/summary.json"))


def test_plain_ray_job_submit(head):
    # SFT off: the SFT stage already ran under the first submission; this one checks the CLI path.
    overrides = SHORT + [f"run.root={head['temp'] / 'runs-cli'}", "sft.enabled=false"]
    printed = subprocess.run([str(BIN / "forge-ray"), "submit", "jobs/quickstart.yaml", "--address", head["url"],
                              "--print-only", *sets(overrides)], cwd=ROOT, env=head["env"], capture_output=True,
                             text=True, timeout=60, check=True).stdout.strip()
    assert printed.startswith("RAY_AUTH_MODE=token ray job submit ") and "--working-dir ." in printed
    job_id = f"forge-cli-{secrets.token_hex(4)}"
    command = printed.replace(" ray job submit ", f" ray job submit --no-wait --submission-id {job_id} ", 1)
    r = subprocess.run(command, shell=True, cwd=ROOT, env=head["env"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    auth = {**head["env"], "RAY_AUTH_MODE": "token"}
    ray_job = [str(BIN / "ray"), "job"]
    # `ray job status` words the end states "Job 'ID' succeeded", "... failed", "... was stopped"
    # and others "Status for job 'ID': RUNNING", on stdout or (warnings) stderr.
    deadline, status, seen = time.time() + JOB_TIMEOUT_S, "", set()
    while time.time() < deadline:
        seen |= forge_metrics(head["metrics"])  # scraped while the job runs
        r = subprocess.run(ray_job + ["status", job_id, "--address", head["url"]], env=auth,
                           capture_output=True, text=True, timeout=60)
        status = (r.stdout + r.stderr).lower()
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            break
        time.sleep(5)
    logs = subprocess.run(ray_job + ["logs", job_id, "--address", head["url"]], env=auth,
                          capture_output=True, text=True, timeout=60).stdout
    assert f"job '{job_id}' succeeded" in status, f"{status}\n{logs[-6000:]}"
    assert "held-out success" in logs
    assert shlex.split(printed)[-1] == "cluster.address=auto"
    # forge_ray's own metrics reached the node's Prometheus endpoint (the dashboard's source).
    seen |= forge_metrics(head["metrics"])
    expected = {"forge_policy_version", "forge_learner_step_seconds", "forge_weight_sync_seconds", "forge_buffer_ready_groups",
                "forge_rollout_tokens_per_s", "forge_staleness", "forge_reward_latency_seconds", "forge_rollout_tokens_total"}
    assert expected <= seen, f"missing {sorted(expected - seen)}; saw {sorted(seen)}"
