"""The paper's PR filters, environment-native episodes and the enhancement prompts (no model)."""
import json

import pytest

from forge_ray.data.envnative import episode_file, episode_text
from forge_ray.data.filters import is_bot, pr_drop_reason, python_drop_reason
from forge_ray.data.schema import normalize


def _record(paths, **kw):
    commits = [{"message": "m", "diffs": [{"path": p, "patch": "@@ -1 +1 @@\n-a\n+b"} for p in paths]}]
    return normalize({"repo_name": "org/demo", "commits": commits, **kw})


@pytest.mark.parametrize("author,bot", [("dependabot[bot] <x@y>", True), ("renovate-bot <r@y>", True),
                                        ("pre-commit-ci[bot]", True), ("github-actions <a@b>", True),
                                        ("Robert Botham <rob@example.com>", False), ("Abbott <ab@x>", False), ("", False)])
def test_bot_authors(author, bot):
    assert is_bot(author) is bot


def test_pr_level_filters_name_their_reason():
    assert pr_drop_reason(_record(["a.py"])) is None
    assert pr_drop_reason(_record(["a.py"], merged=False)) == "not_merged"
    assert pr_drop_reason(_record(["a.py"], author="dependabot[bot]")) == "bot_author"
    assert pr_drop_reason(_record(["a.py"]), frozenset({"demo"})) == "eval_repository"
    issue = {"title": "t", "body": "b", "comments": ["c"] * 21}
    assert pr_drop_reason(_record(["a.py"], related_issue=issue)) == "issue_too_many_comments"
    assert pr_drop_reason(_record([])) == "no_edits"


def test_python_subset_needs_one_to_five_python_files_and_nothing_else():
    assert python_drop_reason(_record(["a.py", "README.md", "docs/x.rst"])) is None
    assert python_drop_reason(_record(["a.py", "setup.cfg"])) == "non_python_files"
    assert python_drop_reason(_record(["README.md"])) == "python_files_out_of_range"
    assert python_drop_reason(_record([f"m{i}.py" for i in range(6)])) == "python_files_out_of_range"


def test_episode_file_labels_and_names_bad_lines(tmp_path):
    convo = [{"role": "user", "content": "fix it"}, {"role": "assistant", "content": "THOUGHT: ok"}]
    good = tmp_path / "ep.jsonl"
    good.write_text(json.dumps({"task_id": "a", "package": "p", "resolved": True, "messages": convo}) + "\n"
                    + json.dumps({"task_id": "a", "package": "p", "resolved": False, "messages": convo}) + "\n")
    rows = list(episode_file(good))
    assert [r["passed"] for r in rows] == [True, False] and len({r["id"] for r in rows}) == 2
    assert json.loads(rows[0]["data"]) == convo and rows[0]["subset"] == "env"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "a", "messages": convo, "resolved": True}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2"):
        list(episode_file(bad))


def test_episode_text_is_the_chat_format():
    text = episode_text([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                         {"role": "assistant", "content": "A"}])
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"


def test_enhancement_prompts_carry_the_pr_and_cut_the_patch():
    from forge_ray.data.enhance import PATCH_CHARS, clean, commit_prompt, summary_prompt

    rec = _record(["a.py"], title="Fix total", body="Sum was off", repo_description="stats helpers")
    rec["commits"][0]["diffs"][0]["patch"] = "@@ -1 +1 @@\n" + "+x\n" * 5000
    prompt = summary_prompt(rec)
    assert "org/demo - stats helpers" in prompt and "Fix total" in prompt and "a.py" in prompt
    assert len(commit_prompt("S", rec["commits"][0])) < PATCH_CHARS + 1000
    assert clean("  One. Two. Three. Four. Five.  ", max_sentences=4) == "One. Two. Three. Four."
