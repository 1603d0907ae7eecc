"""Decontamination of forge_ray's synthetic function-calling data against BFCL.

Checked against every BFCL category forge_ray evaluates: the single-turn non-live and live
ones (``bfcl_data.CATEGORIES``) and the four multi-turn ones (``multi_turn_data``):

(a) **function names**: no tool name of the synthetic data -- every tool the single-turn
    generator (``synthetic.py``) can make, every method of forge_ray's multi-turn back-ends
    (``mt_tools.py``) -- equals a function name of a BFCL category (the functions of its entries;
    for the multi-turn categories, every function doc of BFCL's multi-turn back-ends) or the
    last part of a dotted one (``hotel_bookings.book_room`` -> ``book_room``); no back-end class
    name equals one of BFCL's;
(b) **13-grams**: no word 13-gram of a synthetic request (single-turn questions, multi-turn
    user turns) appears in a BFCL question (every message of every turn of an entry). Words:
    the text lower-cased and split on whitespace, each word stripped of leading and trailing
    punctuation (so ``Lisbon.`` and ``lisbon`` are one word), empty ones dropped. A request
    shorter than 13 words has no 13-gram; whether its whole word sequence appears inside a
    BFCL question is reported as well (``short_text_overlaps``), for information.

    forge-ray decontam bfcl --synthetic 1000 --out bench/results/decontam_bfcl.json

draws ``--synthetic`` tasks of each split (train, heldout) of each generator (single-turn,
multi-turn) with ``--seed``, writes the report, and exits 1 when it finds an overlap of (a) or (b).
"""
from __future__ import annotations

import argparse
import string
import sys
from typing import Any, Iterable

N = 13
MAX_EXAMPLES = 50


def words(text: str) -> list[str]:
    """Lower-cased whitespace tokens stripped of edge punctuation (see the module docstring)."""
    out = (w.strip(string.punctuation) for w in str(text).lower().split())
    return [w for w in out if w]


def ngrams(text: str, n: int = N) -> set[str]:
    ws = words(text)
    return {" ".join(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def _question_texts(row: dict[str, Any]) -> list[str]:
    return [str(m.get("content") or "") for turn in row.get("question") or [] for m in (turn if isinstance(turn, list) else [turn])
            if isinstance(m, dict)]


def bfcl_reference() -> tuple[dict[str, str], list[tuple[str, str]], set[str]]:
    """``({function name: category}, [(entry id, question text)], BFCL back-end class names)``
    over every category forge_ray evaluates."""
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING, MULTI_TURN_FUNC_DOC_FILE_MAPPING

    from envs.function_calling.bfcl_data import CATEGORIES, VERSION_PREFIX, data_dir, read_jsonl
    from envs.function_calling.multi_turn_data import MULTI_TURN_CATEGORIES, function_docs

    root, names, questions = data_dir(), {}, []
    for category in (*CATEGORIES, *MULTI_TURN_CATEGORIES):
        for _, row in read_jsonl(root / f"{VERSION_PREFIX}_{category}.json"):
            questions += [(str(row.get("id")), text) for text in _question_texts(row)]
            for function in row.get("function") or []:
                names.setdefault(function["name"], category)
    for class_name in MULTI_TURN_FUNC_DOC_FILE_MAPPING:
        for doc in function_docs(class_name):
            names.setdefault(doc["name"], f"multi_turn ({class_name})")
    return names, questions, set(CLASS_FILE_PATH_MAPPING) | set(MULTI_TURN_FUNC_DOC_FILE_MAPPING)


def synthetic_reference(n: int, seed: int) -> tuple[dict[str, str], list[tuple[str, str]], dict[str, int]]:
    """``({tool name: source}, [(task id, request text)], counts)`` of ``n`` tasks of each split
    of the single-turn and the multi-turn generators."""
    from envs.function_calling.mt_synthetic import SyntheticMultiTurn
    from envs.function_calling.mt_tools import function_names as mt_names
    from envs.function_calling.synthetic import SyntheticTasks, all_tools

    names = {t.name: "single_turn" for t in all_tools()}
    names.update({name: "multi_turn" for name in mt_names()})
    texts: list[tuple[str, str]] = []
    counts = {"single_turn_tasks": 0, "multi_turn_tasks": 0}
    single, multi = SyntheticTasks(), SyntheticMultiTurn()
    for split in ("train", "heldout"):
        for task in single.tasks(split, n, seed):
            texts += [(task.id, m["content"]) for m in task.messages if m["role"] == "user"]
            counts["single_turn_tasks"] += 1
        for task in multi.tasks(split, n, seed):
            texts += [(task.id, m["content"]) for turn in task.answer["user_turns"] for m in turn]
            counts["multi_turn_tasks"] += 1
    return names, texts, counts


def name_overlaps(synthetic: dict[str, str], bfcl: dict[str, str]) -> list[dict[str, str]]:
    """Synthetic tool names equal to a BFCL name, or to the last part of a dotted one."""
    last = {}
    for name, category in bfcl.items():
        last.setdefault(name.rsplit(".", 1)[-1], (name, category))
    out = []
    for name in sorted(synthetic):
        if name in bfcl:
            out.append({"name": name, "synthetic": synthetic[name], "bfcl_name": name, "bfcl_category": bfcl[name], "match": "equal"})
        elif name in last:
            out.append({"name": name, "synthetic": synthetic[name], "bfcl_name": last[name][0], "bfcl_category": last[name][1],
                        "match": "dotted_suffix"})
    return out


def ngram_overlaps(texts: Iterable[tuple[str, str]], questions: list[tuple[str, str]], n: int = N) -> dict[str, Any]:
    """13-gram overlaps of ``texts`` with ``questions`` (both ``(id, text)``), and the short
    texts found whole inside a question."""
    index: dict[str, str] = {}
    for qid, text in questions:
        for gram in ngrams(text, n):
            index.setdefault(gram, qid)
    corpus = "\n".join(" " + " ".join(words(text)) + " " for _, text in questions)
    hits, short_hits, checked, short, seen = [], [], 0, 0, set()
    for tid, text in texts:
        if text in seen:
            continue
        seen.add(text)
        ws = words(text)
        if len(ws) < n:
            short += 1
            if ws and f" {' '.join(ws)} " in corpus:
                short_hits.append({"id": tid, "text": text})
            continue
        checked += 1
        common = sorted(g for g in ngrams(text, n) if g in index)
        if common:
            hits.append({"id": tid, "text": text, "ngram": common[0], "bfcl_id": index[common[0]], "ngrams": len(common)})
    return {"bfcl_ngrams": len(index), "distinct_texts": len(seen), "texts_with_ngrams": checked, "texts_shorter_than_n": short,
            "overlapping_texts": len(hits), "overlaps": hits[:MAX_EXAMPLES], "short_text_overlaps": len(short_hits),
            "short_text_examples": short_hits[:MAX_EXAMPLES]}


def check(synthetic_names: dict[str, str], texts: list[tuple[str, str]], bfcl_names: dict[str, str],
          questions: list[tuple[str, str]], n: int = N) -> dict[str, Any]:
    """The report of (a) and (b); ``clean`` is true iff neither finds an overlap."""
    names = name_overlaps(synthetic_names, bfcl_names)
    grams = ngram_overlaps(texts, questions, n)
    return {"n": n, "clean": not names and not grams["overlapping_texts"],
            "function_names": {"synthetic": len(synthetic_names), "bfcl": len(bfcl_names), "overlaps": names},
            "ngrams": grams, "bfcl_questions": len(questions), "synthetic_texts": len(texts)}


def decontam_bfcl(n: int, seed: int = 0) -> dict[str, Any]:
    """The full check on ``n`` synthetic tasks per generator and split (see the module docstring)."""
    from envs.function_calling.bfcl_data import CATEGORIES
    from envs.function_calling.mt_tools import BACKENDS
    from envs.function_calling.multi_turn_data import MULTI_TURN_CATEGORIES

    bfcl_names, questions, bfcl_classes = bfcl_reference()
    synthetic_names, texts, counts = synthetic_reference(n, seed)
    report = check(synthetic_names, texts, bfcl_names, questions)
    class_overlaps = sorted(set(BACKENDS) & bfcl_classes)
    report.update(clean=report["clean"] and not class_overlaps, class_name_overlaps=class_overlaps, seed=seed,
                  tasks_per_split=n, synthetic=counts, bfcl_categories=[*CATEGORIES, *MULTI_TURN_CATEGORIES],
                  tokenisation="lower-cased, split on whitespace, edge punctuation stripped")
    return report


# -- command line -------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    report = decontam_bfcl(args.synthetic, args.seed)
    report["command"] = f"forge-ray decontam bfcl --synthetic {args.synthetic} --seed {args.seed}"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    g, f = report["ngrams"], report["function_names"]
    print(f"synthetic tasks: {report['synthetic']}; requests: {report['synthetic_texts']} ({g['distinct_texts']} distinct, "
          f"{g['texts_shorter_than_n']} shorter than {report['n']} words)")
    print(f"BFCL: {len(report['bfcl_categories'])} categories, {report['bfcl_questions']} question texts, {g['bfcl_ngrams']} distinct "
          f"{report['n']}-grams, {f['bfcl']} function names")
    print(f"function-name overlaps: {len(f['overlaps'])}; class-name overlaps: {len(report['class_name_overlaps'])}; "
          f"{report['n']}-gram overlaps: {g['overlapping_texts']} texts; short texts inside a BFCL question: {g['short_text_overlaps']}")
    print("clean" if report["clean"] else "CONTAMINATED: see the report")
    return 0 if report["clean"] else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    """``forge-ray decontam bfcl ...``."""
    p = sub.add_parser("decontam", help="check synthetic training data against evaluation data")
    dsub = p.add_subparsers(dest="decontam_target", required=True, metavar="TARGET")
    b = dsub.add_parser("bfcl", help="synthetic function-calling data vs every BFCL category forge_ray evaluates")
    b.add_argument("--synthetic", type=int, default=1000, metavar="N", help="tasks per split (train, heldout) of each generator")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=None, metavar="FILE.json", help="write the report here")
    b.set_defaults(fn=_run)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="decontam")
    add_parser(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args()
    sys.exit(parsed.fn(parsed))
