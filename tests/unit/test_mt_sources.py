"""Mid-training PR sources (``forge_ray/data/sources.py``): git history, sdist releases, parquet."""
import io
import os
import subprocess
import tarfile
import zipfile

import pytest

from forge_ray.data.patch import apply_patch
from forge_ray.data.schema import sample_id
from forge_ray.data.sources import (changelog_section, git_prs, group_releases, parquet_prs,
                                    parse_sdist_name, release_prs)

T0 = 1_700_000_000
HOUR = 3600


def _replay(record):
    """post_files as the record's patches, applied in order over relevant_files, produce them."""
    files = {f["path"]: f["content"] for f in record["relevant_files"]}
    for commit in record["commits"]:
        for d in commit["diffs"]:
            if d["status"] == "removed":
                assert apply_patch(files.pop(d["path"]), d["patch"]) == ""
            else:
                assert (d["status"] == "added") == (d["path"] not in files), d["path"]
                files[d["path"]] = apply_patch(files.get(d["path"], ""), d["patch"])
    return files


# ------------------------------------------------------------------------------------------ git
class _Repo:
    def __init__(self, root):
        self.root = root
        root.mkdir()
        self.git("init", "-q", "-b", "main")

    def git(self, *args, who="alice", at=T0):
        env = {**os.environ, "GIT_AUTHOR_NAME": who, "GIT_AUTHOR_EMAIL": f"{who}@example.com",
               "GIT_COMMITTER_NAME": who, "GIT_COMMITTER_EMAIL": f"{who}@example.com",
               "GIT_AUTHOR_DATE": f"@{at} +0000", "GIT_COMMITTER_DATE": f"@{at} +0000",
               "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        return subprocess.run(["git", *args], cwd=self.root, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    def commit(self, message, who, hours, write=(), remove=()):
        for path, content in dict(write).items():
            target = self.root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
        for path in remove:
            (self.root / path).unlink()
        self.git("add", "-A", who=who, at=T0 + int(hours * HOUR))
        self.git("commit", "-q", "-m", message, who=who, at=T0 + int(hours * HOUR))
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path):
    r = _Repo(tmp_path / "demo")
    r.shas = {}
    r.shas["c1"] = r.commit("Initial import\n\nThe first files.", "alice", 0, write={
        "a.py": "def a():\n    return 1\n", "b.py": "B = 1\n", "c.txt": "to be removed\n",
        "bin.dat": b"\0\1\2binary"})
    r.shas["c2"] = r.commit("Tweak a", "alice", 1, write={"a.py": "def a():\n    return 2\n"})
    r.shas["c3"] = r.commit("Bob's change", "bob", 2, write={
        "b.py": "B = 2\n", 'we ird "näme".py': "x = 1", "docs/é.md": "# Ü\n"})
    r.shas["c4"] = r.commit("After a long break", "bob", 10, write={"b.py": "B = 3\n"})
    r.git("checkout", "-q", "-b", "feature")
    r.shas["f1"] = r.commit("Feature part 1", "carol", 11, write={
        "a.py": "def a():\n    return 3\n", "new.py": "NEW = True\n"})
    r.shas["f2"] = r.commit("Feature part 2", "carol", 12, remove=["c.txt"], write={
        "a.py": "def a():\n    return 4\n", "bin.dat": b"\0\1\2binary v2", 'we ird "näme".py': "x = 2\n"})
    r.git("checkout", "-q", "main")
    r.git("merge", "-q", "--no-ff", "feature", "-m",
          "Merge pull request #7 from carol/feature\n\nAdd the feature\n\nIt does things.",
          who="dave", at=T0 + 13 * HOUR)
    r.shas["c5"] = r.commit("Follow-up", "bob", 14, write={"b.py": "B = 4\n"})
    r.shas["c6"] = r.commit("Follow-up 2", "bob", 15, write={"b.py": "B = 5\n", "docs/é.md": "# Ü\n\ntext\n"})
    return r


def test_git_prs_groups_merges_and_linear_stretches(repo):
    records = list(git_prs(repo.root, description="a demo"))
    assert [[c["message"].splitlines()[0] for c in r["commits"]] for r in records] == [
        ["Initial import", "Tweak a"],           # alice, 1 h apart
        ["Bob's change"],                        # another author
        ["After a long break"],                  # 8 h after the previous commit
        ["Feature part 1", "Feature part 2"],    # the merged PR
        ["Follow-up", "Follow-up 2"],
    ]
    first, _, _, pr, last = records
    assert pr["id"] == sample_id("demo", repo.shas["f1"]) and first["id"] == sample_id("demo", repo.shas["c1"])
    assert first["title"] == "Initial import" and first["body"] == "The first files."
    assert first["relevant_files"] == [] and first["has_binary"]  # root: everything added, bin.dat skipped
    assert all(d["status"] == "added" for d in first["commits"][0]["diffs"])
    assert "bin.dat" not in {d["path"] for c in first["commits"] for d in c["diffs"]}
    assert pr["title"] == "Add the feature" and pr["body"] == "It does things."
    assert pr["author"] == "carol <carol@example.com>" and pr["merged"] and pr["source"] == "git"
    assert pr["repo_name"] == "demo" and pr["repo_description"] == "a demo"
    assert {f["path"]: f["content"] for f in pr["relevant_files"]} == {  # at the parent of f1 (= c4)
        "a.py": "def a():\n    return 2\n", "c.txt": "to be removed\n", 'we ird "näme".py': "x = 1"}
    status = {d["path"]: d["status"] for c in pr["commits"] for d in c["diffs"]}
    assert status == {"a.py": "modified", "new.py": "added", "c.txt": "removed", 'we ird "näme".py': "modified"}
    assert {f["path"] for f in pr["post_files"]} == {"a.py", "new.py", 'we ird "näme".py'}
    assert pr["has_binary"] and not last["has_binary"]
    assert "\\ No newline at end of file" in pr["commits"][1]["diffs"][-1]["patch"]
    for record in records:
        assert _replay(record) == {f["path"]: f["content"] for f in record["post_files"]}, record["title"]
        for c in record["commits"]:
            assert all(d["patch"].startswith("@@") and not d["patch"].endswith("\n") for d in c["diffs"])


def test_git_prs_unit_size_gap_and_plain_merges(repo):
    one = list(git_prs(repo.root, repo_name="x/demo", max_unit_commits=1))
    assert [len(r["commits"]) for r in one] == [1, 1, 1, 1, 2, 1, 1]
    assert one[0]["repo_name"] == "x/demo"
    wide = list(git_prs(repo.root, max_gap_hours=24))
    assert [len(r["commits"]) for r in wide] == [2, 2, 2, 2]  # bob's two linear commits now join
    repo.git("checkout", "-q", "-b", "side")
    repo.commit("Side work", "erin", 16, write={"side.py": "S = 1\n"})
    repo.git("checkout", "-q", "main")
    repo.commit("Main work", "bob", 16.5, write={"b.py": "B = 6\n"})
    repo.git("merge", "-q", "--no-ff", "side", "-m", "Merge branch 'side'\n\nWhy.", who="dave", at=T0 + 17 * HOUR)
    merged = list(git_prs(repo.root))[-1]
    assert (merged["title"], merged["body"]) == ("Merge branch 'side'", "Why.")
    assert [d["path"] for d in merged["commits"][0]["diffs"]] == ["side.py"]


def test_git_prs_on_an_empty_repository(tmp_path):
    _Repo(tmp_path / "empty")
    assert list(git_prs(tmp_path / "empty")) == []


# ------------------------------------------------------------------------------------- releases
CHANGES_RST = """Changes
=======

1.10 (2024-02-01)
-----------------

- Added ``twice``.

1.9 (2024-01-01)
----------------

- First release.
"""

CHANGELOG_MD = """# Changelog

## 2.0 - 2024-03-01

### Changed
- `twice` takes a count.

## 1.10
- Added `twice`.
"""


def _pkg_info(version):
    return f"Metadata-Version: 2.1\nName: demo-pkg\nVersion: {version}\nSummary: A demo package\n"


RELEASES = {
    "1.9": {"demo_pkg/__init__.py": "def once(x):\n    return x\n", "README.rst": "Demo\n",
            "CHANGES.rst": CHANGES_RST.split("1.10 (")[0] + "1.9 (" + CHANGES_RST.split("1.9 (")[1],
            "data.bin": b"\0\0\0"},
    "1.10": {"demo_pkg/__init__.py": "def once(x):\n    return x\n\n\ndef twice(x):\n    return 2 * x\n",
             "README.rst": "Demo\n", "CHANGES.rst": CHANGES_RST, "data.bin": b"\0\0\0"},
    "2.0": {"demo_pkg/__init__.py": "def once(x):\n    return x\n\n\ndef twice(x, n=2):\n    return n * x",
            "demo_pkg/util.py": "U = 1\n", "CHANGELOG.md": CHANGELOG_MD, "data.bin": b"\0\0\1"},
}


def _sdist(tmp_path, version, files, fmt="tar"):
    top = f"demo_pkg-{version}"
    files = {**files, "PKG-INFO": _pkg_info(version), "demo_pkg.egg-info/SOURCES.txt": "\n".join(files)}
    if fmt == "zip":
        path = tmp_path / f"{top}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for name, content in files.items():
                zf.writestr(f"{top}/{name}", content)
        return path
    path = tmp_path / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, content in files.items():
            data = content if isinstance(content, bytes) else content.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_release_prs_pairs_consecutive_versions(tmp_path):
    dists = [_sdist(tmp_path, v, files, "zip" if v == "1.9" else "tar") for v, files in RELEASES.items()]
    records = list(release_prs(dists[::-1] + [tmp_path / "notes.txt"], package="Demo_Pkg"))
    assert [r["title"] for r in records] == ["demo-pkg 1.10", "demo-pkg 2.0"]  # 1.9 < 1.10, not by name
    first, second = records
    assert first["body"] == "1.10 (2024-02-01)\n-----------------\n\n- Added ``twice``."
    assert second["body"] == "## 2.0 - 2024-03-01\n\n### Changed\n- `twice` takes a count."
    assert first["repo_name"] == "demo-pkg" and first["repo_description"] == "A demo package"
    assert first["source"] == "release" and first["id"] != second["id"]
    assert second["commits"][0]["message"] == "Release demo-pkg 1.10 -> 2.0"
    status = {d["path"]: d["status"] for d in second["commits"][0]["diffs"]}
    assert status == {"CHANGELOG.md": "added", "CHANGES.rst": "removed", "README.rst": "removed",
                      "demo_pkg/__init__.py": "modified", "demo_pkg/util.py": "added"}
    assert {f["path"] for f in second["relevant_files"]} == {"CHANGES.rst", "README.rst", "demo_pkg/__init__.py"}
    assert second["has_binary"] and not first["has_binary"]  # data.bin changed, and is not diffed
    for record in records:
        post = {f["path"]: f["content"] for f in record["post_files"]}
        assert _replay(record) == post
    assert post["demo_pkg/__init__.py"] == RELEASES["2.0"]["demo_pkg/__init__.py"]


def test_sdists_group_by_normalised_name(tmp_path):
    names = ["Demo_Pkg-1.10.tar.gz", "demo-pkg-1.9.zip", "demo.pkg-1.9.tar.gz", "other-0.1.tar.gz", "x.whl"]
    groups = group_releases([tmp_path / n for n in names])
    assert {k: [p.name for p in v] for k, v in groups.items()} == {
        "demo-pkg": ["demo.pkg-1.9.tar.gz", "Demo_Pkg-1.10.tar.gz"], "other": ["other-0.1.tar.gz"]}
    assert parse_sdist_name("python-dateutil-2.8.2.tar.gz") == ("python-dateutil", "2.8.2")


@pytest.mark.parametrize("member", ["../evil", "/etc/evil", "pkg-1.0/../../evil"])
def test_unsafe_sdist_members_are_refused(tmp_path, member):
    good = _sdist(tmp_path, "1.0", {"m.py": "x = 1\n"})
    bad = tmp_path / "demo_pkg-1.1.tar.gz"
    with tarfile.open(bad, "w:gz") as tf:
        info = tarfile.TarInfo(member)
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="archive member"):
        list(release_prs([good, bad]))
    assert not (tmp_path.parent / "evil").exists()


def test_changelog_headings_of_each_kind():
    plain = "Version 1.0.1\n  fix\nVersion 1.0\n  first\n"
    assert changelog_section(plain, "1.0") == "Version 1.0\n  first"  # 1.0 does not match 1.0.1
    dated = "History\n\n2.0 (2024-01-01)\n* two\n\n1.0 (2023-01-01)\n* one\n"
    assert changelog_section(dated, "2.0") == "2.0 (2024-01-01)\n* two"
    over = "=====\nv3.0\n=====\n\nBig.\n\nFixes\n-----\nsmall\n\n=====\nv2.0\n=====\nold\n"
    assert changelog_section(over, "3.0") == "=====\nv3.0\n=====\n\nBig.\n\nFixes\n-----\nsmall"
    assert changelog_section("# Changelog\n\n```\n# 4.0 in a code block\n```\n", "4.0") == ""
    assert changelog_section(CHANGELOG_MD, "3.0") == ""


# -------------------------------------------------------------------------------------- parquet
def _davinci_table(rows):
    import pyarrow as pa

    file_t = pa.struct([("path", pa.string()), ("content", pa.string())])
    diff_t = pa.struct([("path", pa.string()), ("patch", pa.string())])
    commit_t = pa.struct([("message", pa.string()), ("refined_message", pa.string()), ("diffs", pa.list_(diff_t))])
    issue_t = pa.struct([("title", pa.string()), ("body", pa.string()), ("comments", pa.list_(pa.string()))])
    schema = pa.schema([("repo_name", pa.string()), ("repo_description", pa.string()), ("related_issue", issue_t),
                        ("title", pa.string()), ("body", pa.string()), ("pr_summary", pa.string()),
                        ("relevant_files", pa.list_(file_t)), ("commits", pa.list_(commit_t)),
                        ("stars", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)


def _row(name, issue=None):
    return {"repo_name": name, "repo_description": "d", "related_issue": issue, "title": "Fix it", "body": None,
            "pr_summary": "s", "relevant_files": [{"path": "a.py", "content": "x = 1\n"}],
            "commits": [{"message": "fix", "refined_message": "Fix x", "diffs": [
                {"path": "a.py", "patch": "@@ -1 +1 @@\n-x = 1\n+x = 2"},
                {"path": "b.py", "patch": "@@ -0,0 +1 @@\n+y = 1"}]}], "stars": 3}


def test_parquet_prs_reads_davinci_rows(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(_davinci_table([_row("o/r", {"title": "Bug", "body": "b", "comments": ["c1", "c2"]}),
                                   _row("o/s")]), tmp_path / "part-0.parquet")
    records = list(parquet_prs(tmp_path / "*.parquet"))
    assert [r["repo_name"] for r in records] == ["o/r", "o/s"] and list(parquet_prs(tmp_path)) == records
    r = records[0]
    assert r["related_issue"] == {"title": "Bug", "body": "b", "comments": ["c1", "c2"]}
    assert records[1]["related_issue"] is None and r["body"] == "" and r["source"] == "parquet"
    assert [d["status"] for d in r["commits"][0]["diffs"]] == ["modified", "added"]
    assert r["commits"][0]["refined_message"] == "Fix x" and "stars" not in r and r["post_files"] is None
    assert _replay(r) == {"a.py": "x = 2\n", "b.py": "y = 1\n"}


def test_parquet_prs_names_the_malformed_row(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(_davinci_table([_row("o/r"), {**_row("o/r"), "commits": None}]), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: row 1: .*commits"):
        list(parquet_prs(tmp_path / "bad.parquet"))
