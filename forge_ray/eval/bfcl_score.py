"""BFCL's summary scores over the categories a run scored: its leaderboard groups and
"Overall Acc", computed as bfcl_eval's ``generate_leaderboard_csv``
(``bfcl_eval/eval_checker/eval_runner_helper.py``) computes them (pure: no model, no files).

A node of ``BFCL_SCORE_GROUPS`` is a category, or ``(how, children)``: "mean" is the unweighted mean of the children's
accuracies (BFCL's ``calculate_unweighted_accuracy``), "weighted" the mean over their tasks, each
child weighing its task count (``calculate_weighted_accuracy``). Each group has its weight in
BFCL's "Overall Acc" (``calculate_percentage_weighted_accuracy``, weights 10/10/10/30/40);
relevance is reported beside it with no weight.
"""
from __future__ import annotations

from typing import Any

ScoreNode = Any  # str | tuple[str, tuple[ScoreNode, ...]]
BFCL_SCORE_GROUPS: tuple[tuple[str, int, ScoreNode], ...] = (
    ("non_live", 10, ("mean", (("mean", ("simple_python", "simple_java", "simple_javascript")),
                               "multiple", "parallel", "parallel_multiple"))),
    ("live", 10, ("weighted", ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"))),
    ("irrelevance", 10, ("mean", ("irrelevance", "live_irrelevance"))),
    ("multi_turn", 30, ("mean", ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
                                 "multi_turn_long_context"))),
    ("agentic", 40, ("mean", (("mean", ("web_search_base", "web_search_no_snippet")),
                              ("mean", ("memory_kv", "memory_vector", "memory_rec_sum"))))),
    ("relevance", 0, "live_relevance"),
)


def _leaves(node: ScoreNode) -> list[str]:
    return [node] if isinstance(node, str) else [c for child in node[1] for c in _leaves(child)]


def _weighted_leaves(node: ScoreNode) -> list[str]:
    if isinstance(node, str):
        return []
    how, children = node
    return [c for child in children for c in (_leaves(child) if how == "weighted" else _weighted_leaves(child))]


def _node_score(node: ScoreNode, scores: dict[str, tuple[float, int]]) -> tuple[float, int]:
    """``(accuracy, task count)`` of a node over ``{category: (accuracy, n)}``."""
    if isinstance(node, str):
        return scores[node]
    how, children = node
    parts = [_node_score(child, scores) for child in children]
    n = sum(k for _, k in parts)
    if how == "weighted":
        return (sum(a * k for a, k in parts) / n if n else 0.0), n
    return sum(a for a, _ in parts) / len(parts), n


def _weighted_mean(values: list[tuple[float, int]]) -> float | None:
    total = sum(w for _, w in values)
    return sum(a * w for a, w in values) / total if total else None


def bfcl_overall(summary: dict[str, dict[str, Any]], sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """BFCL's summary scores of ``{category: {"accuracy", "n"}}``, over the categories run.

    ``groups``: each group of ``BFCL_SCORE_GROUPS`` whose categories were all run, with its
    accuracy, task count and weight; ``not_computed``: the others, with the categories they lack.
    ``overall``: BFCL's "Overall Acc" when every weighted group was computed, else None;
    ``overall_of_computed_groups``: the same weights over the computed groups only (None if none).
    With ``sizes`` (each category's full task count, needed for the count-weighted ones not run),
    ``missing_as_zero`` adds what ``bfcl evaluate``'s score tables (``data_overall.csv``) show for
    the same result files: every group and "Overall Acc", categories not run counting 0."""
    run = {c: (float(s["accuracy"]), int(s["n"])) for c, s in summary.items() if isinstance(s, dict) and "n" in s}
    groups: dict[str, dict[str, Any]] = {}
    missing: dict[str, list[str]] = {}
    for name, weight, node in BFCL_SCORE_GROUPS:
        absent = [c for c in _leaves(node) if c not in run]
        if absent:
            missing[name] = absent
            continue
        accuracy, n = _node_score(node, run)
        groups[name] = {"accuracy": accuracy, "n": n, "weight": weight}
    weighted = [(name, weight) for name, weight, _ in BFCL_SCORE_GROUPS if weight]
    computed = [(groups[g]["accuracy"], w) for g, w in weighted if g in groups]
    out: dict[str, Any] = {
        "groups": groups, "not_computed": missing,
        "overall": _weighted_mean(computed) if len(computed) == len(weighted) else None,
        "overall_of_computed_groups": _weighted_mean(computed),
    }
    if sizes is not None:
        out["missing_as_zero"] = _missing_as_zero(run, sizes)
    return out


def _missing_as_zero(run: dict[str, tuple[float, int]], sizes: dict[str, int]) -> dict[str, float]:
    unsized = [c for _, _, node in BFCL_SCORE_GROUPS for c in _weighted_leaves(node) if c not in run and c not in sizes]
    if unsized:
        raise ValueError(f"categories {unsized} were not run and have no size: their count weighs in BFCL's score")
    scores = {c: run.get(c) or (0.0, sizes.get(c, 0)) for _, _, node in BFCL_SCORE_GROUPS for c in _leaves(node)}
    table = {name: _node_score(node, scores)[0] for name, _, node in BFCL_SCORE_GROUPS}
    table["overall"] = _weighted_mean([(table[name], weight) for name, weight, _ in BFCL_SCORE_GROUPS if weight]) or 0.0
    return table


def format_overall(overall: dict[str, Any]) -> str:
    """BFCL's summary scores (``bfcl_overall``) as lines under the category table."""
    width = max(len(name) for name, _, _ in BFCL_SCORE_GROUPS)
    lines = ["BFCL summary scores (bfcl_eval's leaderboard formula; groups whose categories all ran)",
             f"{'group':<{width}}  {'weight':>6}  {'accuracy':>8}  {'n':>5}", "-" * (width + 25)]
    lines += [f"{g:<{width}}  {s['weight']:>6}  {s['accuracy']:>8.4f}  {s['n']:>5}" for g, s in overall["groups"].items()]
    if overall["not_computed"]:
        lines.append("not computed, for want of these categories:")
        lines += [f"  {g:<{width}}  {', '.join(cs)}" for g, cs in overall["not_computed"].items()]
    if overall["overall"] is not None:
        lines.append(f"BFCL overall accuracy: {overall['overall']:.4f}")
    elif overall["overall_of_computed_groups"] is not None:
        lines.append(f"BFCL overall accuracy: not computed (needs every weighted group); "
                     f"over the computed groups, weights rescaled: {overall['overall_of_computed_groups']:.4f}")
    if "missing_as_zero" in overall:
        lines.append(f"as `bfcl evaluate`'s data_overall.csv shows it (categories not run count 0): "
                     f"overall {overall['missing_as_zero']['overall']:.4f}")
    return "\n".join(lines)


def score_sizes() -> dict[str, int]:
    """Full task counts of the count-weighted categories forge_ray loads (for ``missing_as_zero``)."""
    from envs.function_calling.bfcl_data import CATEGORIES, category_size

    return {c: category_size(c) for _, _, node in BFCL_SCORE_GROUPS for c in _weighted_leaves(node) if c in CATEGORIES}
