"""Function calling: single-turn tool calls scored by BFCL's official AST checker, on BFCL's
own tasks (evaluation) and on synthetic tools (training). See docs/function_calling.md."""
from envs.function_calling.env import FunctionCallingEnv
from envs.function_calling.tasks import FunctionCallingTasks

__all__ = ["FunctionCallingEnv", "FunctionCallingTasks"]
