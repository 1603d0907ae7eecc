"""The official BFCL AST checker (``bfcl_eval.eval_checker.ast_eval.ast_checker``), imported
without its model registry.

``ast_checker.py`` imports ``bfcl_eval.constants.model_config`` for a single lookup: whether a
model's API renamed dotted function names (``math.hypot`` -> ``math_hypot``). That module
imports every API client BFCL supports (openai, anthropic, cohere, google-genai, ...), which the
``--no-deps`` install leaves out. Before the first import we register a small stand-in module
under that name whose mapping answers "no renaming" for forge_ray's model name; forge_ray's
chat format keeps dotted names as they are. If the real registry is already imported, our entry
is added to it instead. Everything else is the package's own code.
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

from forge_ray.types import ToolCall

MODEL_NAME = "forge_ray"  # the checker looks up MODEL_NAME.replace("_", "/")
_REGISTRY_MODULE = "bfcl_eval.constants.model_config"


@dataclass(frozen=True)
class _NoRenaming:
    underscore_to_dot: bool = False


@dataclass(frozen=True)
class CheckResult:
    """The checker's verdict on one answer."""

    valid: bool
    error: str | None = None
    error_type: str | None = None


def _install_registry() -> None:
    key = MODEL_NAME.replace("_", "/")
    module = sys.modules.get(_REGISTRY_MODULE)
    if module is None:
        module = types.ModuleType(_REGISTRY_MODULE)
        module.__doc__ = "forge_ray stand-in for BFCL's model registry (see envs/function_calling/checker.py)."
        module.MODEL_CONFIG_MAPPING = {}
        sys.modules[_REGISTRY_MODULE] = module
    module.MODEL_CONFIG_MAPPING.setdefault(key, _NoRenaming())


def official_checker() -> tuple[Any, Any]:
    """``(ast_checker, Language)`` from the installed bfcl_eval package."""
    try:
        import bfcl_eval  # noqa: F401 - fail here, with the install hint, if it is missing
    except ModuleNotFoundError:
        from envs.function_calling.bfcl_data import INSTALL_HINT

        raise ModuleNotFoundError(f"the official BFCL checker needs bfcl_eval: {INSTALL_HINT}") from None
    _install_registry()
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    return ast_checker, Language


def check_calls(calls: list[ToolCall], functions: list[dict], possible_answers: list[dict], category: str) -> CheckResult:
    """Check ``calls`` against BFCL-style ``possible_answers`` with the official AST checker.

    ``category`` routes as BFCL does: names containing "parallel" use the order-free parallel
    checker, "multiple" the multiple-function checker, anything else the simple checker. The
    categories without possible answers are judged on call presence, as BFCL's
    ``_evaluate_single_relevance_entry`` judges them: "irrelevance" (also "live_irrelevance") is
    valid iff no call was made, "relevance" ("live_relevance") iff at least one was. "No call"
    is an empty call list or an answer that does not decode (the caller passes ``[]`` for it),
    as BFCL counts a decode failure and an empty decoded list alike. A checker exception (it was
    written for well-formed model output) counts as an invalid answer, with the exception recorded.
    """
    if "irrelevance" in category:  # before "relevance", which it contains
        return CheckResult(True) if not calls else CheckResult(False, "made a call where no function fits", "irrelevance_error:decoder_success")
    if "relevance" in category:
        return CheckResult(True) if calls else CheckResult(False, "made no call where a function fits", "relevance_error:decoder_failed")
    ast_checker, language = official_checker()
    model_output = [{c.name: dict(c.arguments)} for c in calls]
    try:
        verdict = ast_checker(functions, model_output, possible_answers, language.PYTHON, category, MODEL_NAME)
    except Exception as e:  # noqa: BLE001 - odd model output must not crash scoring
        return CheckResult(False, f"checker raised {type(e).__name__}: {str(e)[:200]}", "checker_exception")
    if verdict.get("valid"):
        return CheckResult(True)
    errors = verdict.get("error") or []
    return CheckResult(False, "; ".join(map(str, errors))[:500] or None, verdict.get("error_type"))
