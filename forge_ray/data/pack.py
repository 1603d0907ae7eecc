"""Sequence packing for mid-training: documents into fixed-length rows, and the rows' targets.

Every document is a list of token ids already ending with EOS. ``pack`` splits documents longer
than ``seq_len`` into ``seq_len``-sized pieces (each piece then counts as its own document) and
bin-packs all pieces best-fit-decreasing into rows of at most ``seq_len`` tokens; no piece is ever
split across two rows. A packed row is ``(input_ids, doc_lens)``: the pieces' tokens concatenated
and their lengths in order. Padding (``pad_id`` up to ``seq_len``) is added only by the writer.

Documents must not see each other. The model gets ``position_ids`` that restart at 0 at every
document (and once more for the padding tail) and no attention mask: transformers (5.x) derives
a block-diagonal causal mask from position ids that restart. The loss must not cross documents
either; two equivalent forms are provided:

* ``targets`` — **pre-shifted**: ``targets[i]`` is the token that follows position ``i`` in the
  same document, else -100 (each document's last token and all padding). The trainer computes
  ``cross_entropy(logits[:, i], targets[:, i], ignore_index=-100)`` itself, with no shift. This
  is what ``packed_batch`` returns.
* ``labels`` — **un-shifted**, Hugging Face convention (the model shifts internally:
  ``logits[i]`` vs ``labels[i + 1]``): ``input_ids`` with -100 at each document's *first* token
  and at all padding, so the shifted pair (last token of document A, first token of B) is
  ignored. ``labels[1:] == targets[:-1]`` and both count the same predictions.
"""
from __future__ import annotations

import bisect
import heapq
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

IGNORE = -100
Row = tuple[list[int], list[int]]  # (token ids concatenated, doc_lens)


# --------------------------------------------------------------------------- packing

def split_docs(docs: list[list[int]], seq_len: int) -> list[list[int]]:
    """Documents cut into pieces of at most ``seq_len`` tokens (empty documents dropped)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    return [doc[i:i + seq_len] for doc in docs for i in range(0, len(doc), seq_len)]


class _Bins:
    """Open bins indexed by remaining capacity, for best-fit lookups in O(log C)."""

    def __init__(self) -> None:
        """No open bins."""
        self.caps: list[int] = []  # sorted distinct remaining capacities
        self.by_cap: dict[int, list[int]] = {}  # capacity -> bin indices (stack)

    def add(self, cap: int, b: int) -> None:
        """Register bin ``b`` with ``cap`` tokens of room (bins with no room are dropped)."""
        if cap <= 0:
            return
        if cap not in self.by_cap:
            bisect.insort(self.caps, cap)
            self.by_cap[cap] = []
        self.by_cap[cap].append(b)

    def take(self, need: int) -> tuple[int, int] | None:
        """Remove and return ``(cap, bin)`` of the tightest bin with ``cap >= need``, else None."""
        j = bisect.bisect_left(self.caps, need)
        if j == len(self.caps):
            return None
        cap = self.caps[j]
        stack = self.by_cap[cap]
        b = stack.pop()
        if not stack:
            del self.by_cap[cap]
            self.caps.pop(j)
        return cap, b


def pack(docs: list[list[int]], seq_len: int, split_min: int | None = None) -> list[Row]:
    """Pack documents into rows of at most ``seq_len`` tokens, best-fit decreasing.

    Pieces (see ``split_docs``) are placed longest first (ties in input order) into the open row
    with the least room that still fits them, or a new row. With ``split_min``, a piece that
    fits no open row but would leave a row with ``split_min`` or more tokens of room unused is
    split instead: its head fills that row, its tail goes back in line. Every piece is its own
    document for attention and loss (positions restart), so splitting trades some context at
    the cut for fewer padding tokens. Deterministic. Returns ``[(input_ids, doc_lens), ...]`` in
    row creation order, unpadded.
    """
    pieces = split_docs(docs, seq_len)
    queue = [(-len(p), k, p) for k, p in enumerate(pieces)]
    heapq.heapify(queue)
    rows: list[Row] = []
    bins = _Bins()
    serial = len(pieces)
    while queue:
        _, _, piece = heapq.heappop(queue)
        hit = bins.take(len(piece))
        if hit is None and split_min and bins.caps and bins.caps[-1] >= split_min:
            hit = bins.take(bins.caps[-1])
            head, tail = piece[: hit[0]], piece[hit[0]:]
            heapq.heappush(queue, (-len(tail), serial, tail))
            serial += 1
            piece = head
        if hit is None:
            cap, b = seq_len, len(rows)
            rows.append(([], []))
        else:
            cap, b = hit
        rows[b][0].extend(piece)
        rows[b][1].append(len(piece))
        bins.add(cap - len(piece), b)
    return rows


def efficiency(seqs: list[Row], seq_len: int) -> float:
    """Fraction of non-padding tokens over ``len(seqs) * seq_len`` (0.0 for no rows)."""
    if not seqs:
        return 0.0
    return sum(sum(lens) for _, lens in seqs) / (len(seqs) * seq_len)


# --------------------------------------------------------------------------- per-row inputs

def _check(doc_lens: list[int], seq_len: int) -> int:
    """Total document tokens of a row; raises when they exceed ``seq_len``."""
    used = sum(doc_lens)
    if used > seq_len:
        raise ValueError(f"doc_lens sum to {used} > seq_len {seq_len}")
    return used


def position_ids(doc_lens: list[int], seq_len: int) -> list[int]:
    """Positions restarting at 0 per document; the padding tail is one more run from 0."""
    used = _check(doc_lens, seq_len)
    out: list[int] = []
    for n in doc_lens:
        out.extend(range(n))
    out.extend(range(seq_len - used))
    return out


def targets(input_ids: list[int], doc_lens: list[int], seq_len: int) -> list[int]:
    """Pre-shifted next-token targets: ``targets[i] = input_ids[i + 1]`` within a document.

    -100 at every document's last token (no prediction across a boundary) and at padding. Use
    with logits at the same positions, without shifting. ``input_ids`` may be padded or not.
    """
    _check(doc_lens, seq_len)
    out = [IGNORE] * seq_len
    start = 0
    for n in doc_lens:
        out[start:start + n - 1] = input_ids[start + 1:start + n]
        start += n
    return out


def labels(input_ids: list[int], doc_lens: list[int], seq_len: int) -> list[int]:
    """Un-shifted Hugging Face labels: ``input_ids`` with -100 at each document's first token and
    at padding, so that the model's internal shift never predicts across a boundary."""
    _check(doc_lens, seq_len)
    out = [IGNORE] * seq_len
    start = 0
    for n in doc_lens:
        out[start + 1:start + n] = input_ids[start + 1:start + n]
        start += n
    return out


# --------------------------------------------------------------------------- shards

_SHARD = re.compile(r"train-\d{5}-of-\d{5}\.parquet")


def _schema():
    """Arrow schema of a packed shard."""
    import pyarrow as pa

    return pa.schema([("input_ids", pa.list_(pa.int32())), ("doc_lens", pa.list_(pa.int32())),
                      ("subset", pa.string())])


def _table(seqs: list[Row], subset: str, seq_len: int, pad_id: int):
    """Arrow table of rows padded to ``seq_len`` with ``pad_id``."""
    import pyarrow as pa

    ids, lens = [], []
    for tokens, doc_lens in seqs:
        if _check(doc_lens, seq_len) != len(tokens):
            raise ValueError(f"doc_lens sum {sum(doc_lens)} != {len(tokens)} tokens")
        ids.append(list(tokens) + [pad_id] * (seq_len - len(tokens)))
        lens.append(list(doc_lens))
    return pa.table({"input_ids": ids, "doc_lens": lens, "subset": [subset] * len(seqs)},
                    schema=_schema())


def write_shards(seqs: list[Row], out_dir: str | os.PathLike, subset: str, seq_len: int,
                 pad_id: int, rows_per_shard: int = 2048) -> list[Path]:
    """Write packed rows as ``out_dir/<subset>/train-0000i-of-0000N.parquet``.

    Columns: ``input_ids`` (list<int32>, padded to ``seq_len`` with ``pad_id``), ``doc_lens``
    (list<int32>), ``subset`` (string). Older ``train-*-of-*.parquet`` shards in that folder are
    removed first so a smaller rewrite leaves no stale shard. Returns the paths (none for no rows).
    The files load with ``datasets.load_dataset("parquet", data_files=[str(p) for p in paths])``.
    """
    import pyarrow.parquet as pq

    folder = Path(out_dir) / subset
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if _SHARD.fullmatch(old.name):
            old.unlink()
    total = -(-len(seqs) // rows_per_shard)
    paths = []
    for i in range(total):
        chunk = seqs[i * rows_per_shard:(i + 1) * rows_per_shard]
        path = folder / f"train-{i:05d}-of-{total:05d}.parquet"
        pq.write_table(_table(chunk, subset, seq_len, pad_id), path)
        paths.append(path)
    return paths


def read_shards(paths: Iterable[str | os.PathLike], batch_rows: int = 256) -> Iterator[dict]:
    """Rows ``{"input_ids", "doc_lens", "subset"}`` of the shards, in file order, streamed."""
    import pyarrow.parquet as pq

    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield from batch.to_pylist()


# --------------------------------------------------------------------------- torch batch

def packed_batch(rows: list[dict], seq_len: int, pad_id: int = 0) -> dict:
    """LongTensors ``input_ids``, ``position_ids``, ``targets`` of shape [B, seq_len].

    ``rows`` are shard rows (``input_ids``, ``doc_lens``); ``input_ids`` shorter than ``seq_len``
    are padded with ``pad_id``. Feed ``input_ids`` and ``position_ids`` to the model without an
    attention mask (and ``use_cache=False``); score ``logits`` against ``targets`` unshifted.
    """
    import torch

    ids, pos, tgt = [], [], []
    for row in rows:
        tokens = list(row["input_ids"])[:seq_len]
        tokens += [pad_id] * (seq_len - len(tokens))
        ids.append(tokens)
        pos.append(position_ids(row["doc_lens"], seq_len))
        tgt.append(targets(tokens, row["doc_lens"], seq_len))
    as_long = lambda x: torch.tensor(x, dtype=torch.long).reshape(len(rows), seq_len)  # noqa: E731
    return {"input_ids": as_long(ids), "position_ids": as_long(pos), "targets": as_long(tgt)}
