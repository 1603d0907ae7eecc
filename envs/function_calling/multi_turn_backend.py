"""BFCL's stateful multi-turn back-ends and its official multi-turn checker, as the multi-turn
environment uses them.

Execution goes through BFCL's own helper,
``bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils.execute_multi_turn_func_call``: the
function BFCL's inference loop and its checker both call. It instantiates the involved classes
(``GorillaFileSystem``, ``TradingBot``, ...), loads each with ``_load_scenario(initial_config,
long_context=...)``, rewrites every call string ``name(k=v)`` into a method call on the instance
that owns ``name``, ``eval``s it and returns each result as a string (``"Error during execution:
..."`` when it raised). It keeps the instances in its module's globals, under a name made of a
model name, the entry id and the class, so that later calls of the same episode see the same
state. Two consequences, handled here:

- every episode and every checker run uses a fresh, unique model name (``forge_ray_<uuid>``), so
  no two episodes share a back-end, and its instances are deleted when it ends (``forget``):
  BFCL itself never deletes them;
- the helper ``eval``s what it is given, so only calls forge_ray rendered itself reach it: a
  function name that is a public method of an involved class (exactly the names BFCL's helper
  routes to an instance) and identifier argument names, with ``repr``'d literal values. Any other
  call is not executed; the model sees the error BFCL's ``eval`` would give, and the checker gets
  ``INVALID_CALL`` (which fails with a NameError as well, and changes no state).

The checker (``multi_turn_checker``) executes the model's per-turn decoded calls and the ground
truth on fresh instances, turn by turn, and compares the instances' states and the execution
results after each turn; ``judge`` adds what BFCL's eval runner checks before calling it (an
episode that did not play every turn fails as "force-terminated") and, for a failed episode,
finds how many leading turns pass (the checker on shorter ground-truth prefixes).
"""
from __future__ import annotations

import ast
import inspect
import keyword
import re
import uuid
from dataclasses import dataclass
from typing import Any

from forge_ray.types import ToolCall

INVALID_CALL = "forge_ray_invalid_call()"  # recorded for a call that was not executed
_UNSAFE_ID = re.compile(r"\W")


def _utils() -> Any:
    """BFCL's ``multi_turn_utils`` module (it imports only BFCL's back-end path table)."""
    try:
        from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("bfcl_eval"):
            from envs.function_calling.bfcl_data import INSTALL_HINT

            raise ModuleNotFoundError(f"the BFCL multi-turn back-ends need bfcl_eval: {INSTALL_HINT}") from None
        raise
    return multi_turn_utils


def step_limit() -> int:
    """BFCL's ``MAXIMUM_STEP_LIMIT``: steps with calls per user turn before a forced quit."""
    from bfcl_eval.constants.default_prompts import MAXIMUM_STEP_LIMIT

    return int(MAXIMUM_STEP_LIMIT)


def backend_class(class_name: str) -> type:
    """The back-end class BFCL maps ``class_name`` to (e.g. ``GorillaFileSystem``)."""
    import importlib

    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    if class_name not in CLASS_FILE_PATH_MAPPING:
        raise ValueError(f"unknown BFCL back-end class {class_name!r}; known: {', '.join(sorted(CLASS_FILE_PATH_MAPPING))}")
    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


def is_long_context(entry_id: str) -> bool:
    """Whether BFCL loads the scenario with ``long_context=True``: its own rule, on the category
    part of the entry id (``multi_turn_long_context_3`` -> ``multi_turn_long_context``)."""
    category = entry_id.rsplit("_", 1)[0]
    return "long_context" in category or "composite" in category


def safe_entry_id(entry_id: str) -> str:
    """``entry_id`` as BFCL's helper can put it in a Python name."""
    return _UNSAFE_ID.sub("_", entry_id)


def forget(namespace: str) -> None:
    """Delete the back-end instances BFCL's helper keeps for ``namespace`` (a model name)."""
    store = vars(_utils())
    for key in [k for k in list(store) if k.startswith(namespace + "_")]:
        store.pop(key, None)


def _namespace() -> str:
    return f"forge_ray_{uuid.uuid4().hex}"


def _is_identifier(name: Any) -> bool:
    return isinstance(name, str) and name.isascii() and name.isidentifier() and not keyword.iskeyword(name)


def render_call(call: ToolCall, methods: set[str] | frozenset[str]) -> tuple[str | None, str | None]:
    """``(call string, None)`` for a call BFCL's helper may run -- ``name(k=repr(v),...)``, as
    BFCL renders a function-calling model's calls -- or ``(None, error observation)``."""
    if not isinstance(call.name, str) or call.name not in methods:
        return None, f"Error during execution: name {call.name!r} is not defined"
    if not isinstance(call.arguments, dict):
        return None, f"Error during execution: arguments of {call.name} must be an object"
    bad = [k for k in call.arguments if not _is_identifier(k)]
    if bad:
        return None, f"Error during execution: invalid argument name {bad[0]!r} for {call.name}"
    return f"{call.name}({','.join(f'{k}={v!r}' for k, v in call.arguments.items())})", None


class Backends:
    """The back-end instances of one episode: ``start`` loads the scenario, ``run`` executes a
    step's calls (in order) and ``close`` deletes the instances."""

    def __init__(self, entry_id: str, initial_config: dict[str, Any], involved_classes: list[str]):
        self.entry_id = safe_entry_id(entry_id)
        self.initial_config = initial_config
        self.involved_classes = list(involved_classes)
        self.long_context = is_long_context(self.entry_id)
        self.namespace = _namespace()
        self.methods: frozenset[str] = frozenset()

    def _execute(self, calls: list[str]) -> tuple[list[str], dict[str, Any]]:
        return _utils().execute_multi_turn_func_call(calls, self.initial_config, self.involved_classes, self.namespace,
                                                     self.entry_id, long_context=self.long_context)

    def start(self) -> None:
        """Instantiate and load the involved classes (as BFCL's inference loop does first)."""
        _, instances = self._execute([])
        self.methods = frozenset(name for instance in instances.values()
                                 for name, _ in inspect.getmembers(instance, predicate=inspect.ismethod) if not name.startswith("_"))

    def run(self, calls: list[ToolCall]) -> tuple[list[str], list[str]]:
        """``(observations, recorded)``: one result string per call, and the call strings the
        checker will re-execute (``INVALID_CALL`` for calls that were not executed)."""
        rendered = [render_call(call, self.methods) for call in calls]
        runnable = [text for text, _ in rendered if text is not None]
        results = iter(self._execute(runnable)[0] if runnable else [])
        observations = [next(results) if text is not None else error for text, error in rendered]
        return [str(o) for o in observations], [text if text is not None else INVALID_CALL for text, _ in rendered]

    def close(self) -> None:
        forget(self.namespace)


# -- gold calls -----------------------------------------------------------------------------------


def _method_params(involved_classes: list[str]) -> dict[str, list[str]]:
    """``{method name: parameter names in order}`` of the involved classes' public methods."""
    params: dict[str, list[str]] = {}
    for class_name in involved_classes:
        for name, fn in inspect.getmembers(backend_class(class_name), predicate=inspect.isfunction):
            if not name.startswith("_"):
                params[name] = [p for p in inspect.signature(fn).parameters if p != "self"]
    return params


def gold_tool_calls(call_texts: list[str], involved_classes: list[str]) -> list[ToolCall]:
    """BFCL ground-truth call strings (``mv(source='a', destination='b')``, ``sort('f.pdf')``) as
    ``ToolCall``s, positional arguments named from the back-end method's signature."""
    params = _method_params(involved_classes)
    calls = []
    for text in call_texts:
        node = ast.parse(text, mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise ValueError(f"ground-truth call is not a plain function call: {text!r}")
        name = node.func.id
        if node.args and name not in params:
            raise ValueError(f"ground-truth call {text!r}: no back-end method {name!r} to name its positional arguments")
        arguments = {params[name][i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
        arguments.update({kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None})
        calls.append(ToolCall(name, arguments))
    return calls


# -- scoring --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgement:
    """BFCL's verdict on one episode, with how far it got."""

    valid: bool
    turns: int  # user turns of the task
    turns_passed: int  # leading turns the checker accepts (== turns when valid)
    error_type: str | None = None
    error_message: str | None = None


def run_checker(decoded: list[list[list[str]]], ground_truth: list[list[str]], entry: dict[str, Any]) -> dict[str, Any]:
    """``multi_turn_checker`` on fresh back-ends; ``{"valid": bool, ...}``. An exception inside
    the checker (it asserts on odd input) is an invalid answer, with the exception recorded."""
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    namespace = _namespace()
    try:
        return multi_turn_checker(decoded, ground_truth, entry, entry["id"].rsplit("_", 1)[0], namespace)
    except Exception as e:  # noqa: BLE001 - odd model output must not crash scoring
        return {"valid": False, "error_type": "checker_exception", "error_message": f"{type(e).__name__}: {str(e)[:300]}"}
    finally:
        forget(namespace)


def _turns_passed(decoded: list[list[list[str]]], ground_truth: list[list[str]], entry: dict[str, Any], upto: int) -> int:
    """The largest k <= ``upto`` such that the checker accepts the first k turns (it stops at
    the first failing turn, so acceptance is monotone in k): a binary search."""
    lo, hi = 0, upto
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if run_checker(decoded, ground_truth[:mid], entry)["valid"]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def judge(decoded: list[list[list[str]]], ground_truth: list[list[str]], entry: dict[str, Any], *, finished: bool,
          force_quit: bool) -> Judgement:
    """BFCL's verdict: an episode that stopped before its last turn ended (the step limit, or the
    agent loop's budget) fails as BFCL's eval runner fails a force-terminated one; otherwise the
    official checker decides. ``entry`` holds ``id``, ``initial_config``, ``involved_classes``."""
    turns = len(ground_truth)
    if force_quit or not finished or len(decoded) != turns:
        completed = min(len(decoded) - (0 if finished and not force_quit else 1), turns)
        reason = "the step limit of a user turn" if force_quit else "the end of the episode (token budget or timeout)"
        return Judgement(False, turns, _turns_passed(decoded, ground_truth, entry, max(completed, 0)), "multi_turn:force_terminated",
                         f"played {len(decoded)} of {turns} turns; stopped by {reason}")
    verdict = run_checker(decoded, ground_truth, entry)
    if verdict.get("valid"):
        return Judgement(True, turns, turns)
    return Judgement(False, turns, _turns_passed(decoded, ground_truth, entry, turns - 1), str(verdict.get("error_type")),
                     str(verdict.get("error_message"))[:500])
