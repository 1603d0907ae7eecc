"""TaskSource of the function-calling environment: synthetic tasks to train on, and either
synthetic or BFCL tasks to hold out.

``heldout="bfcl"`` makes the held-out split BFCL's own evaluation data (the categories in
``bfcl_categories``: any of BFCL's non-live and live single-turn categories, by default the
non-live ones), so a job trains on synthetic tools and reports BFCL accuracy; BFCL data is
never a train split.
"""
from __future__ import annotations

import random

from envs.function_calling.bfcl_data import CATEGORIES, NON_LIVE_CATEGORIES, load_category, round_robin
from envs.function_calling.gold import gold_text
from envs.function_calling.synthetic import SYNTHETIC_CATEGORIES, SyntheticTasks
from forge_ray.types import Task


class FunctionCallingTasks:
    """``categories``/``weights``: synthetic categories and their frequencies;
    ``heldout``: "synthetic" or "bfcl"; ``bfcl_categories``: BFCL categories of the held-out
    split when it is BFCL's (any of ``bfcl_data.CATEGORIES``, live ones included)."""

    def __init__(self, categories: list[str] | tuple[str, ...] = SYNTHETIC_CATEGORIES, weights: list[float] | None = None,
                 heldout: str = "synthetic", bfcl_categories: list[str] | tuple[str, ...] = NON_LIVE_CATEGORIES):
        if heldout not in ("synthetic", "bfcl"):
            raise ValueError(f"heldout must be 'synthetic' or 'bfcl', got {heldout!r}")
        unknown = [c for c in bfcl_categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown BFCL categories {unknown}; supported: {', '.join(CATEGORIES)}")
        self.synthetic = SyntheticTasks(categories, weights)
        self.heldout = heldout
        self.bfcl_categories = tuple(bfcl_categories)

    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        """``n`` tasks of ``split``, deterministic in ``(split, seed)``. BFCL held-out tasks
        are drawn round-robin over the categories, each category in a seeded order."""
        if split == "heldout" and self.heldout == "bfcl":
            return self._bfcl(n, seed)
        return self.synthetic.tasks(split, n, seed)

    def _bfcl(self, n: int, seed: int) -> list[Task]:
        rng = random.Random(f"function_calling:bfcl:{seed}")
        queues = []
        for category in self.bfcl_categories:
            tasks = load_category(category)
            rng.shuffle(tasks)
            queues.append(tasks)
        return round_robin(queues, n, f"BFCL tasks; categories {list(self.bfcl_categories)}")

    def expert(self, task: Task) -> list[dict]:
        """The gold answer as one assistant turn (the episode ends after it)."""
        return [{"role": "assistant", "content": gold_text(task)}]
