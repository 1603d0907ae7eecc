"""Environments: the Env protocol and the registry of concrete environments in ``envs/``."""
