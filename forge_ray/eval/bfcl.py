"""BFCL accuracy of a model, measured by forge_ray's own rollout path and BFCL's checker.

``run_bfcl`` loads BFCL's single-turn categories, non-live and live, from the installed
``bfcl-eval`` package (``envs/function_calling``), then either

- plays every task once, greedily, on a vLLM engine through ``RolloutWorker.evaluate`` -- the
  class the ``RolloutGroup`` actors host, so the prompt rendering, the agent loop, the
  ``<tool_call>`` parsing and the env's scoring are exactly the ones RL uses -- or
- with ``gold``, replays each task's possible answers (first allowed value of every argument,
  rendered as forge_ray ``<tool_call>`` text; see ``gold_answer``) through the same parsing and
  checker, with no model: a check of the evaluation path itself; or
- with ``empty``, replays an empty answer (no call) for every task: 0 on the AST categories
  and ``live_relevance``, 1 on ``irrelevance`` and ``live_irrelevance``.

Accuracy is the env's ``correct`` part: BFCL's verdict (the official AST checker for the AST
categories; no call made for the irrelevance ones; at least one call for ``live_relevance``).
Output: a table on stdout and a JSON file ``{category: {"accuracy": float, "n": int}, ...,
"overall": {...}}``, ``overall`` being BFCL's summary scores over the categories run
(``bfcl_overall``); ``details`` adds one JSON line per task.

``bfcl_root`` also writes BFCL's own result files, which ``bfcl evaluate`` re-scores:
``<root>/result/<model dir>/<non_live|live>/BFCL_v4_<category>_result.json``, one
``{"id", "result"}`` line per task, laid out as BFCL's generation step writes them for a
*prompting* model (see ``write_bfcl_results`` and ``bfcl_answer``).
"""
from __future__ import annotations

import ast
import asyncio
import json
import keyword
import logging
import math
import time
import unicodedata
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from forge_ray.eval.bfcl_score import bfcl_overall, format_overall, score_sizes
from forge_ray.types import Task, ToolCall, Trajectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BfclEvalConfig:
    """One ``forge-ray eval bfcl`` run."""

    categories: tuple[str, ...]
    model: str | None = None  # a Hugging Face folder vLLM can serve; None with gold=True
    gold: bool = False  # replay the possible answers instead of generating
    empty: bool = False  # replay an empty answer (no call) for every task
    limit: int | None = None  # the first N tasks of each category
    out: str | None = None  # the JSON summary file
    details: str | None = None  # one JSON line per task (output text, verdict)
    log_every: int = 50  # tasks per engine batch, and how often progress is logged
    max_new_tokens: int = 512  # BFCL's longest gold answer is ~420 SmolLM2 tokens
    max_context: int = 2048  # longest non-live prompt with tools ~1.1k tokens; live ones up to ~6.8k (use 8192)
    kv_cache_mb: int = 2048
    dtype: str | None = None  # default: float32 on CPU, bfloat16 on CUDA
    device: str = "auto"
    bfcl_root: str | None = None  # also write BFCL result files under <bfcl_root>/result/
    bfcl_model_name: str | None = None  # BFCL registry name they are filed under (default BFCL_MODEL_NAME)


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    category: str
    correct: bool
    format_ok: bool
    status: str
    text: str  # the assistant turn that was scored ("" when there was none)
    error: str | None = None  # checker or parse error, or a scoring failure


def load_tasks(categories: tuple[str, ...], limit: int | None) -> list[Task]:
    from envs.function_calling.bfcl_data import load_category

    return [t for c in categories for t in load_category(c, limit)]


def _verdict_error(env: Any, task: Task, text: str) -> str | None:
    verdict = env.verdict(task, text)
    return None if verdict["valid"] else (verdict["parse_error"] or verdict["error"] or verdict["error_type"])


def replay_results(tasks: list[Task], answer: Callable[[Task], str]) -> list[TaskResult]:
    """Each task's ``answer(task)`` through ``parse_action`` -> ``env.step`` -> ``env.score``,
    as the agent loop would send a model's turn."""
    from envs import make_env
    from forge_ray.chat import parse_action

    results = []
    for task in tasks:
        env = make_env("function_calling")
        env.open(task)
        text = answer(task)
        env.step(parse_action(text))
        reward = env.score(task, [*task.messages, {"role": "assistant", "content": text}])
        correct = reward.error is None and reward.parts.get("correct") == 1.0
        results.append(TaskResult(task.id, task.meta["category"], correct, reward.parts.get("format") == 1.0, "ok", text,
                                  reward.error or (None if correct else _verdict_error(env, task, text))))
    return results


def _is_relevance(category: str) -> bool:
    return "relevance" in category and "irrelevance" not in category


# BFCL type name -> an empty value of that type, for the relevance gold call.
_EMPTY_VALUES: dict[str, Any] = {"string": "", "integer": 0, "float": 0.0, "boolean": False, "array": [], "tuple": [],
                                 "dict": {}, "any": ""}


def relevance_gold_call(functions: list[dict[str, Any]]) -> ToolCall:
    """``live_relevance`` has no possible answers: BFCL asks only for at least one call. The
    gold call is the first listed function with each required parameter set to its default,
    else its first enum value, else an empty value of its type."""
    params = functions[0].get("parameters") or {}
    props = params.get("properties") or {}
    return ToolCall(functions[0]["name"], {name: _placeholder(props.get(name) or {}) for name in params.get("required") or []})


def _placeholder(spec: dict[str, Any]) -> Any:
    if "default" in spec:
        return spec["default"]
    if spec.get("enum"):
        return spec["enum"][0]
    return _EMPTY_VALUES.get(spec.get("type"), "")


def _empty_last(allowed: Any) -> Any:
    if isinstance(allowed, list) and "" in allowed and any(a != "" for a in allowed):
        return [a for a in allowed if a != ""] + [""]
    return allowed


def required_values_first(possible_answers: list[dict[str, Any]], functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The possible answers with ``""`` ("leave it out") moved behind the other allowed values of
    each parameter that the function requires. Some entries list ``""`` first for a required
    parameter (``simple_python_200``'s ``fuel_efficiency``: ``["", 25.0]``,
    ``live_multiple_144-56-0``'s ``perPage``: ``["", 100]``); the checker rejects a call that
    leaves a required parameter out, so the gold call gives the next allowed value."""
    required = {f["name"]: set((f.get("parameters") or {}).get("required") or []) for f in functions}
    out = []
    for entry in possible_answers:
        ((name, params),) = entry.items()
        need = required.get(name, set())
        out.append({name: {k: _empty_last(v) if k in need else v for k, v in params.items()}})
    return out


def gold_answer(task: Task) -> str:
    """The gold turn of a BFCL task: ``envs.function_calling.gold.gold_text`` of its possible
    answers (``required_values_first``), or for ``live_relevance`` the ``relevance_gold_call``."""
    from envs.function_calling.gold import gold_text
    from forge_ray.chat import render_tool_call

    if _is_relevance(str(task.meta.get("category"))):
        return render_tool_call(relevance_gold_call(task.answer["functions"]))
    answers = required_values_first(task.answer["possible_answers"], task.answer["functions"])
    return gold_text(replace(task, answer={**task.answer, "possible_answers": answers}))


def gold_results(tasks: list[Task]) -> list[TaskResult]:
    """Each task's gold answer (``gold_answer``), replayed."""
    return replay_results(tasks, gold_answer)


def empty_results(tasks: list[Task]) -> list[TaskResult]:
    """An empty assistant turn for every task: no call (right only on the irrelevance categories)."""
    return replay_results(tasks, lambda task: "")


def _result(env: Any, task: Task, traj: Trajectory) -> TaskResult:
    texts = [m["content"] for m in traj.messages[len(task.messages):] if m.get("role") == "assistant"]
    text = texts[-1] if texts else ""
    parts = traj.reward.parts if traj.reward else {}
    error = traj.reward.error if traj.reward else "no reward"
    correct = error is None and parts.get("correct") == 1.0
    if error is None and not correct:
        error = _verdict_error(env, task, text) if texts else f"no complete assistant turn (status {traj.status.value})"
    return TaskResult(task.id, task.meta["category"], correct, parts.get("format") == 1.0, traj.status.value, text, error)


def model_results(cfg: BfclEvalConfig, tasks: list[Task]) -> list[TaskResult]:
    """Greedy episodes on one in-process vLLM engine, ``cfg.log_every`` tasks at a time."""
    from envs import factory, make_env
    from forge_ray.eval.harness import EngineSpec, Progress, play_policy

    spec = EngineSpec(cfg.model, max_new_tokens=cfg.max_new_tokens, max_context=cfg.max_context, kv_cache_mb=cfg.kv_cache_mb,
                      dtype=cfg.dtype, device=cfg.device, temperature=0.0)
    env, by_id, progress = make_env("function_calling"), {t.id: t for t in tasks}, Progress("bfcl", len(tasks))

    def on_batch(done: int, trajs: list) -> None:
        progress(done, sum(_result(env, by_id[t.task_id], t).correct for t in trajs) / max(len(trajs), 1), "accuracy")

    trajs = asyncio.run(play_policy(spec, factory("function_calling"), tasks, batch=cfg.log_every, on_batch=on_batch))
    return [_result(env, by_id[t.task_id], t) for t in trajs]


# -- BFCL's own result files ---------------------------------------------------------------------
#
# ``bfcl evaluate`` (bfcl_eval/eval_checker/eval_runner.py) walks ``$BFCL_PROJECT_ROOT/result/``:
# every sub-folder is a model, named after its registry key with "/" written as "_" (and read
# back the other way, so a key with "_" in it cannot be evaluated); inside it, any file matching
# ``BFCL_v4_*_result.json``, at any depth, holds one JSON object per line, ``{"id", "result"}``
# (BFCL's generation step adds token counts and latency, which evaluation only averages). Each
# ``result`` goes through the model's handler's ``decode_ast`` and then the AST checker (or, for
# the irrelevance and relevance categories, "did it decode to at least one call"); scores land in
# ``$BFCL_PROJECT_ROOT/score/<model>/<group>/BFCL_v4_<category>_score.json``, whose first line
# is ``{"accuracy", "correct_count", "total_count"}``. ``<group>`` is BFCL's
# ``get_directory_structure_by_category``: "live" for the live categories, "non_live" for the
# others forge_ray writes; the result files go under the same group folder, as BFCL's generation
# step puts them.
#
# No handler of BFCL reads forge_ray's chat format (Hermes blocks without newlines:
# ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``; BFCL's Hermes-style handlers need
# ``<tool_call>\n...\n</tool_call>`` or read only the first block), so the files are written for a
# *prompting* model, whose answers are Python call lists decoded by BFCL's
# ``default_decode_ast_prompting`` -- the syntax forge_ray's own parser also reads
# (``envs/function_calling/parsing.py``). ``BFCL_MODEL_NAME`` is a registered prompt-mode model
# whose handler keeps that decoder and whose checker entry keeps dotted function names
# (``underscore_to_dot`` False), as forge_ray's checker does.

BFCL_MODEL_NAME = "Qwen/Qwen3-0.6B"
# Handlers (bfcl-eval 2026.3.23) that inherit OSSHandler.decode_ast, i.e. default_decode_ast_prompting.
PROMPT_DECODER_HANDLERS = ("QwenHandler", "LlamaHandler", "GemmaHandler")
# A called name that is not a Python (dotted) name cannot be written as a call: it is written as
# this one, which no BFCL function has, so the call still counts as a (wrong) call.
UNRENDERABLE_NAME = "forge_ray.unrenderable_function_name"


def bfcl_model_dir(model_name: str) -> str:
    """The result/score folder BFCL uses for a registry name."""
    return model_name.replace("/", "_")


def _registry(path: Path) -> dict[str, tuple[str | None, bool, bool]] | None:
    """``{name: (handler class, is_fc_model, underscore_to_dot)}`` read from BFCL's
    model_config.py source (it cannot be imported without every API client); None when the file
    is not there."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    found: dict[str, tuple[str | None, bool, bool]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if (isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(value, ast.Call)
                    and getattr(value.func, "id", None) == "ModelConfig"):
                kw = {k.arg: k.value for k in value.keywords}

                def flag(name: str, default: bool) -> bool:
                    node = kw.get(name)
                    return bool(node.value) if isinstance(node, ast.Constant) else default

                # ModelConfig's defaults: is_fc_model=True, underscore_to_dot=False
                found[key.value] = (getattr(kw.get("model_handler"), "id", None), flag("is_fc_model", True),
                                    flag("underscore_to_dot", False))
    return found or None


def check_bfcl_model_name(model_name: str) -> None:
    """Raise ``ValueError`` unless ``bfcl evaluate`` would decode files filed under
    ``model_name`` with its prompting decoder (see the comment above ``BFCL_MODEL_NAME``)."""
    if "_" in model_name:
        raise ValueError(f"BFCL model name {model_name!r} contains '_': BFCL reads result folder names back with '_' -> '/'")
    from envs.function_calling.bfcl_data import data_dir

    registry = _registry(data_dir().parent / "constants" / "model_config.py")
    if registry is None:
        return  # the installed bfcl-eval keeps its registry elsewhere: nothing to check against
    if model_name not in registry:
        raise ValueError(f"{model_name!r} is not in the installed bfcl-eval's model registry (default: {BFCL_MODEL_NAME})")
    handler, is_fc, underscore_to_dot = registry[model_name]
    if underscore_to_dot:
        raise ValueError(f"{model_name!r} has BFCL check dotted function names with '_' (underscore_to_dot); "
                         f"forge_ray keeps them as they are (default: {BFCL_MODEL_NAME})")
    if is_fc or handler not in PROMPT_DECODER_HANDLERS:
        raise ValueError(f"{model_name!r} is {'an FC' if is_fc else 'a prompt'} model handled by {handler}; forge_ray's "
                         f"result files need a prompt-mode model handled by one of {', '.join(PROMPT_DECODER_HANDLERS)} "
                         f"(default: {BFCL_MODEL_NAME})")


def _is_identifier(name: Any) -> bool:
    # Python's parser NFKC-normalises identifiers: a name that normalisation changes (``ﬁle``)
    # would come back as another name, so only NFKC-stable ones (``año_vehiculo``) are written bare.
    return (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)
            and unicodedata.normalize("NFKC", name) == name)


def _literal(value: Any) -> str:
    """Python source of a JSON value that ``ast`` (and BFCL's decoder) reads back unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"  # no literal exists; BFCL reads the call as a string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def python_call_list(calls: list[Any]) -> str:
    """``[f(a=1), mod.g(b='x')]``: calls in the syntax BFCL's prompting models answer in.

    Arguments whose names are not Python identifiers go into a trailing ``**{...}`` (BFCL's
    decoder files them under the name ``None``: an unexpected argument, as forge_ray's checker
    also finds them); a function name that is not a dotted Python name becomes
    ``UNRENDERABLE_NAME``."""
    rendered = []
    for call in calls:
        name = call.name if isinstance(call.name, str) and all(_is_identifier(p) for p in call.name.split(".")) else UNRENDERABLE_NAME
        args = [f"{k}={_literal(v)}" for k, v in call.arguments.items() if _is_identifier(k)]
        other = {k: v for k, v in call.arguments.items() if not _is_identifier(k)}
        if other:
            args.append("**" + _literal(other))
        rendered.append(f"{name}({', '.join(args)})")
    return "[" + ", ".join(rendered) + "]"


def bfcl_answer(text: str) -> str:
    """The ``result`` written for one assistant turn: the answer as a BFCL prompting model gives it.

    A turn without ``<tool_call>`` tags -- Python call syntax, prose, an empty turn -- is already
    in the prompting models' format and is written unchanged: BFCL decodes it itself. A turn in
    forge_ray's chat format becomes the Python call list of the calls forge_ray decoded from it;
    one that did not parse is written unchanged, which BFCL cannot decode either (both count it
    as no call)."""
    from envs.function_calling.parsing import parse_calls
    from forge_ray.chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

    if TOOL_CALL_OPEN not in text and TOOL_CALL_CLOSE not in text:
        return text
    action = parse_calls(text)
    return text if action.parse_error is not None else python_call_list(action.tool_calls)


def bfcl_result_group(category: str) -> str:
    """BFCL's result/score sub-folder of a single-turn category: "live" or "non_live"."""
    from envs.function_calling.bfcl_data import LIVE_CATEGORIES, NON_LIVE_CATEGORIES

    if category in LIVE_CATEGORIES:
        return "live"
    if category in NON_LIVE_CATEGORIES:
        return "non_live"
    raise ValueError(f"no BFCL result folder known for category {category!r}")


def write_bfcl_results(results: list[TaskResult], categories: tuple[str, ...], root: str | Path,
                       model_name: str = BFCL_MODEL_NAME) -> list[Path]:
    """``<root>/result/<model dir>/<group>/BFCL_v4_<category>_result.json`` for each category
    (``<group>``: ``bfcl_result_group``): one ``{"id", "result"}`` line per task in task order
    (plus ``forge_ray_text``, the turn as the model wrote it, where ``result`` differs from it).
    Existing files are replaced."""
    from envs.function_calling.bfcl_data import VERSION_PREFIX

    paths = []
    for category in categories:
        folder = Path(root) / "result" / bfcl_model_dir(model_name) / bfcl_result_group(category)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{VERSION_PREFIX}_{category}_result.json"
        with open(path, "w", encoding="utf-8") as f:
            for r in results:
                if r.category != category:
                    continue
                line = {"id": r.task_id, "result": bfcl_answer(r.text)}
                if line["result"] != r.text:
                    line["forge_ray_text"] = r.text
                f.write(json.dumps(line) + "\n")
        paths.append(path)
    return paths


def bfcl_evaluate_command(root: str | Path, model_name: str, categories: tuple[str, ...], partial: bool) -> str:
    """The shell command that has BFCL re-score the files ``write_bfcl_results`` wrote."""
    return (f"BFCL_PROJECT_ROOT={Path(root).resolve()} bfcl evaluate --model {model_name} "
            f"--test-category {','.join(categories)}" + (" --partial-eval" if partial else ""))


def summarize(results: list[TaskResult], categories: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    summary = {}
    for category in categories:
        rows = [r for r in results if r.category == category]
        summary[category] = {"accuracy": sum(r.correct for r in rows) / len(rows) if rows else 0.0, "n": len(rows)}
    return summary


def write_outputs(cfg: BfclEvalConfig, report: dict[str, Any], results: list[Any]) -> None:
    """``report`` as JSON into ``cfg.out`` and one JSON line per task result into ``cfg.details``
    (each only when set)."""
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", cfg.out)
    if cfg.details:
        Path(cfg.details).parent.mkdir(parents=True, exist_ok=True)
        with open(cfg.details, "w") as f:
            for r in results:
                f.write(json.dumps(asdict(r)) + "\n")


def format_table(summary: dict[str, dict[str, Any]], title: str, columns: tuple[str, ...] = ("accuracy",)) -> str:
    """Per-category ``columns`` and ``n``, then their means over the categories (``n`` summed)."""
    width = max([len(c) for c in summary] + [len("overall (mean of categories)")])
    widths = [max(8, len(k)) for k in columns]

    def row(name: str, values: list[float], n: int) -> str:
        return f"{name:<{width}}" + "".join(f"  {v:>{w}.4f}" for v, w in zip(values, widths)) + f"  {n:>5}"

    rule = "-" * (width + sum(w + 2 for w in widths) + 7)
    lines = [title, f"{'category':<{width}}" + "".join(f"  {k:>{w}}" for k, w in zip(columns, widths)) + f"  {'n':>5}", rule]
    lines += [row(c, [s[k] for k in columns], s["n"]) for c, s in summary.items()]
    if len(summary) > 1:
        means = [sum(s[k] for s in summary.values()) / len(summary) for k in columns]
        lines += [rule, row("overall (mean of categories)", means, sum(s["n"] for s in summary.values()))]
    return "\n".join(lines)


def run_bfcl(cfg: BfclEvalConfig) -> dict[str, dict[str, Any]]:
    """Run the evaluation, print the tables, write ``cfg.out`` (and ``cfg.details``, and BFCL's
    result files under ``cfg.bfcl_root``); return what ``cfg.out`` holds: the per-category
    summary and, under "overall", ``bfcl_overall`` of it."""
    from forge_ray.eval.bfcl_multi_turn import is_multi_turn, run_multi_turn

    if any(is_multi_turn(c) for c in cfg.categories):  # multi-turn episodes: forge_ray/eval/bfcl_multi_turn.py
        return run_multi_turn(cfg)
    if sum([bool(cfg.model), cfg.gold, cfg.empty]) != 1:
        raise ValueError("give exactly one of a model folder, gold=True or empty=True")
    bfcl_name = cfg.bfcl_model_name or BFCL_MODEL_NAME
    if cfg.bfcl_root:
        check_bfcl_model_name(bfcl_name)  # before a long model run, not after
    tasks = load_tasks(cfg.categories, cfg.limit)
    log.info("bfcl: %d tasks in %s", len(tasks), ", ".join(cfg.categories))
    t0 = time.perf_counter()
    results = gold_results(tasks) if cfg.gold else empty_results(tasks) if cfg.empty else model_results(cfg, tasks)
    wall = time.perf_counter() - t0
    summary = summarize(results, cfg.categories)
    source = "gold replay" if cfg.gold else "empty replay" if cfg.empty else cfg.model
    title = f"BFCL ({source}; {len(tasks)} tasks, {wall:.1f} s)"
    overall = bfcl_overall(summary, score_sizes())
    print(format_table(summary, title) + "\n\n" + format_overall(overall))
    report = {**summary, "overall": overall}
    write_outputs(cfg, report, results)
    if cfg.bfcl_root:
        paths = write_bfcl_results(results, cfg.categories, cfg.bfcl_root, bfcl_name)
        log.info("wrote %d BFCL result files under %s; re-score with: %s", len(paths),
                 Path(cfg.bfcl_root) / "result" / bfcl_model_dir(bfcl_name),
                 bfcl_evaluate_command(cfg.bfcl_root, bfcl_name, cfg.categories, partial=cfg.limit is not None))
    return report
