"""The objects that cross actor boundaries.

Everything a Ray actor sends or receives is one of these dataclasses: never a free-form dict.
They hold plain Python values (lists of ints and floats, strings), so they pickle cheaply into
the object store and import without torch.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(str, enum.Enum):
    """How an episode ended. Only ``OK`` trajectories contribute loss."""

    OK = "ok"
    TRUNCATED = "truncated"  # hit max context or max turns
    TIMED_OUT = "timed_out"  # hit the episode wall-clock limit
    ENV_FAILURE = "env_failure"  # the environment crashed or raised


@dataclass(frozen=True)
class Task:
    """One prompt of an environment: what the agent is asked, and what the checker needs."""

    id: str
    env: str
    messages: list[dict[str, Any]]  # chat messages (system / user) that open the episode
    tools: list[dict[str, Any]]  # JSON-schema tool specs shown to the model
    answer: Any = None  # gold data for the reward (env-specific, JSON-serialisable)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolCall:
    """A parsed tool call: ``name`` and JSON ``arguments``."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Action:
    """One assistant turn as the environment sees it."""

    text: str  # the decoded assistant text, without the end-of-turn marker
    tool_calls: list[ToolCall]
    parse_error: str | None = None  # set when the text held a malformed tool call


@dataclass(frozen=True)
class StepResult:
    """What an environment answers to an action."""

    messages: list[dict[str, Any]]  # observation messages (role "tool") to show the model
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Turn:
    """One sampled assistant span inside ``Trajectory.tokens``: ``tokens[start:end]``."""

    start: int
    end: int
    version: int  # policy version of the engine weights that sampled this turn (its first token)
    finish_reason: str  # "stop" or "length"
    resumed: tuple[tuple[int, int], ...] = ()  # (position, version): a weight update interrupted the turn there, a newer version went on


@dataclass(frozen=True)
class RewardBreakdown:
    """A scored trajectory: total reward plus its named parts and optional per-turn rewards."""

    total: float
    parts: dict[str, float] = field(default_factory=dict)
    per_turn: list[float] | None = None
    error: str | None = None  # set when scoring failed; such a trajectory is masked


@dataclass
class Trajectory:
    """A finished episode, token-in/token-out.

    ``tokens`` is the full sequence (prompt, sampled turns, observations) exactly as the engine
    saw it; ``logprobs`` holds the engine's logprob for sampled tokens and 0.0 elsewhere;
    ``loss_mask`` is 1 on tokens the model sampled and 0 on prompt/tool/environment tokens.
    """

    task_id: str
    group_id: str  # trajectories sharing a group id are GRPO siblings
    sample_index: int
    prompt_len: int
    tokens: list[int]
    logprobs: list[float]
    loss_mask: list[int]
    turns: list[Turn]
    status: Status
    messages: list[dict[str, Any]]  # decoded conversation, for logging and the checker
    reward: RewardBreakdown | None = None
    env_seconds: float = 0.0  # in the environment: open, step calls
    gen_seconds: float = 0.0  # waiting for the engine's turns
    score_seconds: float = 0.0  # scoring (the reward actor, or in process)
    wall_seconds: float = 0.0  # the whole episode, open to close
    topk: list[list[float]] = field(default_factory=list)  # per sampled token, the engine's top-k logprobs (EpisodeSpec.topk > 0; else empty)

    @property
    def versions(self) -> list[int]:
        return [t.version for t in self.turns]

    @property
    def min_version(self) -> int:
        return min(self.versions, default=-1)

    def token_versions(self) -> list[int]:
        """The policy version that sampled each token (-1 where none did: prompt, observations)."""
        out = [-1] * len(self.tokens)
        for turn in self.turns:
            marks = [(turn.start, turn.version), *turn.resumed, (turn.end, -1)]
            for (begin, version), (stop, _) in zip(marks, marks[1:]):
                out[begin:stop] = [version] * (stop - begin)
        return out

    @property
    def num_sampled(self) -> int:
        return sum(self.loss_mask)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``run.dump_rollouts``); ``from_json`` reads it back."""
        import dataclasses

        return {**dataclasses.asdict(self), "status": self.status.value}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "Trajectory":
        reward = row.get("reward")
        turns = [Turn(**{**t, "resumed": tuple(tuple(r) for r in t.get("resumed", ()))}) for t in row["turns"]]
        return cls(**{**row, "status": Status(row["status"]), "turns": turns,
                      "reward": RewardBreakdown(**reward) if reward else None})


@dataclass(frozen=True)
class EpisodeTime:
    """Where one episode's wall time went (seconds): waiting for the engine's turns, the
    environment (open, steps), scoring. The rest of ``wall`` is the agent loop itself: its
    tokenising, Ray calls and event-loop waits (``forge_ray/anatomy.py``)."""

    wall: float = 0.0
    engine: float = 0.0
    env: float = 0.0
    score: float = 0.0


@dataclass(frozen=True)
class TrajectoryMeta:
    """What the buffer keeps about a trajectory whose payload lives in the object store."""

    task_id: str
    group_id: str
    sample_index: int
    min_version: int
    status: Status
    reward: float
    num_tokens: int
    turn_rewards: tuple[float, ...] = ()  # per assistant turn, when the reward has them
    reward_error: str | None = None  # scoring failed (RewardBreakdown.error): kept out of the loss and the statistics
    issue: int = 0  # the feeder's issue number of the group's prompt (the learner takes groups in issue order)
    time: EpisodeTime = EpisodeTime()  # where the episode's wall time went (the step anatomy)
    resumed: int = 0  # turns continued under newer weights after an interruption (rollout.interruptible)


@dataclass(frozen=True)
class Advantage:
    """A trajectory's learning signal: ``value`` on every sampled token, plus ``per_turn[k]`` on
    assistant turn k's tokens (the step-wise credit; turns past its end get no bonus)."""

    value: float
    per_turn: tuple[float, ...] = ()


@dataclass(frozen=True)
class WeightBucket:
    """One slice of the policy's weights on its way to the engines: ``payload`` is the
    backend's ``update_info`` (names, dtypes, shapes and the packed bytes)."""

    version: int
    index: int
    count: int  # how many buckets make up this version
    payload: dict[str, Any]
    nbytes: int


@dataclass(frozen=True)
class Generation:
    """One engine call: the sampled ids, their logprobs, and the weights that produced them."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" or "length"
    version: int
    topk: list[list[float]] = field(default_factory=list)  # per sampled token, its step's top-k logprobs, descending (generate(topk=k))
