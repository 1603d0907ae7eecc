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

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bfcl_eval", reason="needs bfcl-eval (requirements/bfcl-nodeps.txt)")

from envs.function_calling.bfcl_data import CATEGORIES  # noqa: E402
from envs.function_calling.parsing import parse_calls  # noqa: E402
from forge_ray.chat import render_tool_call  # noqa: E402
from forge_ray.eval.bfcl import (  # noqa: E402
    BFCL_MODEL_NAME,
    UNRENDERABLE_NAME,
    TaskResult,
    bfcl_answer,
    bfcl_evaluate_command,
    check_bfcl_model_name,
    gold_results,
    load_tasks,
    python_call_list,
    replay_results,
    summarize,
    write_bfcl_results,
)
from forge_ray.types import Task, ToolCall  # noqa: E402

STANDIN_CLI = Path(__file__).with_name("bfcl_cli_standin.py")
# Three registered prompt-mode models whose handlers all decode with BFCL's
# default_decode_ast_prompting: one folder per replay, scored by one `bfcl evaluate` run.
GOLD_NAME, EMPTY_NAME, WRONG_NAME = BFCL_MODEL_NAME, "meta-llama/Llama-3.1-8B-Instruct", "google/gemma-3-1b-it"
# BFCL v4 data faults no answer can pass (see envs/function_calling/gold.py).
UNANSWERABLE = {"simple_python_200", "parallel_multiple_26"}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the answers written -------------------------------------------------------------------------


def test_tool_call_turns_become_python_call_lists_that_parse_back_to_the_same_calls():
    for result in gold_results(load_tasks(CATEGORIES, None)):
        written = bfcl_answer(result.text)
        if result.category == "irrelevance":
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
            TaskResult("multiple_1", "multiple", False, True, "ok", "")]
    paths = write_bfcl_results(rows, ("multiple", "irrelevance"), tmp_path)
    folder = tmp_path / "result" / "Qwen_Qwen3-0.6B" / "non_live"
    assert paths == [folder / "BFCL_v4_multiple_result.json", folder / "BFCL_v4_irrelevance_result.json"]
    assert _lines(paths[0]) == [{"id": "multiple_0", "result": "[f(a=1)]", "forge_ray_text": rows[0].text},
                                {"id": "multiple_1", "result": ""}]
    assert _lines(paths[1]) == [{"id": "irrelevance_0", "result": "No tool fits."}]
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
    assert main(["eval", "bfcl", "--empty", "--categories", "multiple,irrelevance", "--limit", "3", "--bfcl-root", str(root),
                 "--bfcl-model-name", EMPTY_NAME, "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == {"multiple": {"accuracy": 0.0, "n": 3},
                                                             "irrelevance": {"accuracy": 1.0, "n": 3}}
    written = _lines(root / "result" / "meta-llama_Llama-3.1-8B-Instruct" / "non_live" / "BFCL_v4_multiple_result.json")
    assert written == [{"id": f"multiple_{i}", "result": ""} for i in range(3)]
    assert main(["eval", "bfcl", "--gold", "--empty", "--categories", "multiple"]) == 2
    assert main(["eval", "bfcl", "--gold", "--categories", "multiple", "--bfcl-model-name", GOLD_NAME]) == 2  # no --bfcl-root
    assert main(["eval", "bfcl", "--gold", "--categories", "multiple", "--bfcl-root", str(root), "--bfcl-model-name", "Qwen/Qwen3-0.6B-FC"]) == 2
    assert "prompt-mode model" in capsys.readouterr().err


# -- BFCL's own evaluation agrees with forge_ray's ------------------------------------------------


def _wrong_answer(task: Task) -> str:
    """No call where one is due; on irrelevance, a call of the first listed function."""
    if task.meta["category"] != "irrelevance":
        return ""
    return render_tool_call(ToolCall(task.tools[0]["function"]["name"], {}))


def _bfcl_scores(root: Path, model_name: str) -> dict[str, tuple[float, int, set[str]]]:
    """``{category: (accuracy, total, failed ids)}`` from BFCL's score files."""
    folder = root / "score" / model_name.replace("/", "_") / "non_live"
    scores = {}
    for category in CATEGORIES:
        header, *failed = _lines(folder / f"BFCL_v4_{category}_score.json")
        scores[category] = (header["accuracy"], header["total_count"], {row["id"] for row in failed})
    return scores


def test_bfcl_evaluate_agrees_with_forge_ray_at_both_ends(tmp_path):
    from forge_ray.cli import main

    root = tmp_path / "bfcl"
    # Through the command line: gold replay (top) and empty replay (0 on the AST categories).
    assert main(["eval", "bfcl", "--gold", "--categories", ",".join(CATEGORIES), "--bfcl-root", str(root),
                 "--details", str(tmp_path / "gold.jsonl")]) == 0
    assert main(["eval", "bfcl", "--empty", "--categories", ",".join(CATEGORIES), "--bfcl-root", str(root),
                 "--bfcl-model-name", EMPTY_NAME, "--details", str(tmp_path / "empty.jsonl")]) == 0
    ours = {name: [TaskResult(**json.loads(line)) for line in (tmp_path / f"{kind}.jsonl").read_text().splitlines()]
            for name, kind in [(GOLD_NAME, "gold"), (EMPTY_NAME, "empty")]}
    # A wrong answer on every task, irrelevance included (a call where none fits): 0 everywhere.
    ours[WRONG_NAME] = replay_results(load_tasks(CATEGORIES, None), _wrong_answer)
    write_bfcl_results(ours[WRONG_NAME], CATEGORIES, root, WRONG_NAME)

    summaries = {name: summarize(results, CATEGORIES) for name, results in ours.items()}
    assert {r.task_id for r in ours[GOLD_NAME] if not r.correct} == UNANSWERABLE
    assert {c: s["accuracy"] for c, s in summaries[EMPTY_NAME].items()} == {c: float(c == "irrelevance") for c in CATEGORIES}
    assert all(s["accuracy"] == 0.0 for s in summaries[WRONG_NAME].values())

    bfcl = [os.environ["FORGE_RAY_BFCL"]] if os.environ.get("FORGE_RAY_BFCL") else [sys.executable, str(STANDIN_CLI)]
    proc = subprocess.run([*bfcl, "evaluate", "--model", f"{GOLD_NAME},{EMPTY_NAME},{WRONG_NAME}",
                           "--test-category", ",".join(CATEGORIES)],
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
