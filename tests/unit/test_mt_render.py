"""Pull requests rendered as mid-training text (forge_ray.data.render): daVinci-Dev's Markdown
search/replace format and the general XML-like format, with their verification."""
from __future__ import annotations

import re

import pytest

from forge_ray.data.patch import apply_patch, make_patch
from forge_ray.data.render import (
    MAX_WIDEN, Edit, RenderError, commit_edits, post_contents, render_markdown, render_xml, replay,
)

CORE = '''import os


def load(path):
    if not path:
        return None
    data = read(path)
    data = clean(data)
    data = check(data)
    return data


def save(path):
    if not path:
        return None
    data = read(path)
    data = clean(data)
    data = check(data)
    return data
'''
CORE_1 = CORE[:CORE.rindex("clean(data)")] + "clean(data, strict=True)" + CORE[CORE.rindex("clean(data)") + 11:]
CORE_3 = CORE_1.replace("import os\n", "import os\nimport sys\n").replace("return None", "raise ValueError(path)", 1)
CORE_3 = CORE_3[:CORE_3.rindex("return data")] + "return data or {}\n"
UTIL = "def read(path):\n    return open(path).read()\n"
OLD = "# legacy\nX = 1\n"
README = "Some ```` backticks ``` here\n"


def _diff(path, old, new, status="modified"):
    return {"path": path, "patch": make_patch(old, new), "status": status}


def _record(**over):
    record = {
        "id": "o/r@1", "source": "test", "repo_name": "octo/datakit", "repo_description": "Small data tools.",
        "related_issue": {"title": "save() is not strict", "body": "It should validate.",
                          "comments": ["Agreed.", "Also load()."]},
        "title": "Strict save", "body": "Makes save strict.", "pr_summary": "Tighten data handling.",
        "relevant_files": [{"path": "app/core.py", "content": CORE}, {"path": "old.py", "content": OLD},
                           {"path": "README.md", "content": README}],
        "commits": [
            {"message": "strict save", "refined_message": "Make save() clean strictly.",
             "diffs": [_diff("app/core.py", CORE, CORE_1)]},
            {"message": "add util, drop old", "refined_message": "",
             "diffs": [_diff("app/util.py", "", UTIL, "added"), _diff("old.py", OLD, "", "removed")]},
            {"message": "load raises", "refined_message": "",
             "diffs": [_diff("app/core.py", CORE_1, CORE_3)]},
        ],
        "merged": True, "author": "", "post_files": None,
    }
    record.update(over)
    return record


def _file(path, content):
    return {"path": path, "content": content}


def test_post_contents_from_patches_and_from_post_files():
    want = {"app/core.py": CORE_3, "app/util.py": UTIL, "old.py": None}
    assert post_contents(_record()) == want
    given = [{"path": "app/core.py", "content": CORE_3}, {"path": "app/util.py", "content": UTIL}]
    assert post_contents(_record(post_files=given)) == want  # old.py absent: removed


def test_widened_search_is_unique_and_blocks_chain():
    edits = commit_edits(_record())
    first = edits[0][0]
    naive = "".join(CORE.splitlines(keepends=True)[13:19])  # the hunk's own old lines, in load() too
    assert CORE.count(naive) == 2
    assert first.path == "app/core.py" and naive in first.search and len(first.search) > len(naive)
    assert first.search.startswith("def save(path):\n") and CORE.count(first.search) == 1
    assert first.replace == first.search.replace("clean(data)", "clean(data, strict=True)")
    assert edits[1] == [Edit("app/util.py", "", UTIL), Edit("old.py", None, None)]
    # commit 3 has two hunks; the second is computed on the text the first left
    assert len(edits[2]) == 2
    text = CORE_1
    for edit in edits[2]:
        assert text.count(edit.search) == 1
        text = text.replace(edit.search, edit.replace)
    assert text == CORE_3
    assert replay({"app/core.py": CORE, "old.py": OLD}, edits) == {"app/core.py": CORE_3, "old.py": None,
                                                                   "app/util.py": UTIL}


SECTIONS = ("# Repository Context", "# Issue", "# Pull Request", "# Relevant Files Found", "# Edits")


def _headers(text):
    """The section headings, in order (a file's own "# legacy" line is content, not a section)."""
    return [line for line in text.splitlines() if line in SECTIONS]


def test_render_markdown_sections_and_blocks():
    text = render_markdown(_record())
    assert _headers(text) == ["# Repository Context", "# Issue", "# Pull Request", "# Relevant Files Found",
                              "# Edits"]
    assert text.startswith("# Repository Context\nName: octo/datakit\nDescription: Small data tools.\n\n# Issue\n")
    assert "## Comment 1\nAgreed.\n\n## Comment 2\nAlso load()." in text
    assert "## app/core.py\n```\n" + CORE + "```\n" in text
    assert "```\n\n## old.py\n```\n" + OLD + "```\n\n" in text
    assert "## README.md\n`````\n" + README + "`````\n\n# Edits" in text  # the fence outgrows the backticks
    edits = text[text.index("# Edits\n"):]
    assert edits.startswith("# Edits\nTighten data handling.\n\nMake save() clean strictly.\n\nEdit: app/core.py")
    assert edits.index("Tighten data handling.") < edits.index("Make save() clean strictly.") \
        < edits.index("Edit: app/core.py") < edits.index("add util, drop old") < edits.index("load raises")
    assert "strict save\n" not in edits  # the refined message replaces the raw one
    first = commit_edits(_record())[0][0]
    assert f"Edit: app/core.py\nSearch:\n'''\n{first.search}'''\nReplace:\n'''\n{first.replace}'''" in edits
    assert f"Edit: app/util.py\nSearch:\n'''\n'''\nReplace:\n'''\n{UTIL}'''" in edits
    assert "\n\nDelete: old.py\n\n" in edits


def _parse_markdown_edits(text):
    """The blocks as a reader gets them back from the text (these contents hold no ''')."""
    blocks = re.findall(r"^Edit: ([^\n]*)\nSearch:\n'''\n(.*?)'''\nReplace:\n'''\n(.*?)'''$|^Delete: ([^\n]*)$",
                        text, re.M | re.S)
    return [[Edit(e, s, r) if e else Edit(d, None, None) for e, s, r, d in blocks]]


def test_markdown_text_replays_to_the_post_pr_files():
    record = _record()
    text = render_markdown(record)
    files = {f["path"]: f["content"] for f in record["relevant_files"]}
    after = replay(files, _parse_markdown_edits(text[text.index("# Edits\n"):]))
    assert {p: after.get(p) for p in post_contents(record)} == post_contents(record)


def test_issue_summary_and_description_are_omitted_when_empty():
    for issue in (None, {"title": "", "body": "", "comments": []}):
        text = render_markdown(_record(related_issue=issue, pr_summary="", repo_description=""))
        assert _headers(text) == ["# Repository Context", "# Pull Request", "# Relevant Files Found", "# Edits"]
        assert "Description:" not in text and "Tighten" not in text
        xml = render_xml(_record(related_issue=issue, pr_summary=""))
        assert "<issue>" not in xml and "<pr summary>" not in xml


def test_wrong_post_files_is_a_replay_mismatch():
    wrong = [{"path": "app/core.py", "content": CORE_1}, {"path": "app/util.py", "content": UTIL}]
    for render in (render_markdown, render_xml):
        with pytest.raises(RenderError) as err:
            render(_record(post_files=wrong))
        assert err.value.reason == "replay_mismatch"
    right = [{"path": "app/core.py", "content": CORE_3}, {"path": "app/util.py", "content": UTIL}]
    assert render_markdown(_record(post_files=right)) == render_markdown(_record())


def test_patch_that_does_not_apply():
    bad = _record()
    bad["commits"][2]["diffs"][0]["patch"] = make_patch(CORE, CORE.replace("return None", "pass"))
    for fn in (post_contents, commit_edits, render_markdown, render_xml):
        with pytest.raises(RenderError) as err:
            fn(bad)
        assert err.value.reason == "patch_does_not_apply"


def _flat(n_lines, changed):
    """A file of ``n_lines`` identical lines and the patch (3 lines of context) changing line ``changed``."""
    body = "\n".join([" x = 0"] * 3 + ["-x = 0", "+x = 1"] + [" x = 0"] * 3)
    return "x = 0\n" * n_lines, f"@@ -{changed - 3},7 +{changed - 3},7 @@\n{body}"


def test_search_that_cannot_be_made_unique():
    content, patch = _flat(50, 25)
    record = _record(relevant_files=[_file("flat.py", content)], related_issue=None,
                     commits=[{"message": "m", "refined_message": "",
                               "diffs": [{"path": "flat.py", "patch": patch, "status": "modified"}]}])
    with pytest.raises(RenderError) as err:
        render_markdown(record)
    assert err.value.reason == "search_not_unique"  # 7 + 2 * 20 lines of "x = 0" still occur 4 times
    assert "flat.py" in render_xml(record)  # a patch has line numbers: no ambiguity there
    # in a shorter file the widening clamps at both ends and the whole file is unique
    content, patch = _flat(MAX_WIDEN + 10, 15)
    record["relevant_files"] = [_file("flat.py", content)]
    record["commits"][0]["diffs"][0]["patch"] = patch
    (edit,), = commit_edits(record)
    assert edit.search == content and edit.replace == apply_patch(content, patch)


def test_empty_file_and_pure_insertion_blocks():
    record = _record(relevant_files=[_file("e.py", ""), _file("f.py", "a\nb\na\nb\n")], commits=[
        {"message": "fill", "refined_message": "", "diffs": [
            _diff("e.py", "", "x\n"),
            {"path": "f.py", "patch": make_patch("a\nb\na\nb\n", "a\nb\na\nc\nb\n", context=0), "status": "modified"},
        ]}])
    (fill, insert), = commit_edits(record)
    assert fill == Edit("e.py", "", "x\n")  # an existing but empty file: an empty search is unique
    assert insert.search and "a\nb\na\nb\n".count(insert.search) == 1
    assert "Edit: f.py" in render_markdown(record)


def test_replay_reads_blocks_literally():
    with pytest.raises(RenderError, match="occurs 2"):
        replay({"a": "x\nx\n"}, [[Edit("a", "x\n", "y\n")]])
    for edits in ([Edit("a", "", "new")], [Edit("missing", "x", "y")], [Edit("missing", None, None)]):
        with pytest.raises(RenderError) as err:
            replay({"a": "x\n", "missing": None}, [edits])
        assert err.value.reason == "replay_mismatch"
    files = {"a": "x\n"}
    assert replay(files, [[("a", "x\n", "y\n")], [Edit("b", "", "z")]]) == {"a": "y\n", "b": "z"}
    assert files == {"a": "x\n"}


def test_no_edits_and_binary():
    for render in (render_markdown, render_xml):
        with pytest.raises(RenderError) as err:
            render(_record(commits=[{"message": "empty", "refined_message": "", "diffs": []}]))
        assert err.value.reason == "no_edits"
        with pytest.raises(RenderError) as err:
            render(_record(relevant_files=[_file("app/core.py", CORE + "\x00")]))
        assert err.value.reason == "binary"
    no_patch = _record(commits=[{"message": "m", "refined_message": "",
                                 "diffs": [{"path": "logo.png", "patch": "", "status": "modified"}]}])
    with pytest.raises(RenderError) as err:
        render_markdown(no_patch)
    assert err.value.reason == "binary"


def test_render_xml():
    record = _record()
    text = render_xml(record)
    assert text.startswith("<repository>\nocto/datakit\nSmall data tools.\n</repository>\n<issue>\n"
                           "save() is not strict\n\nIt should validate.\n<issue comment>\nAgreed.\n</issue comment>\n")
    assert "<pr>\nStrict save\n\nMakes save strict.\n</pr>\n" in text
    assert f'<file path="app/core.py">\n{CORE}</file>\n' in text
    assert f'<file path="README.md">\n{README}</file>\n<pr summary>\nTighten data handling.\n</pr summary>\n' in text
    assert text.count("<pr commit>\n") == 3 and "<pr commit>\nMake save() clean strictly.\n<commit file" in text
    assert '<commit file path="app/util.py" status="added">\n<patch>\n@@ -0,0 +1,2 @@\n' in text
    assert '<commit file path="old.py" status="removed">' in text
    assert text.endswith("</pr commit>\n<pr is merged>true</pr is merged>\n")
    # the text's patches, read back and applied in order, give the post-PR files
    files = {f["path"]: f["content"] for f in record["relevant_files"]}
    for path, status, patch in re.findall(r'<commit file path="(.*?)" status="(.*?)">\n<patch>\n(.*?)</patch>',
                                          text, re.S):
        files[path] = None if status == "removed" else apply_patch(files.get(path) or "", patch)
    assert {p: files.get(p) for p in post_contents(record)} == post_contents(record)
