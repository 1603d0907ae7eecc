"""SWE: fix a bug in a Python repository through one bash tool (mini-swe-agent-plus protocol)."""
from envs.swe.env import SweEnv, sweep
from envs.swe.tasks import SweTasks

__all__ = ["SweEnv", "SweTasks", "sweep"]
