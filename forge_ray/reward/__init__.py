"""Rewards: the step-wise tool-call reward (``stepwise``) and the scoring actor (``actor``).

``forge_ray.reward.actor`` imports Ray lazily; ``stepwise`` is pure Python.
"""
from forge_ray.reward.stepwise import calls_match, one_call_per_turn, stepwise_rewards

__all__ = ["calls_match", "one_call_per_turn", "stepwise_rewards"]
