"""A user who left `ray start --head` running on the machine can still run a job: the embedded
cluster is the job's own (it used to die in ray.init: "When connecting to an existing cluster,
num_cpus and num_gpus must not be provided")."""
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_embedded_cluster_starts_beside_a_running_one(tmp_path):
    port = free_port()
    log = tmp_path / "head.log"
    with open(log, "w") as f:
        head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
                                stdout=f, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            if "Ray runtime started" in log.read_text():
                break
            time.sleep(1)
        else:
            raise AssertionError(f"the head node did not come up: {log.read_text()[-1000:]}")
        probe = ("from forge_ray.config import load_job; from forge_ray.pipeline import init_ray; import ray; "
                 "init_ray(load_job(None, ['cluster.num_cpus=3'])); print('CPU', ray.cluster_resources()['CPU'])")
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                             env={"RAY_ADDRESS": "", "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path)})
        assert out.returncode == 0, out.stderr[-2000:]
        assert "CPU 3.0" in out.stdout  # its own cluster, with the job's CPUs, not the 1-CPU head's
    finally:
        head.terminate()
        head.wait(60)
