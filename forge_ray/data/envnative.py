"""Environment-native trajectories (daVinci-Dev's D^env): real episodes of the SWE environment,
passing and failing both kept and labelled by the final tests, as mid-training text.

Two sources, both episodes played in ``envs/swe`` (bubblewrap sandbox, real test runs):

- ``swe-experts:TASKS_DIR`` — the scripted expert's episodes on the train split (each replayed
  to reward 1 when its cache entry was written: label "pass"); the episodes come from
  ``envs.swe.tasks.expert_episodes``, handed to ``build_mt`` by the caller (``pipeline.episode_sources``):
  forge_ray's core does not import ``envs``;
- ``episodes:FILE.jsonl`` — policy episodes written by ``forge-ray eval swe --model M
  --episodes FILE.jsonl`` (label "pass" when every FAIL_TO_PASS and PASS_TO_PASS test passed).

The text is the conversation in the policy's own chat format (the tokenizer's template, the
one SFT and RL render with), so mid-training sees exactly the turns it will later produce;
observations stay user turns, as in the environment. Passing episodes are repeated
``upsample`` times (3 in the paper) when the documents are packed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from forge_ray.data.schema import sample_id


def env_row(repo: str, key: str, messages: list[dict], passed: bool, source: str) -> dict[str, Any]:
    """One environment-native row as it travels through the pipeline."""
    return {"id": sample_id(repo, key), "kind": "env", "repo": repo, "source": source, "subset": "env",
            "passed": bool(passed), "data": json.dumps(messages), "drop": ""}


def episode_file(path: str | Path) -> Iterator[dict[str, Any]]:
    """Policy episodes from a JSONL file of ``eval swe --episodes``: one object per line with
    ``task_id``, ``package``, ``messages`` and ``resolved``. A bad line raises ``ValueError``
    naming the file and line."""
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                messages, passed = row["messages"], bool(row["resolved"])
                if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
                    raise ValueError("messages must be a list of {role, content} objects")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}, line {n}: not an episode ({e!r})") from None
            key = f"{row['task_id']}#{row.get('sample', 0)}#{n}"
            yield env_row(row.get("package", ""), key, messages, passed, "episodes")


def episode_text(messages: list[dict], tokenizer: Any = None) -> str:
    """The whole conversation in the chat format: the tokenizer's template when it has one,
    else forge_ray's own (``chat.TOOL_CHAT_TEMPLATE``)."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    from jinja2 import Template

    from forge_ray.chat import TOOL_CHAT_TEMPLATE

    return Template(TOOL_CHAT_TEMPLATE).render(messages=messages, tools=[], add_generation_prompt=False)
