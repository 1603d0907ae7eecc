"""Calculator: multi-turn tool use on 1-3 step integer arithmetic (add, sub, mul tools)."""
from envs.calculator.env import CalculatorEnv
from envs.calculator.tasks import CalculatorTasks

__all__ = ["CalculatorEnv", "CalculatorTasks"]
