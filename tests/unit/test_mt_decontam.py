"""Mid-training decontamination: the 13-gram XCoder rule, eval items, MinHash near duplicates."""
from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest

from forge_ray.data.decontam import (EvalIndex, contaminated, heldout_packages, humaneval_items,
                                     is_heldout_repo, near_duplicates, ngrams, signature,
                                     swe_eval_items, words)

TASKS = Path(__file__).resolve().parents[2] / "data" / "swe_tasks"
VOCAB = [f"w{i}" for i in range(5000)]


def prose(seed: int, n: int) -> str:
    """``n`` random words, practically never sharing a 13-gram with another seed's prose."""
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


ITEM = ("def add_numbers(a, b): return the sum of the two integers a and b after validating "
        "that both of them are integers and raising a TypeError when they are not, "
        "then log the result to the standard error stream and return it to the caller")


@pytest.fixture(scope="module")
def index():
    return EvalIndex([("eval/add", ITEM), ("eval/other", prose(1, 300)), ("eval/short", "tiny item text")])


def test_words_and_stable_ngrams():
    assert words("Foo_bar, BAZ-9!") == ["foo_bar", "baz", "9"]
    text = prose(2, 40)
    assert len(ngrams(text)) == 40 - 13 + 1
    assert ngrams(text) == ngrams(text.upper())
    assert len(ngrams("only three words")) == 1 and ngrams("...") == set()


def test_pasted_item_is_contaminated(index):
    text = prose(3, 400) + "\n" + ITEM + "\n" + prose(4, 400)
    assert contaminated(text, index) == "eval/add"
    ratio, item = index.overlap(text)
    assert item == "eval/add" and ratio == pytest.approx(1.0)


def test_unrelated_text_is_clean(index):
    assert contaminated(prose(5, 2000), index) is None
    assert index.overlap(prose(5, 2000)) == (0.0, "")


def test_few_shared_ngrams_below_threshold(index):
    item = prose(1, 300)  # 288 13-grams; share 14 words = 2 of them (< 1%)
    text = prose(6, 200) + " " + " ".join(item.split()[100:114]) + " " + prose(7, 200)
    ratio, item_id = index.overlap(text)
    assert item_id == "eval/other" and 0 < ratio < 0.10
    assert contaminated(text, index) is None
    # ... and about 15% of them crosses the threshold.
    text = prose(6, 200) + " " + " ".join(item.split()[100:156]) + " " + prose(7, 200)
    assert contaminated(text, index) == "eval/other"


def test_short_item_uses_whole_text_gram(index):
    assert contaminated("a sentence with a Tiny item, text inside", index) == "eval/short"
    assert contaminated("tiny item and text", index) is None


def test_index_pickles(index):
    again = pickle.loads(pickle.dumps(index))
    assert again.overlap(ITEM) == index.overlap(ITEM) and len(again) == 3


def test_swe_heldout_items_and_packages():
    items = swe_eval_items(TASKS)
    assert items and all(text for _, text in items)
    assert any(i.endswith("/problem") for i, _ in items) and any(i.endswith("/patch") for i, _ in items)
    packages = heldout_packages(TASKS)
    assert packages == {"parse"}
    assert is_heldout_repo("r1chardj0n3s/parse", packages) and not is_heldout_repo("pytoolz/toolz", packages)
    index = EvalIndex(items)
    problem = dict(items)[items[0][0]]
    assert contaminated("Some PR body.\n" + problem, index) is not None


def test_humaneval_items():
    items = humaneval_items()
    assert len(items) == 164 and items[0][0] == "HumanEval/0" and "def " in items[0][1]


def test_near_duplicates():
    base = prose(10, 300)
    tokens = base.split()
    for k in (50, 150, 250):
        tokens[k] = "changed"
    planted = " ".join(tokens)
    rows = [(sid, signature(text)) for sid, text in
            [("a", base), ("b", prose(11, 300)), ("c", planted), ("d", prose(12, 300))]]
    assert all(len(sig) == 128 and all(isinstance(v, int) for v in sig) for _, sig in rows)
    assert signature(base) == signature(base)
    assert near_duplicates(rows) == {"c": "a"}
    assert near_duplicates([]) == {}
