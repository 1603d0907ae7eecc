"""``forge-ray data build-mt``: the mid-training corpus as a Ray Data pipeline.

    sources --read--> PR records / SWE episodes --filter--> --enhance (optional)--> --render-->
    samples (gen: XML + unified diffs; py: Markdown + search/replace; env: chat transcripts)
    --decontaminate--> --tokenise--> --dedup (MinHash)--> --pack--> parquet shards + manifest.json

Every stage is a Ray Data transform over rows of plain columns (the record travels as JSON
text in ``data``, so nested, optional fields never fight Arrow's schema inference), and every
row that a stage drops stays in the stream, emptied, with its reason in ``drop``: the manifest
counts each reason without a second pass. On one box the transforms run in local Ray workers;
on a cluster the same code reads sources from shared storage and scales with the workers.

Source specs:
    git:PATH               merged PRs / PR-like commit groups of a local repository (sources.git_prs)
    releases:DIR           consecutive sdists of each package in DIR (sources.release_prs)
    pypi:PKG==V1,V2,...    those sdists, downloaded once into the release cache (pip download)
    parquet:PATH_OR_GLOB   rows in daVinci-Dev's released schema
    swe-experts:TASKS_DIR  the scripted expert's SWE episodes (environment-native, all passing)
    episodes:FILE.jsonl    policy episodes of `forge-ray eval swe --episodes` (passing and failing)
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from forge_ray.data.schema import normalize

log = logging.getLogger(__name__)

PR_KINDS = ("git", "releases", "pypi", "parquet")
SUBSETS = ("gen", "py", "env")


@dataclass(frozen=True)
class BuildConfig:
    sources: list[str]
    out: str
    tokenizer: str  # a model folder: its tokenizer counts, tokenises and packs
    seq_len: int = 4096  # tokens per packed sequence
    max_tokens: int = 32768  # samples longer than this are dropped (the paper's 32k)
    enhance: str = "none"  # a model folder that writes PR summaries and commit messages, or "none"
    eval_tasks: str = ""  # a SWE tasks folder: its held-out packages and problems are evaluation items
    humaneval: bool = True  # HumanEval's problems are evaluation items too
    decontaminate: bool = True  # False keeps evaluation repositories (to build a held-out loss set)
    ngram_threshold: float = 0.10  # 13-gram overlap ratio that marks a sample contaminated (XCoder)
    dedup_threshold: float = 0.8  # MinHash Jaccard estimate above which a sample is a near-duplicate
    upsample_pass: int = 3  # copies of each passing environment-native episode
    release_cache: str = "data/mt_releases"  # where pypi: sources download their sdists
    workers: int = 1  # actors per stateful stage (render, decontaminate, tokenise, pack); more on a cluster
    seed: int = 0


@dataclass
class Manifest:
    config: dict[str, Any]
    read: dict[str, int] = field(default_factory=dict)  # rows read per source spec
    kept: dict[str, dict[str, int]] = field(default_factory=dict)  # subset -> source -> samples
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    env_labels: dict[str, int] = field(default_factory=dict)  # pass / fail episodes kept
    tokens: dict[str, int] = field(default_factory=dict)  # subset -> document tokens after upsampling
    sequences: dict[str, int] = field(default_factory=dict)  # subset -> packed sequences
    packing_efficiency: dict[str, float] = field(default_factory=dict)  # subset -> non-padding fraction
    shards: dict[str, list[str]] = field(default_factory=dict)  # subset -> files, relative to out
    seconds: float = 0.0


def _blank(row: dict[str, Any], reason: str) -> dict[str, Any]:
    """``row`` dropped for ``reason``: its payload emptied, its identity kept for the counts."""
    return {**row, "data": "", "text": "", "dedup_key": "", "drop": reason}


# --------------------------------------------------------------------------- read


def _pr_row(record: dict[str, Any], spec: str) -> dict[str, Any]:
    return {"id": record["id"], "kind": "pr", "repo": record["repo_name"], "source": spec, "subset": "",
            "passed": False, "data": json.dumps(record), "text": "", "dedup_key": "", "drop": ""}


def read_spec(spec: str, release_cache: str = "data/mt_releases",
              episode_sources: dict[str, Callable[[str], Iterable]] | None = None) -> Iterator[dict[str, Any]]:
    """The rows one source spec yields (see the module docstring). ``episode_sources`` maps a
    spec kind (``swe-experts``) to a callable yielding ``(repo, key, messages, passed)`` for the
    spec's argument: environments are handed in by the caller, never imported here."""
    from forge_ray.data import envnative, sources

    kind, _, arg = spec.partition(":")
    if kind == "git":
        records = sources.git_prs(arg)
    elif kind == "releases":
        records = (r for pkg, dists in sources.group_releases(sorted(Path(arg).glob("*"))).items()
                   for r in sources.release_prs(dists, pkg))
    elif kind == "pypi":
        from forge_ray.data.releases import fetch_versions

        package, _, versions = arg.partition("==")
        records = sources.release_prs(fetch_versions(package, versions.split(","), release_cache), package)
    elif kind == "parquet":
        records = sources.parquet_prs(arg)
    elif kind in (episode_sources or {}):
        for repo, key, messages, passed in episode_sources[kind](arg):
            yield {**envnative.env_row(repo, key, messages, passed, kind), "source": spec, "text": "", "dedup_key": ""}
        return
    elif kind == "episodes":
        yield from ({**r, "source": spec, "text": "", "dedup_key": ""} for r in envnative.episode_file(arg))
        return
    else:
        kinds = PR_KINDS + ("episodes",) + tuple(episode_sources or ())
        raise ValueError(f"unknown source {spec!r}: expected one of {', '.join(k + ':' for k in kinds)}")
    for record in records:
        yield _pr_row(normalize(record, kind), spec)


# --------------------------------------------------------------------------- filter, render


def filter_pr(row: dict[str, Any], blocked_repos: frozenset[str]) -> dict[str, Any]:
    """The paper's PR-level filters (``filters.pr_drop_reason``); evaluation repositories go too."""
    from forge_ray.data.filters import pr_drop_reason

    if row["kind"] != "pr" or row["drop"]:
        return row
    reason = pr_drop_reason(json.loads(row["data"]), blocked_repos)
    return _blank(row, reason) if reason else row


class Renderer:
    """Each PR -> a ``gen`` sample (XML, unified diffs) and, when it passes the Python filters, a
    ``py`` sample (Markdown, search/replace); each episode -> an ``env`` transcript. A sample
    whose edits do not replay to the post-PR files is dropped with the reason.

    ``dedup_key`` is the text near-duplicates are judged on: a PR's patches (two PRs that
    touch the same large file share most of their text, the file, yet are different edits), an
    episode's whole transcript."""

    def __init__(self, tokenizer: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        from forge_ray.data.envnative import episode_text
        from forge_ray.data.filters import python_drop_reason
        from forge_ray.data.render import RenderError, render_markdown, render_xml

        if row["drop"]:
            return [row]
        if row["kind"] == "env":
            text = episode_text(json.loads(row["data"]), self.tokenizer)
            return [{**row, "subset": "env", "text": text, "data": "", "dedup_key": text}]
        record = json.loads(row["data"])
        edits = "\n".join(d["patch"] for c in record["commits"] for d in c["diffs"])
        out = []
        for subset, render in (("gen", render_xml), ("py", render_markdown)):
            sample = {**row, "id": f"{row['id']}/{subset}", "subset": subset, "data": "", "dedup_key": edits}
            reason = python_drop_reason(record) if subset == "py" else None
            if reason:
                out.append(_blank(sample, reason))
                continue
            try:
                out.append({**sample, "text": render(record)})
            except RenderError as e:
                out.append(_blank(sample, e.reason))
        return out


class Decontaminator:
    """Drops samples whose 13-gram overlap with an evaluation item reaches the threshold."""

    def __init__(self, index: Any, threshold: float) -> None:
        self.index, self.threshold = index, threshold

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from forge_ray.data.decontam import contaminated

        if row["drop"] or self.index is None:
            return row
        return _blank(row, "contaminated") if contaminated(row["text"], self.index, self.threshold) else row


class Tokenizer:
    """Token ids (ending with EOS) and the MinHash signature of each kept sample; samples over
    ``max_tokens`` are dropped."""

    def __init__(self, tokenizer: str, max_tokens: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.max_tokens = max_tokens
        self.eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.tokenizer.pad_token_id

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from forge_ray.data.decontam import signature

        if row["drop"]:
            return {**row, "tokens": [], "sig": []}
        tokens = self.tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [self.eos]
        if len(tokens) > self.max_tokens:
            return {**_blank(row, "too_long"), "tokens": [], "sig": []}
        return {**row, "text": "", "dedup_key": "", "tokens": tokens, "sig": signature(row["dedup_key"] or row["text"])}


# --------------------------------------------------------------------------- evaluation targets, pack


def eval_targets(cfg: BuildConfig) -> tuple[frozenset[str], Any]:
    """The repositories whose PRs are dropped whole and the 13-gram index of evaluation items."""
    from forge_ray.data import decontam

    if not cfg.decontaminate:
        return frozenset(), None
    blocked: set[str] = set()
    items: list[tuple[str, str]] = []
    if cfg.eval_tasks:
        blocked |= {p.lower() for p in decontam.heldout_packages(cfg.eval_tasks)}
        items += decontam.swe_eval_items(cfg.eval_tasks)
    if cfg.humaneval:
        items += decontam.humaneval_items()
    return frozenset(blocked), decontam.EvalIndex(items) if items else None


def _upsample(row: dict[str, Any], copies: int) -> list[dict[str, Any]]:
    if row["subset"] == "env" and row["passed"]:
        return [{**row, "id": f"{row['id']}#{k}"} for k in range(copies)]
    return [row]


class Packer:
    """A batch of documents of one subset -> fixed-length sequences (``pack.pack``)."""

    def __init__(self, seq_len: int) -> None:
        self.seq_len = seq_len

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from forge_ray.data.pack import pack

        out: dict[str, list] = {"subset": [], "input_ids": [], "doc_lens": []}
        for subset in sorted(set(batch["subset"])):
            docs = [list(t) for s, t in zip(batch["subset"], batch["tokens"]) if s == subset]
            for ids, lens in pack(docs, self.seq_len, split_min=self.seq_len // 8):
                out["subset"].append(subset)
                out["input_ids"].append(ids)
                out["doc_lens"].append(lens)
        return out


def _count(manifest: Manifest, rows: list[dict[str, Any]], duplicates: dict[str, str]) -> None:
    """Fill the manifest's read / kept / dropped / label counts from the light columns."""
    kept: dict[str, Counter] = {s: Counter() for s in SUBSETS}
    read: Counter = Counter()
    dropped: Counter = Counter()
    labels: Counter = Counter()
    seen_pr: set[str] = set()
    for r in rows:
        base = r["id"].removesuffix("/gen").removesuffix("/py")  # one PR, two samples; repo names hold "/" too
        if base not in seen_pr:
            seen_pr.add(base)
            read[r["source"]] += 1
        reason = r["drop"] or ("near_duplicate" if r["id"] in duplicates else "")
        if reason:
            dropped[f"{r['subset'] or 'pr'}:{reason}"] += 1
        else:
            kept[r["subset"]][r["source"]] += 1
            if r["subset"] == "env":
                labels["pass" if r["passed"] else "fail"] += 1
    manifest.read = dict(read)
    manifest.kept = {s: dict(c) for s, c in kept.items()}
    manifest.dropped = dict(sorted(dropped.items()))
    manifest.env_labels = dict(labels)


def build_mt(cfg: BuildConfig, episode_sources: dict[str, Callable[[str], Iterable]] | None = None) -> Manifest:
    """Run the pipeline; writes ``<out>/<subset>/train-*.parquet`` and ``<out>/manifest.json``.
    ``episode_sources``: see ``read_spec`` (``pipeline.episode_sources()`` gives ``swe-experts``)."""
    import ray

    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same input, same shards
    ctx.enable_progress_bars = False  # progress is the log lines below; Ray Data's own go to Ray's log files
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    blocked, index = eval_targets(cfg)
    pool = ray.data.ActorPoolStrategy(size=cfg.workers)
    log.info("build-mt: %d sources, %d blocked repositories, %s evaluation items", len(cfg.sources), len(blocked),
             len(index) if index is not None else "no")
    ds = ray.data.from_items([{"spec": s} for s in cfg.sources], override_num_blocks=max(1, len(cfg.sources)))
    ds = ds.flat_map(lambda r: list(read_spec(r["spec"], cfg.release_cache, episode_sources)))
    ds = ds.map(filter_pr, fn_kwargs={"blocked_repos": blocked})
    if cfg.enhance != "none":
        from forge_ray.data.enhance import Enhancer

        ds = ds.map_batches(Enhancer, fn_constructor_kwargs={"model": cfg.enhance}, batch_format="pandas", batch_size=32, compute=pool)
    ds = ds.flat_map(Renderer, fn_constructor_kwargs={"tokenizer": cfg.tokenizer}, compute=pool)
    ds = ds.map(Decontaminator, fn_constructor_kwargs={"index": index, "threshold": cfg.ngram_threshold}, compute=pool)
    ds = ds.map(Tokenizer, fn_constructor_kwargs={"tokenizer": cfg.tokenizer, "max_tokens": cfg.max_tokens}, compute=pool).materialize()
    light = ds.select_columns(["id", "kind", "source", "subset", "passed", "drop", "sig"]).take_all()
    from forge_ray.data.decontam import near_duplicates

    duplicates: dict[str, str] = {}
    for subset in SUBSETS:  # a PR's gen and py samples share their edits: compare within a subset
        duplicates.update(near_duplicates([(r["id"], list(r["sig"])) for r in light if not r["drop"] and r["subset"] == subset],
                                          cfg.dedup_threshold))
    manifest = Manifest(config=asdict(cfg))
    _count(manifest, light, duplicates)
    kept = ds.filter(lambda r: not r["drop"] and r["id"] not in duplicates).flat_map(_upsample, fn_kwargs={"copies": cfg.upsample_pass})
    packed = kept.select_columns(["subset", "tokens"]).map_batches(Packer, fn_constructor_kwargs={"seq_len": cfg.seq_len},
                                                                      batch_size=4096, compute=pool)
    _write(manifest, packed, cfg, out)
    manifest.seconds = round(time.time() - t0, 1)
    (out / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    (out / "ray_data_stats.txt").write_text(ds.stats())
    return manifest


def _write(manifest: Manifest, packed: Any, cfg: BuildConfig, out: Path) -> None:
    """Collect the packed sequences per subset and write them as parquet shards."""
    from transformers import AutoTokenizer

    from forge_ray.data.pack import efficiency, write_shards

    tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    by_subset: dict[str, list[tuple[list[int], list[int]]]] = {}
    for r in packed.iter_rows():
        by_subset.setdefault(r["subset"], []).append((list(r["input_ids"]), list(r["doc_lens"])))
    for subset, seqs in sorted(by_subset.items()):
        files = write_shards(seqs, out, subset, cfg.seq_len, pad)
        manifest.shards[subset] = [str(Path(f).relative_to(out)) for f in files]
        manifest.sequences[subset] = len(seqs)
        manifest.tokens[subset] = sum(sum(lens) for _, lens in seqs)
        manifest.packing_efficiency[subset] = round(efficiency(seqs, cfg.seq_len), 4)


def subset_shards(data_dir: str | Path, subsets: list[str]) -> list[str]:
    """The shard files of ``subsets`` listed in ``data_dir``'s manifest (a missing subset is empty)."""
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    return [str(Path(data_dir) / f) for s in subsets for f in manifest["shards"].get(s, [])]
