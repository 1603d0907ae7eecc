"""Test-time-scaling selectors (forge_ray/tts/selectors.py) on hand-built candidates whose
winners, confidences and best-of-n rates are worked out by hand."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from forge_ray.tts.selectors import (SELECTORS, Candidate, CurvePoint, agent_confidence, agent_token_vote,
                                     best_of_n_curve, confidence_vote, env_token_vote, first, format_curve,
                                     from_trajectory, majority, mean_logprob, normalise_calls, normalise_patch,
                                     select, token_confidence, tournament, trace_confidence)
from forge_ray.types import RewardBreakdown, Status, ToolCall, Trajectory, Turn

PEAKED = [-0.01, -5.0, -6.0]  # C = -(1/3)(-0.01 - 5 - 6) = 11.01 / 3 = 3.67
FLAT = [-1.1, -1.1, -1.1]     # C = -(1/3)(-3.3) = 1.1


def cands(*answers, start=10):
    """Candidates with ``index`` = start + position, so positions and indices differ."""
    return [Candidate(index=start + i, answer=a) for i, a in enumerate(answers)]


# ---------------------------------------------------------------- confidence


def test_token_confidence_by_hand():
    assert token_confidence(PEAKED, k=3) == pytest.approx(11.01 / 3)
    assert token_confidence(FLAT, k=3) == pytest.approx(1.1)
    # k keeps the k largest logprobs whatever their order: [-0.01, -5, -6] of the four
    assert token_confidence([-6.0, -20.0, -0.01, -5.0], k=3) == pytest.approx(11.01 / 3)
    # fewer than k given: average over what is there
    assert token_confidence(PEAKED, k=100) == pytest.approx(11.01 / 3)
    assert math.isnan(token_confidence([], k=3))
    # peaked distribution => larger confidence (the sign of C)
    assert token_confidence(PEAKED) > token_confidence(FLAT) > 0


def test_trace_confidence_averages_tokens_and_skips_empty():
    # (3.67 + 1.1) / 2 = 2.385; the empty entry is skipped
    assert trace_confidence([PEAKED, [], FLAT], k=3) == pytest.approx((11.01 / 3 + 1.1) / 2)
    assert trace_confidence([], k=3) == -math.inf
    assert trace_confidence([[], []], k=3) == -math.inf


def test_agent_confidence_picks_peaked_and_mean_logprob_disagrees():
    flat = Candidate(index=0, answer="x", logprobs=[-0.2, -0.4], topk=[FLAT, FLAT])          # C_avg 1.1, AvgLogP -0.3
    peaked = Candidate(index=1, answer="y", logprobs=[-1.0, -0.5], topk=[PEAKED, PEAKED])    # C_avg 3.67, AvgLogP -0.75
    assert agent_confidence([flat, peaked], k=3) == 1
    assert agent_confidence([peaked, flat], k=3) == 1
    assert mean_logprob([flat, peaked]) == 0
    # equal confidence: the earliest wins
    twin = Candidate(index=7, answer="z", topk=[PEAKED, PEAKED])
    assert agent_confidence([twin, peaked], k=3) == 7
    # no top-k at all scores -inf and loses to anything that has some
    assert agent_confidence([Candidate(index=3, answer="w"), flat], k=3) == 0


def test_agent_confidence_uses_agent_tokens_only():
    # env_topk is peaked for a, but Agent Confidence reads only the sampled tokens' top-k
    a = Candidate(index=0, answer="a", topk=[FLAT], env_topk=[PEAKED] * 5)
    b = Candidate(index=1, answer="b", topk=[PEAKED], env_topk=[FLAT])
    assert agent_confidence([a, b], k=3) == 1


def test_mean_logprob():
    cs = [Candidate(index=0, answer="a", logprobs=[-1.0, -1.0]),            # -1.0
          Candidate(index=1, answer="b", logprobs=[-0.5, 0.0]),             # -0.25
          Candidate(index=2, answer="c", logprobs=[]),                      # -inf
          Candidate(index=3, answer="d", logprobs=[-0.25])]                 # -0.25, tie: index 1 is earlier
    assert mean_logprob(cs) == 1


# ---------------------------------------------------------------- voting


def test_majority_and_ties():
    assert majority(cands("x", "y", "y")) == 11
    # b:2, a:2 -> tie goes to the answer seen first ("b", at index 10)
    assert majority(cands("b", "a", "a", "b", "c")) == 10
    assert majority(cands("a", "b", "c")) == 10
    assert majority(cands("c", "a", "b", "a")) == 11
    with pytest.raises(ValueError):
        majority([])


def test_confidence_vote_agent_versus_env_tokens():
    # answers A, A, B. Agent tokens: A's are flat (1.1 + 1.1 = 2.2), B peaked (3.67) -> B.
    # Environment tokens: A's peaked (3.67 * 2 = 7.34), B flat (1.1) -> A. Plain majority -> A.
    cs = [Candidate(index=0, answer="A", topk=[FLAT], env_topk=[PEAKED]),
          Candidate(index=1, answer="A", topk=[FLAT], env_topk=[PEAKED]),
          Candidate(index=2, answer="B", topk=[PEAKED], env_topk=[FLAT])]
    assert majority(cs) == 0
    assert agent_token_vote(cs, k=3) == 2
    assert confidence_vote(cs, k=3, tokens="agent") == 2
    assert env_token_vote(cs, k=3) == 0
    # three flat A votes: 3.3 < 3.67 -> still B
    more = cs + [Candidate(index=3, answer="A", topk=[FLAT])]
    assert agent_token_vote(more, k=3) == 2
    # four flat A votes (4.4) > 3.67 -> A (earliest A candidate)
    assert agent_token_vote(more + [Candidate(index=4, answer="A", topk=[FLAT])], k=3) == 0
    # no confidence anywhere: plain majority
    assert env_token_vote(cands("b", "a", "a"), k=3) == 11
    with pytest.raises(ValueError):
        confidence_vote(cs, tokens="both")


# ---------------------------------------------------------------- tournament


def lower_answer_wins(a: Candidate, b: Candidate) -> int:
    return 0 if a.answer <= b.answer else 1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tournament_finds_global_best_with_n_minus_1_calls(seed):
    cs = cands("d", "b", "e", "a", "c")  # odd count: byes
    winner, calls = tournament(cs, lower_answer_wins, seed=seed)
    assert (winner, calls) == (13, 4)


@pytest.mark.parametrize("n", range(1, 10))
def test_tournament_calls_for_every_n(n):
    answers = [f"{(7 * i) % n:02d}-{i}" for i in range(n)]  # a scrambled order
    best = min(range(n), key=lambda i: answers[i])
    assert tournament(cands(*answers, start=0), lower_answer_wins, seed=5) == (best, n - 1)


def test_tournament_judge_contract_and_select():
    cs = cands("b", "a")
    with pytest.raises(ValueError):
        tournament(cs, lambda a, b: 2)
    assert select("tournament", cs, judge=lower_answer_wins) == 11  # call count dropped
    with pytest.raises(KeyError):
        select("nope", cs)


# ---------------------------------------------------------------- registry and curve


def test_registry():
    assert set(SELECTORS) == {"first", "majority", "mean_logprob", "agent_confidence", "agent_token_vote",
                              "env_token_vote", "tournament"}
    cs = cands("x", "y", "y")
    assert select("majority", cs) == 11
    assert select("first", cs) == first(cs) == 10


def grid():
    # task 1: p q q r with rewards 0 1 1 0 ; task 2: s t t t -> 1 0 0 0 ; task 3: u v v w -> 0 1 1 0
    rows = [[("p", 0.0), ("q", 1.0), ("q", 1.0), ("r", 0.0)],
            [("s", 1.0), ("t", 0.0), ("t", 0.0), ("t", 0.0)],
            [("u", 0.0), ("v", 1.0), ("v", 1.0), ("w", 0.0)]]
    return [[(Candidate(index=i, answer=a), r) for i, (a, r) in enumerate(row)] for row in rows]


def test_best_of_n_curve_majority_by_hand():
    # n=1: picks p, s, u -> 0 1 0 = 1/3; pass@1 = 1/3
    # n=2: ties p|q, s|t, u|v -> earliest p, s, u -> 1/3; pass@2 = 3/3
    # n=4: q, t, v -> 1 0 1 = 2/3; pass@4 = 3/3.   n=8 > 4 candidates: left out
    points = best_of_n_curve(grid(), "majority", ns=(1, 2, 4, 8))
    assert [p.n for p in points] == [1, 2, 4]
    assert [p.rate for p in points] == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    assert [p.oracle for p in points] == pytest.approx([1 / 3, 1.0, 1.0])
    assert all(p.tasks == 3 for p in points)
    assert isinstance(points[0], CurvePoint)
    # "first" always picks candidate 0: 0 1 0 at every n
    assert [p.rate for p in best_of_n_curve(grid(), first, ns=(1, 2, 4))] == pytest.approx([1 / 3] * 3)
    table = format_curve(points, "majority")
    assert "pass@n" in table and len(table.splitlines()) == 4


def test_best_of_n_curve_rewards_correct_and_kwargs():
    # RewardBreakdown rewards, a stricter ``correct`` and a selector needing kwargs
    groups = [[(c, RewardBreakdown(total=r)) for c, r in row] for row in grid()]
    groups[1][0] = (groups[1][0][0], RewardBreakdown(total=0.4))  # s now partial credit
    pts = best_of_n_curve(groups, "majority", ns=(1, 4))
    assert [p.rate for p in pts] == pytest.approx([1 / 3, 2 / 3])  # default: total > 0
    strict = best_of_n_curve(groups, "majority", ns=(1, 4), correct=lambda r: r.total >= 0.5)
    assert [p.rate for p in strict] == pytest.approx([0.0, 2 / 3])
    assert [p.oracle for p in strict] == pytest.approx([0.0, 2 / 3])  # task 2 has no correct one left
    # tournament (lower answer wins): n=4 picks p, s, u -> 0 0.4 0
    pts = best_of_n_curve(groups, "tournament", ns=(4,), judge=lower_answer_wins)
    assert pts[0].rate == pytest.approx(1 / 3)
    dup = [[(Candidate(index=0, answer="a"), 1.0), (Candidate(index=0, answer="b"), 0.0)]]
    with pytest.raises(ValueError):
        best_of_n_curve(dup, "majority", ns=(2,))
    assert best_of_n_curve([], "majority") == []


# ---------------------------------------------------------------- normalisers


PATCH_1 = """diff --git a/pkg/b.py b/pkg/b.py
index 1111111..2222222 100644
--- a/pkg/b.py
+++ b/pkg/b.py
@@ -1,3 +1,3 @@
 def f():
-    return 1
+    return 2

diff --git a/pkg/a.py b/pkg/a.py
index 3333333..4444444 100644
--- a/pkg/a.py
+++ b/pkg/a.py
@@ -10,2 +10,3 @@ class A:
     x = 1
+    y = 2
"""

# same edits: files swapped, other index hashes, trailing spaces, an extra blank line added,
# a whitespace-only edit of "x = 1", shifted hunk numbers, CRLF line ends, no final newline
PATCH_2 = ("diff --git a/pkg/a.py b/pkg/a.py\r\n"
           "index 9999999..8888888 100644\r\n"
           "--- a/pkg/a.py\r\n"
           "+++ b/pkg/a.py\r\n"
           "@@ -12,2 +12,4 @@ class A:\r\n"
           "-    x = 1\r\n"
           "+    x = 1   \r\n"
           "+\r\n"
           "+    y = 2\r\n"
           "diff --git a/pkg/b.py b/pkg/b.py\r\n"
           "index 7777777..6666666\r\n"
           "--- a/pkg/b.py\r\n"
           "+++ b/pkg/b.py\r\n"
           "@@ -1,2 +1,2 @@\r\n"
           " def f():  \r\n"
           "-    return 1\r\n"
           "+    return 2 \r\n"
           "\\ No newline at end of file")


def test_normalise_patch_equal_up_to_index_whitespace_and_order():
    assert normalise_patch(PATCH_1) == normalise_patch(PATCH_2)
    n = normalise_patch(PATCH_1)
    assert "index" not in n and n.index("file pkg/a.py") < n.index("file pkg/b.py")
    # a real change and an indentation change both stay different
    assert normalise_patch(PATCH_1.replace("+    return 2", "+    return 3")) != n
    assert normalise_patch(PATCH_1.replace("+    return 2", "+  return 2")) != n
    # majority over normalised patches counts PATCH_1 and PATCH_2 as the same vote
    other = "diff --git a/c.py b/c.py\n--- a/c.py\n+++ b/c.py\n@@ -1 +1 @@\n-a\n+b\n"
    cs = [Candidate(index=0, answer=normalise_patch(other)),
          Candidate(index=1, answer=normalise_patch(PATCH_1)),
          Candidate(index=2, answer=normalise_patch(PATCH_2))]
    assert majority(cs) == 1


def test_normalise_patch_plain_headers_deletions_and_noops():
    plain = ("--- a/z.py\t2024-01-01\n+++ b/z.py\t2024-01-02\n@@ -1 +1 @@\n-a\n+b\n"
             "--- a/y.py\n+++ b/y.py\n@@ -1 +1 @@\n-c\n+d\n")
    assert normalise_patch(plain) == "file y.py\n@@\n-c\n+d\nfile z.py\n@@\n-a\n+b"
    deleted = ("diff --git a/old.py b/old.py\ndeleted file mode 100644\nindex 1..0\n"
               "--- a/old.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n")
    assert normalise_patch(deleted) == "file old.py\ndeleted file mode 100644\n@@\n-x"
    # a whitespace-only patch normalises to nothing
    assert normalise_patch("--- a/q.py\n+++ b/q.py\n@@ -1 +1,2 @@\n-x = 1\n+x = 1  \n+\n") == ""
    assert normalise_patch("") == ""


def test_normalise_calls():
    a = [{"name": "book", "arguments": {"seat": "1A", "flight": 7}}, ToolCall("pay", {"amount": 3, "card": "x"})]
    b = [("pay", '{"card": "x", "amount": 3}'), {"name": "book", "arguments": {"flight": 7, "seat": "1A"}}]
    assert normalise_calls(a) == normalise_calls(b)
    assert normalise_calls(a) == ('[{"arguments":{"flight":7,"seat":"1A"},"name":"book"},'
                                  '{"arguments":{"amount":3,"card":"x"},"name":"pay"}]')
    assert normalise_calls([ToolCall("pay", {"amount": 4, "card": "x"})]) != normalise_calls([a[1]])
    assert normalise_calls([]) == "[]"
    assert normalise_calls([("f", "not json")]) == '[{"arguments":"not json","name":"f"}]'


# ---------------------------------------------------------------- trajectories


def test_from_trajectory():
    traj = Trajectory(task_id="t", group_id="g", sample_index=5, prompt_len=3, tokens=list(range(10)),
                      logprobs=[0, 0, 0, -0.5, -0.25, 0, 0, -1.0, -0.5, -0.75],
                      loss_mask=[0, 0, 0, 1, 1, 0, 0, 1, 1, 1],
                      turns=[Turn(3, 5, 0, "stop"), Turn(7, 10, 0, "stop")], status=Status.OK,
                      messages=[{"role": "assistant", "content": "done"}])
    c = from_trajectory(traj, lambda t: t.messages[-1]["content"], topk=[PEAKED] * 5)
    assert (c.index, c.answer, c.agent_tokens, c.env_tokens) == (5, "done", 5, 2)
    assert c.logprobs == [-0.5, -0.25, -1.0, -0.5, -0.75] and c.env_topk == []
    assert mean_logprob([c]) == 5


def test_no_torch_or_vllm_import():
    code = "import sys, forge_ray.tts.selectors; print(sorted(m for m in ('torch', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
