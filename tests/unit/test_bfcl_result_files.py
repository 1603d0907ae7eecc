"""``forge-ray eval bfcl --bfcl-root``: BFCL's own result files, and BFCL's own ``bfcl evaluate``
re-scoring them to the same accuracy forge_ray reports.

The agreement test runs BFCL's CLI in a subprocess, offline. bfcl-eval is installed with
``--no-deps``, so ``bfcl evaluate`` cannot import its API clients; ``bfcl_cli_standin.py`` (beside
this file) runs the same CLI with stand-ins for those import-only packages. To run the installed
``bfcl`` script of a full bfcl-eval install instead, set ``FORGE_RAY_BFCL=/path/to/bfcl``. The
agreement test is skipped only when BFCL's CLI cannot start for want of a package that its scoring
itself imports (pandas, typer, python-dotenv, ...), with that ModuleNotFoundError as the reason.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bfcl_eval", reason="needs bfcl-eval (requirements/bfcl-nodeps.txt)")

from envs.function_calling.bfcl_data import CATEGORIES, LIVE_CATEGORIES, NON_LIVE_CATEGORIES  # noqa: E402
from envs.function_calling.gold import gold_calls  # noqa: E402
from envs.function_calling.parsing import parse_calls  # noqa: E402
from forge_ray.chat import render_tool_call  # noqa: E402
from forge_ray.eval.bfcl import (  # noqa: E402
    BFCL_MODEL_NAME,
    UNRENDERABLE_NAME,
    TaskResult,
    bfcl_answer,
    bfcl_evaluate_command,
    bfcl_result_group,
    check_bfcl_model_name,
    gold_results,
    load_tasks,
    python_call_list,
    replay_results,
    required_values_first,
    summarize,
    write_bfcl_results,
)
from forge_ray.eval.bfcl_score import bfcl_overall, score_sizes  # noqa: E402
from forge_ray.types import Task, ToolCall  # noqa: E402

STANDIN_CLI = Path(__file__).with_name("bfcl_cli_standin.py")
# Three registered prompt-mode models whose handlers all decode with BFCL's
# default_decode_ast_prompting: one folder per replay, scored by one `bfcl evaluate` run.
GOLD_NAME, EMPTY_NAME, WRONG_NAME = BFCL_MODEL_NAME, "meta-llama/Llama-3.1-8B-Instruct", "google/gemma-3-1b-it"
# BFCL v4 data faults no answer can pass (see docs/function_calling.md, `forge-ray eval bfcl`).
UNANSWERABLE = {"parallel_multiple_26", "live_simple_106-63-0", "live_simple_112-68-0", "live_multiple_507-149-4",
                "live_multiple_862-181-3", "live_multiple_964-207-0"}
NO_CALL_CATEGORIES = ("irrelevance", "live_irrelevance")
# Live tasks the agreement test replays besides the first LIVE_FIRST of each live category: the data
# faults, a required parameter whose possible answer lists "" first, a non-ASCII argument name.
LIVE_FIRST = 6
LIVE_NOTABLE = {"live_simple_106-63-0", "live_simple_112-68-0", "live_multiple_507-149-4", "live_multiple_862-181-3",
                "live_multiple_964-207-0", "live_multiple_144-56-0", "live_simple_67-31-0"}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the answers written -------------------------------------------------------------------------


def test_tool_call_turns_become_python_call_lists_that_parse_back_to_the_same_calls():
    for result in gold_results(load_tasks(CATEGORIES, None)):
        written = bfcl_answer(result.text)
        if result.category in NO_CALL_CATEGORIES:
            assert written == result.text  # prose: written as the model wrote it
            continue
        assert written.startswith("[") and "<tool_call>" not in written
        assert parse_calls(written).tool_calls == parse_calls(result.text).tool_calls, result.task_id


def test_literals_and_names_python_cannot_spell():
    calls = [
        ToolCall("math.hypot", {"x": -3, "y": 4.5e-7, "flag": True, "none": None, "s": "it's \"q\"\n",
                                "nested": {"k": [1, {"z": -2.0}], "e": []}}),
        ToolCall("f", {"from": 1, "first name": "A", "ok": 2}),  # a keyword and a non-identifier
        ToolCall("get weather", {"inf": math.inf}),
    ]
    text = python_call_list(calls)
    assert text.startswith("[math.hypot(x=-3, y=4.5e-07, flag=True, none=None, ")
    assert "f(ok=2, **{'from': 1, 'first name': 'A'})" in text
    # NFKC-stable non-ASCII names are Python names (live_simple_67-31-0); "ﬁle" would read back as "file"
    assert python_call_list([ToolCall("f", {"año_vehiculo": 2024, "ﬁle": 1})]) == "[f(año_vehiculo=2024, **{'ﬁle': 1})]"
    assert f"{UNRENDERABLE_NAME}(inf=float('inf'))" in text
    assert parse_calls(python_call_list(calls[:1])).tool_calls == calls[:1]  # forge_ray reads it back unchanged
    assert python_call_list([]) == "[]"


def test_turns_bfcl_reads_itself_are_written_unchanged():
    for text in ["", "[]", "I cannot help with that.", '[get_weather(city="Paris")]', "```python\nf(a=1)\n```",
                 '<tool_call>{"name": "f", "arguments": {}}',  # unbalanced: no call for forge_ray, undecodable for BFCL
                 "<tool_call>not json</tool_call>"]:
        assert bfcl_answer(text) == text
    assert bfcl_answer('Sure.\n<tool_call>{"name": "f", "arguments": {"a": [1, 2]}}</tool_call>') == "[f(a=[1, 2])]"


# -- files, names, command line --------------------------------------------------------------------


def test_result_files_layout(tmp_path):
    rows = [TaskResult("multiple_0", "multiple", True, True, "ok", render_tool_call(ToolCall("f", {"a": 1}))),
            TaskResult("irrelevance_0", "irrelevance", True, True, "ok", "No tool fits."),
            TaskResult("multiple_1", "multiple", False, True, "ok", ""),
            TaskResult("live_relevance_0-0-0", "live_relevance", True, True, "ok", "[g(b=2)]")]
    paths = write_bfcl_results(rows, ("multiple", "irrelevance", "live_relevance"), tmp_path)
    folder = tmp_path / "result" / "Qwen_Qwen3-0.6B" / "non_live"
    assert paths == [folder / "BFCL_v4_multiple_result.json", folder / "BFCL_v4_irrelevance_result.json",
                     folder.with_name("live") / "BFCL_v4_live_relevance_result.json"]
    assert _lines(paths[0]) == [{"id": "multiple_0", "result": "[f(a=1)]", "forge_ray_text": rows[0].text},
                                {"id": "multiple_1", "result": ""}]
    assert _lines(paths[1]) == [{"id": "irrelevance_0", "result": "No tool fits."}]
    assert _lines(paths[2]) == [{"id": "live_relevance_0-0-0", "result": "[g(b=2)]"}]
    assert [bfcl_result_group(c) for c in CATEGORIES] == ["non_live"] * 5 + ["live"] * 6
    with pytest.raises(ValueError, match="multi_turn_base"):
        bfcl_result_group("multi_turn_base")
    assert bfcl_evaluate_command(tmp_path, BFCL_MODEL_NAME, ("multiple",), partial=True) == (
        f"BFCL_PROJECT_ROOT={tmp_path.resolve()} bfcl evaluate --model Qwen/Qwen3-0.6B --test-category multiple --partial-eval")


def test_model_names_must_decode_python_call_lists():
    for name in (GOLD_NAME, EMPTY_NAME, WRONG_NAME):
        check_bfcl_model_name(name)
    for name, why in [("Qwen/Qwen3-0.6B-FC", "FC"), ("microsoft/phi-4", "PhiHandler"), ("nope/nope", "registry"),
                      ("my_model", "'_'")]:
        with pytest.raises(ValueError, match=why):
            check_bfcl_model_name(name)


def test_cli_bfcl_options(tmp_path, capsys):
    from forge_ray.cli import main

    root = tmp_path / "bfcl"
    assert main(["eval", "bfcl", "--empty", "--categories", "multiple,irrelevance,live_irrelevance", "--limit", "3",
                 "--bfcl-root", str(root), "--bfcl-model-name", EMPTY_NAME, "--out", str(tmp_path / "s.json")]) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert {c: data[c] for c in ("multiple", "irrelevance", "live_irrelevance")} == {
        "multiple": {"accuracy": 0.0, "n": 3}, "irrelevance": {"accuracy": 1.0, "n": 3}, "live_irrelevance": {"accuracy": 1.0, "n": 3}}
    assert data["overall"]["groups"] == {"irrelevance": {"accuracy": 1.0, "n": 6, "weight": 10}}
    written = _lines(root / "result" / "meta-llama_Llama-3.1-8B-Instruct" / "non_live" / "BFCL_v4_multiple_result.json")
    assert written == [{"id": f"multiple_{i}", "result": ""} for i in range(3)]
    written = _lines(root / "result" / "meta-llama_Llama-3.1-8B-Instruct" / "live" / "BFCL_v4_live_irrelevance_result.json")
    assert [row["id"].split("-")[0] for row in written] == [f"live_irrelevance_{i}" for i in range(3)]
    assert main(["eval", "bfcl", "--gold", "--empty", "--categories", "multiple"]) == 2
    assert main(["eval", "bfcl", "--gold", "--categories", "multiple", "--bfcl-model-name", GOLD_NAME]) == 2  # no --bfcl-root
    assert main(["eval", "bfcl", "--gold", "--categories", "multiple", "--bfcl-root", str(root), "--bfcl-model-name", "Qwen/Qwen3-0.6B-FC"]) == 2
    assert "prompt-mode model" in capsys.readouterr().err


# -- BFCL's own evaluation agrees with forge_ray's ------------------------------------------------


def _wrong_answer(task: Task) -> str:
    """Wrong on every task: a call of the first listed function where no call is due, prose where
    one is (relevance), and elsewhere the gold calls with an argument no BFCL function declares."""
    category = task.meta["category"]
    if category in NO_CALL_CATEGORIES:
        return render_tool_call(ToolCall(task.tools[0]["function"]["name"], {}))
    if category == "live_relevance":
        return "I would rather not call anything."
    first, *rest = gold_calls(required_values_first(task.answer["possible_answers"], task.answer["functions"]))
    calls = [ToolCall(first.name, {**first.arguments, "forge_ray_unexpected": 1}), *rest]
    return "\n".join(render_tool_call(c) for c in calls)


def _live_sample() -> list[Task]:
    """The first LIVE_FIRST tasks of each live category (ids ``<category>_<index>-...``) and LIVE_NOTABLE."""
    return [t for t in load_tasks(LIVE_CATEGORIES, None)
            if int(t.id.rsplit("_", 1)[1].split("-")[0]) < LIVE_FIRST or t.id in LIVE_NOTABLE]


def _bfcl_scores(root: Path, model_name: str) -> dict[str, tuple[float, int, set[str]]]:
    """``{category: (accuracy, total, failed ids)}`` from BFCL's score files."""
    folder = root / "score" / model_name.replace("/", "_")
    scores = {}
    for category in CATEGORIES:
        header, *failed = _lines(folder / bfcl_result_group(category) / f"BFCL_v4_{category}_score.json")
        scores[category] = (header["accuracy"], header["total_count"], {row["id"] for row in failed})
    return scores


def _table(path: Path, columns: list[str]) -> list[tuple[str, ...]]:
    """The ``columns`` of each row of one of BFCL's score tables (``score/data_*.csv``), sorted."""
    with open(path, newline="") as f:
        return sorted(tuple(row[c] for c in columns) for row in csv.DictReader(f))


def _percent(x: float) -> str:
    return f"{x * 100:.2f}%"  # as BFCL's write_score_csv_file formats accuracies


def _check_summary_tables(root: Path, summaries: dict[str, dict[str, dict]]) -> None:
    """BFCL's score tables show the summary scores ``bfcl_overall`` computes: the groups whose
    categories all ran, and the others (and "Overall Acc") with the categories not run as 0."""
    overall = {name: bfcl_overall(summary, score_sizes()) for name, summary in summaries.items()}
    for o in overall.values():
        assert set(o["groups"]) == {"live", "irrelevance", "relevance"} and o["overall"] is None
    columns = ["Overall Acc", "Live Acc", "Irrelevance Detection", "Relevance Detection"]
    assert _table(root / "score" / "data_overall.csv", columns) == sorted(
        (_percent(o["missing_as_zero"]["overall"]), *(_percent(o["groups"][g]["accuracy"]) for g in ("live", "irrelevance", "relevance")))
        for o in overall.values())
    assert _table(root / "score" / "data_non_live.csv", ["Non-Live Overall Acc"]) == sorted(
        (_percent(o["missing_as_zero"]["non_live"]),) for o in overall.values())


def test_bfcl_evaluate_agrees_with_forge_ray_at_both_ends(tmp_path):
    from forge_ray.cli import main

    root = tmp_path / "bfcl"
    # Non-live, full sets, through the command line: gold replay (top) and empty replay (0 on the AST categories).
    assert main(["eval", "bfcl", "--gold", "--categories", ",".join(NON_LIVE_CATEGORIES), "--bfcl-root", str(root),
                 "--details", str(tmp_path / "gold.jsonl")]) == 0
    assert main(["eval", "bfcl", "--empty", "--categories", ",".join(NON_LIVE_CATEGORIES), "--bfcl-root", str(root),
                 "--bfcl-model-name", EMPTY_NAME, "--details", str(tmp_path / "empty.jsonl")]) == 0
    ours = {name: [TaskResult(**json.loads(line)) for line in (tmp_path / f"{kind}.jsonl").read_text().splitlines()]
            for name, kind in [(GOLD_NAME, "gold"), (EMPTY_NAME, "empty")]}
    # Live: a few tasks of each category (BFCL scores them with --partial-eval), gold and empty.
    live = _live_sample()
    for name, rows in [(GOLD_NAME, gold_results(live)), (EMPTY_NAME, replay_results(live, lambda task: ""))]:
        write_bfcl_results(rows, LIVE_CATEGORIES, root, name)
        ours[name] += rows
    # A wrong answer on every task, irrelevance and relevance included: 0 everywhere.
    ours[WRONG_NAME] = replay_results(load_tasks(NON_LIVE_CATEGORIES, None) + live, _wrong_answer)
    write_bfcl_results(ours[WRONG_NAME], CATEGORIES, root, WRONG_NAME)

    summaries = {name: summarize(results, CATEGORIES) for name, results in ours.items()}
    assert {r.task_id for r in ours[GOLD_NAME] if not r.correct} == UNANSWERABLE
    assert {c: s["accuracy"] for c, s in summaries[EMPTY_NAME].items()} == {c: float(c in NO_CALL_CATEGORIES) for c in CATEGORIES}
    assert all(s["accuracy"] == 0.0 for s in summaries[WRONG_NAME].values())
    assert all(0 < summaries[GOLD_NAME][c]["n"] <= LIVE_FIRST + 5 for c in LIVE_CATEGORIES)

    bfcl = [os.environ["FORGE_RAY_BFCL"]] if os.environ.get("FORGE_RAY_BFCL") else [sys.executable, str(STANDIN_CLI)]
    proc = subprocess.run([*bfcl, "evaluate", "--model", f"{GOLD_NAME},{EMPTY_NAME},{WRONG_NAME}",
                           "--test-category", ",".join(CATEGORIES), "--partial-eval"],
                          cwd=tmp_path, env={**os.environ, "BFCL_PROJECT_ROOT": str(root)},
                          capture_output=True, text=True, timeout=900)
    missing = [line for line in proc.stderr.splitlines() if line.startswith("ModuleNotFoundError")]
    if proc.returncode != 0 and missing:  # a package BFCL's scoring itself imports (pandas, typer, ...)
        pytest.skip(f"bfcl evaluate cannot run offline here: {missing[-1]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for name, results in ours.items():
        scores = _bfcl_scores(root, name)
        for category in CATEGORIES:
            rows = [r for r in results if r.category == category]
            failed = {r.task_id for r in rows if not r.correct}
            assert scores[category] == (summaries[name][category]["accuracy"], len(rows), failed), (name, category)
    _check_summary_tables(root, summaries)
