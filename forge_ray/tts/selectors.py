"""Test-time-scaling selectors: pick one of N sampled trajectories of the same task.

Klear-AgentForge (§1.11 of its paper) compares, on N parallel samples:
majority voting, an LLM knockout tournament, LogProb selection (highest mean sampled-token
logprob) and DeepConf confidence ("Agent Confidence Select"), plus confidence *voting* over
agent-response tokens versus environment-feedback tokens. Every selector takes a list of
``Candidate`` and returns the chosen candidate's ``index`` (the tournament also returns its
number of judge calls). Ties always go to the earliest candidate in the list. Pure Python.

    cands = [from_trajectory(t, normalise) for t in trajs_of_one_task]
    pick = select("agent_confidence", cands, k=100)
    curve = best_of_n_curve(groups, "majority", ns=(1, 2, 4, 8))
"""
from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from forge_ray.types import Trajectory


@dataclass(frozen=True)
class Candidate:
    """One sampled trajectory as the selectors see it.

    ``answer`` is the normalised final answer (tool calls, patch, text) from a per-environment
    ``normalise``; ``logprobs`` the sampled (agent) tokens' logprobs; ``topk[t]`` the engine's
    top-k logprobs at sampled token t (may be empty); ``env_topk[t]`` the model's top-k logprobs
    at environment-feedback token t when the observation is scored (prompt logprobs), empty when
    not computed; ``agent_tokens`` / ``env_tokens`` count sampled and observation tokens.
    """

    index: int
    answer: str
    logprobs: list[float] = field(default_factory=list)
    topk: list[list[float]] = field(default_factory=list)
    env_topk: list[list[float]] = field(default_factory=list)
    agent_tokens: int = 0
    env_tokens: int = 0


def from_trajectory(traj: Trajectory, normalise: Callable[[Trajectory], str], topk: list[list[float]] | None = None,
                    env_topk: list[list[float]] | None = None) -> Candidate:
    """A ``Candidate`` from a finished trajectory: sampled tokens are those with loss_mask 1,
    environment tokens the mask-0 tokens after the prompt. ``topk`` / ``env_topk`` come from
    the engine: ``Trajectory.topk`` (``EpisodeSpec.topk``) and ``VLLMEngine.score_prompt``
    (``forge-ray tts``, forge_ray/tts/run.py)."""
    sampled = [lp for lp, m in zip(traj.logprobs, traj.loss_mask) if m]
    env = sum(1 for m in traj.loss_mask[traj.prompt_len:] if not m)
    return Candidate(index=traj.sample_index, answer=normalise(traj), logprobs=sampled, topk=list(topk or []),
                     env_topk=list(env_topk or []), agent_tokens=len(sampled), env_tokens=env)


# ---------------------------------------------------------------- answer normalisers

def normalise_calls(calls: Iterable[Any]) -> str:
    """Tool calls as one canonical string: each call ``{"name", "arguments"}`` (a ``ToolCall``,
    a dict, or a ``(name, arguments)`` pair; string arguments are parsed as JSON when they can
    be) dumped with sorted keys, the calls sorted by name then JSON: argument and call order vanish."""
    rows = []
    for call in calls:
        if isinstance(call, dict):
            name, args = call.get("name"), call.get("arguments", {})
        else:
            name, args = call if isinstance(call, (tuple, list)) else (call.name, call.arguments)
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass
        row = json.dumps({"name": name, "arguments": args}, sort_keys=True, separators=(",", ":"))
        rows.append((str(name), row))
    return "[" + ",".join(row for _, row in sorted(rows)) + "]"


def _diff_files(lines: list[str]) -> list[list[str]]:
    """Split a unified diff into per-file line lists (at ``diff --git``, or at ``---``/``+++``
    header pairs when the text has no ``diff --git`` lines)."""
    git = any(ln.startswith("diff --git ") for ln in lines)
    files: list[list[str]] = []
    for i, ln in enumerate(lines):
        starts = ln.startswith("diff --git ") if git else (
            ln.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "))
        if starts or not files:
            files.append([])
        files[-1].append(ln)
    return files


def _file_path(block: list[str]) -> str:
    old = next((ln[4:].split("\t")[0].strip() for ln in block if ln.startswith("--- ")), "")
    new = next((ln[4:].split("\t")[0].strip() for ln in block if ln.startswith("+++ ")), "")
    path = new if new and new != "/dev/null" else old
    if not path and block and block[0].startswith("diff --git "):
        path = block[0].split(" b/", 1)[-1]
    return path[2:] if path.startswith(("a/", "b/")) else path


def _normalise_hunk(body: list[str]) -> list[str]:
    """Drop blank and ``\\ No newline`` lines, strip trailing whitespace, and turn the lines a
    removed run and the next added run share at their start or end back into context (what is
    left of a whitespace-only edit). Returns [] when no change is left."""
    rows = [ln.rstrip() for ln in body if not ln.startswith("\\")]
    rows = [ln for ln in rows if ln[1:].strip()]
    out: list[str] = []
    i = 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j].startswith("-"):
            j += 1
        k = j
        while k < len(rows) and rows[k].startswith("+"):
            k += 1
        if k == i:  # a context line
            out.append(rows[i])
            i += 1
            continue
        old, new = [r[1:] for r in rows[i:j]], [r[1:] for r in rows[j:k]]
        head = 0
        while head < min(len(old), len(new)) and old[head] == new[head]:
            head += 1
        tail = 0
        while tail < min(len(old), len(new)) - head and old[-1 - tail] == new[-1 - tail]:
            tail += 1
        out += [" " + r for r in old[:head]] + ["-" + r for r in old[head:len(old) - tail]]
        out += ["+" + r for r in new[head:len(new) - tail]] + [" " + r for r in old[len(old) - tail:]]
        i = k
    return out if any(r[:1] in "+-" for r in out) else []


def normalise_patch(diff_text: str) -> str:
    """A unified diff in canonical form, so patches that differ only in ``index`` lines,
    whitespace-only changes or file order compare equal (for majority voting over SWE patches).

    Per file: one ``file <path>`` header (from ``+++``, or ``---`` for deletions); ``index``,
    ``diff --git``, ``---``/``+++`` lines dropped, other header lines (modes, renames) kept;
    hunk headers reduced to ``@@`` (their line numbers move with blank-line edits); in hunks,
    trailing whitespace stripped, blank lines dropped, removed/added runs that are equal after
    that turned into context, hunks left without changes dropped. Files sorted by path; files
    left without changes dropped. Note: leading whitespace (indentation) is kept, as it is
    meaningful in Python.
    """
    files = []
    for block in _diff_files(diff_text.replace("\r\n", "\n").split("\n")):
        header: list[str] = []
        hunks: list[list[str]] = []
        for ln in block:
            if ln.startswith("@@"):
                hunks.append([])
            elif hunks:
                hunks[-1].append(ln)
            elif ln.strip() and not ln.startswith(("diff --git ", "index ", "--- ", "+++ ")):
                header.append(ln.strip())
        body = [row for rows in map(_normalise_hunk, hunks) if rows for row in ["@@", *rows]]
        if body or header:
            files.append((_file_path(block), header, body))
    files.sort(key=lambda f: f[0])
    return "\n".join(line for path, header, body in files for line in [f"file {path}", *header, *body])


# ---------------------------------------------------------------- selectors

def _check(cands: Sequence[Candidate]) -> None:
    if not cands:
        raise ValueError("no candidates to select from")


def _argmax(cands: Sequence[Candidate], score: Callable[[Candidate], float]) -> int:
    """Index of the highest-scoring candidate; the earliest wins ties."""
    _check(cands)
    best, best_score = cands[0], score(cands[0])
    for c in cands[1:]:
        s = score(c)
        if s > best_score:
            best, best_score = c, s
    return best.index


def _weighted_vote(cands: Sequence[Candidate], weight: Callable[[Candidate], float]) -> int:
    """Sum each answer's weights; the heaviest answer wins (ties: the answer that appears first),
    and its earliest candidate is returned."""
    _check(cands)
    totals: dict[str, float] = {}
    earliest: dict[str, Candidate] = {}
    for c in cands:
        totals[c.answer] = totals.get(c.answer, 0.0) + weight(c)
        earliest.setdefault(c.answer, c)
    best = max(totals, key=lambda a: totals[a])  # max keeps the first of equal keys
    return earliest[best].index


def first(cands: Sequence[Candidate]) -> int:
    """The first candidate (the n = 1 baseline)."""
    _check(cands)
    return cands[0].index


def majority(cands: Sequence[Candidate]) -> int:
    """Most frequent normalised ``answer``; ties go to the answer whose first candidate comes
    earliest. For SWE, vote over patches by setting ``answer = normalise_patch(diff)``; for
    function calling, ``answer = normalise_calls(calls)``."""
    return _weighted_vote(cands, lambda c: 1.0)


def mean_logprob(cands: Sequence[Candidate]) -> int:
    """LogProb selection: highest AvgLogP = (1/n) sum_i log p(y_i | x, y_<i) over the sampled
    tokens. A candidate without logprobs scores -inf."""
    return _argmax(cands, lambda c: sum(c.logprobs) / len(c.logprobs) if c.logprobs else -math.inf)


def token_confidence(topk: Sequence[float], k: int = 100) -> float:
    """DeepConf token confidence C = -(1/k') sum_{j<=k'} log P(j) over the k' = min(k, given)
    largest top-k logprobs of one token. A peaked distribution (top-1 near 0, the rest very
    negative) gives a large C; a flat one a small C. NaN for an empty list."""
    vals = sorted(topk, reverse=True)[:k]
    return -sum(vals) / len(vals) if vals else math.nan


def trace_confidence(topk: Sequence[Sequence[float]], k: int = 100) -> float:
    """C_avg = mean of ``token_confidence`` over the tokens that have top-k logprobs (tokens
    with an empty list are skipped); -inf when none has any."""
    cs = [token_confidence(t, k) for t in topk if len(t)]
    return sum(cs) / len(cs) if cs else -math.inf


def agent_confidence(cands: Sequence[Candidate], k: int = 100) -> int:
    """Agent Confidence Select (DeepConf): argmax over candidates of C_avg computed on the
    agent's sampled tokens only (``Candidate.topk``), C_t = -(1/k) sum_j log P_t(j)."""
    return _argmax(cands, lambda c: trace_confidence(c.topk, k))


def confidence_vote(cands: Sequence[Candidate], k: int = 100, tokens: str = "agent") -> int:
    """Confidence voting: each candidate votes for its ``answer`` with weight C_avg, computed
    over agent-response tokens (``tokens="agent"``, ``Candidate.topk``) or over
    environment-feedback tokens (``tokens="env"``, ``Candidate.env_topk``); the answer with the
    largest summed confidence wins.

    papers.md §1.11 only says "confidence voting over environment-feedback tokens scores 0.4925,
    versus 0.5200 over agent-response tokens" (BFCL v3 multi-turn categories, not SWE). It does
    not weight votes by token *counts*: the two variants differ in which tokens the DeepConf
    confidence is averaged over. "Voting" is read literally as DeepConf's confidence-weighted
    majority vote; this is our reading, not spelled out in the text. A candidate without
    confidence on the chosen tokens votes with weight 0; if no candidate has any, this is
    plain ``majority``.
    """
    if tokens not in ("agent", "env"):
        raise ValueError(f"tokens must be 'agent' or 'env', not {tokens!r}")
    conf = {id(c): trace_confidence(c.topk if tokens == "agent" else c.env_topk, k) for c in cands}
    if all(math.isinf(v) for v in conf.values()):
        return majority(cands)
    return _weighted_vote(cands, lambda c: 0.0 if math.isinf(conf[id(c)]) else conf[id(c)])


agent_token_vote = partial(confidence_vote, tokens="agent")
env_token_vote = partial(confidence_vote, tokens="env")


def tournament(cands: Sequence[Candidate], judge: Callable[[Candidate, Candidate], int],
               seed: int = 0) -> tuple[int, int]:
    """Knockout tournament: the bracket is the candidates shuffled by ``seed``; each round pairs
    neighbours, ``judge(a, b)`` returns 0 (a wins) or 1 (b wins), and an odd one out (the last)
    gets a bye, until one remains. Returns (winner's index, judge calls), the calls being N - 1."""
    _check(cands)
    bracket = list(cands)
    random.Random(seed).shuffle(bracket)
    calls = 0
    while len(bracket) > 1:
        nxt = []
        for i in range(0, len(bracket) - 1, 2):
            a, b = bracket[i], bracket[i + 1]
            won = judge(a, b)
            calls += 1
            if won not in (0, 1):
                raise ValueError(f"judge must return 0 or 1, got {won!r}")
            nxt.append(b if won else a)
        if len(bracket) % 2:
            nxt.append(bracket[-1])
        bracket = nxt
    return bracket[0].index, calls


SELECTORS: dict[str, Callable[..., Any]] = {
    "first": first, "majority": majority, "mean_logprob": mean_logprob, "agent_confidence": agent_confidence,
    "agent_token_vote": agent_token_vote, "env_token_vote": env_token_vote, "tournament": tournament}


def select(name: str, cands: Sequence[Candidate], **kw: Any) -> int:
    """Run selector ``name`` from ``SELECTORS`` on ``cands``; returns the chosen index (the
    tournament's judge-call count is dropped)."""
    if name not in SELECTORS:
        raise KeyError(f"unknown selector {name!r}; known: {sorted(SELECTORS)}")
    out = SELECTORS[name](cands, **kw)
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------- best-of-n curve

@dataclass(frozen=True)
class CurvePoint:
    """Success rate at n candidates: ``rate`` for the selector, ``oracle`` = pass@n."""

    n: int
    rate: float
    oracle: float
    tasks: int


def _is_correct(reward: Any) -> bool:  # a float or a RewardBreakdown
    return float(getattr(reward, "total", reward)) > 0


def best_of_n_curve(groups: Sequence[Sequence[tuple[Candidate, Any]]],
                    selector: str | Callable[..., Any], ns: Iterable[int] = (1, 2, 4, 8, 16),
                    correct: Callable[[Any], bool] = _is_correct, **kw: Any) -> list[CurvePoint]:
    """For each n, the fraction of tasks whose selected candidate, among its first n, is
    ``correct``; ``oracle`` is the fraction with any correct one among the first n (pass@n).
    ``groups`` is a list per task of (Candidate, reward) pairs; rewards are floats or
    ``RewardBreakdown`` (default ``correct``: total > 0). ``selector`` is a ``SELECTORS`` name
    or a callable; ``kw`` goes to it. An n larger than the smallest group is left out."""
    if not groups:
        return []
    pick = partial(select, selector) if isinstance(selector, str) else selector
    smallest = min(len(g) for g in groups)
    points = []
    for n in ns:
        if n < 1 or n > smallest:
            continue
        hits = oracle = 0
        for group in groups:
            head = list(group[:n])
            by_index = {c.index: r for c, r in head}
            if len(by_index) != len(head):
                raise ValueError("candidate indices must be unique within a task")
            chosen = pick([c for c, _ in head], **kw)
            chosen = chosen[0] if isinstance(chosen, tuple) else chosen
            hits += bool(correct(by_index[chosen]))
            oracle += any(correct(r) for _, r in head)
        points.append(CurvePoint(n=n, rate=hits / len(groups), oracle=oracle / len(groups), tasks=len(groups)))
    return points


def format_curve(points: Sequence[CurvePoint], name: str) -> str:
    """A small table: n, the selector's rate, pass@n."""
    rows = [f"{p.n:>4}  {p.rate:>16.4f}  {p.oracle:>8.4f}" for p in points]
    return "\n".join([f"{'n':>4}  {name:>16}  {'pass@n':>8}", *rows])
