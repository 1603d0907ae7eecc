"""``forge-ray data build-mt`` end to end on a real local Ray cluster: git PRs, a daVinci-Dev
parquet fixture and SWE episodes -> filtered, decontaminated, deduplicated, packed shards."""
import json
import os
import subprocess

import pytest

CLEAN = "def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n"


def _git(repo, *args, who="Alice <alice@example.com>"):
    name, email = who[:-1].split(" <")
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name,
           "GIT_COMMITTER_EMAIL": email}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


def _pr(repo, branch, files, title, who="Alice <alice@example.com>"):
    """A feature branch with one commit, merged with --no-ff as GitHub does."""
    _git(repo, "checkout", "-q", "-b", branch)
    for path, text in files.items():
        (repo / path).write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", title, who=who)
    _git(repo, "checkout", "-q", "main")
    _git(repo, "merge", "-q", "--no-ff", branch, "-m", f"Merge pull request #1 from x/{branch}\n\n{title}")


@pytest.fixture
def sources(tmp_path):
    from forge_ray.data.decontam import humaneval_items

    repo = tmp_path / "stats"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "stats.py").write_text(CLEAN + "\n\ndef mean(xs):\n    return total(xs) / len(xs)\n")
    (repo / "README.md").write_text("stats\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "Initial commit")
    _pr(repo, "fix-empty", {"stats.py": CLEAN + "\n\ndef mean(xs):\n    if not xs:\n        return 0.0\n    return total(xs) / len(xs)\n"},
        "Return 0.0 for the mean of an empty list")
    _pr(repo, "deps", {"README.md": "stats\n\nbumped\n"}, "Bump dependencies", who="dependabot[bot] <bot@github.com>")
    _, problem = humaneval_items()[0]  # an evaluation item pasted into a PR: contaminated
    _pr(repo, "copy-paste", {"solutions.py": "# helpers\n" + problem, "stats.py": CLEAN + "\n\ndef mean(xs):\n    return 0.0\n"},
        "Add helpers")
    twin = tmp_path / "stats-fork"  # a fork: the same PRs again, a near-duplicate of each
    subprocess.run(["git", "clone", "-q", str(repo), str(twin)], check=True)
    episodes = tmp_path / "episodes.jsonl"
    convo = [{"role": "user", "content": "fix the bug in total()"}, {"role": "assistant", "content": "THOUGHT: look\n```bash\nls\n```"}]
    episodes.write_text("".join(json.dumps({"task_id": f"t{i}", "package": "stats", "resolved": i == 0, "messages": convo + [
        {"role": "user", "content": f"<returncode>{i}</returncode><output>run {i}</output>"}]}) + "\n" for i in range(2)))
    davinci = tmp_path / "davinci.parquet"  # a row of daVinci-Dev's released schema, plus a column it has and we ignore
    import pyarrow as pa
    import pyarrow.parquet as pq

    old, new = "def area(w, h):\n    return w + h\n", "def area(w, h):\n    return w * h\n"
    pq.write_table(pa.Table.from_pylist([{
        "repo_name": "org/geometry", "repo_description": "shapes", "related_issue": {"title": "area is wrong", "body": "2x3 gives 5",
                                                                                    "comments": ["confirmed"]},
        "title": "Fix area", "body": "multiply", "pr_summary": "Area multiplied the sides instead of adding them.",
        "relevant_files": [{"path": "geo.py", "content": old}],
        "commits": [{"message": "fix area", "refined_message": "Multiply width by height in area()",
                     "diffs": [{"path": "geo.py", "patch": "@@ -1,2 +1,2 @@\n def area(w, h):\n-    return w + h\n+    return w * h"}]}],
        "merged": True, "stars": 12},  # from_pylist takes its columns from the first row
        {"repo_name": "org/unmerged", "title": "WIP", "merged": False, "relevant_files": [{"path": "geo.py", "content": old}],
         "commits": [{"message": "wip", "diffs": [{"path": "geo.py", "patch": "@@ -1,2 +1,2 @@\n def area(w, h):\n-    return w + h\n+    return 0"}]}]}]),
        davinci)
    return repo, twin, episodes, davinci


def test_build_mt_filters_decontaminates_dedups_and_packs(ray_cluster, tiny_model, sources, tmp_path):
    import datasets

    from forge_ray.data.build import BuildConfig, build_mt
    from forge_ray.data.pack import position_ids

    repo, twin, episodes, davinci = sources
    out = tmp_path / "mt"
    manifest = build_mt(BuildConfig(sources=[f"git:{repo}", f"git:{twin}", f"episodes:{episodes}", f"parquet:{davinci}"], out=str(out),
                                    tokenizer=tiny_model, seq_len=512, upsample_pass=3))
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["kept"] == manifest.kept and on_disk["dropped"] == manifest.dropped
    dropped = manifest.dropped
    assert dropped.get("pr:bot_author") == 2  # the dependabot PR, in both repositories
    assert dropped.get("gen:contaminated") == 2 and dropped.get("py:contaminated") == 2  # the pasted HumanEval problem
    # kept: the initial commit (a PR-like unit of the linear root) and "Return 0.0 ...", in both
    # formats, each replay-checked; the fork's copies of both are near-duplicates
    assert manifest.kept["gen"] == manifest.kept["py"] == {f"git:{repo}": 2, f"parquet:{davinci}": 1}
    assert manifest.read[f"parquet:{davinci}"] == 2 and dropped.get("pr:not_merged") == 1
    assert dropped.get("gen:near_duplicate") == 2 and dropped.get("py:near_duplicate") == 2
    assert manifest.env_labels == {"pass": 1, "fail": 1}
    assert manifest.kept["env"] == {f"episodes:{episodes}": 2}
    for subset in ("gen", "py", "env"):
        assert manifest.packing_efficiency[subset] > 0
        rows = datasets.load_dataset("parquet", data_files=[str(out / f) for f in manifest.shards[subset]], split="train")
        assert sum(sum(r["doc_lens"]) for r in rows) == manifest.tokens[subset]
        for r in rows:
            assert len(r["input_ids"]) == 512 and sum(r["doc_lens"]) <= 512
            assert position_ids(r["doc_lens"], 512)[r["doc_lens"][0]] == 0 if len(r["doc_lens"]) > 1 else True
    env_docs = sum(len(r["doc_lens"]) for r in datasets.load_dataset(
        "parquet", data_files=[str(out / f) for f in manifest.shards["env"]], split="train"))
    assert env_docs == 3 + 1  # the passing episode three times, the failing one once
