"""Step-wise tool-call reward (Klear-AgentForge Eq. 8) on hand-worked episodes."""
import pytest

from forge_ray.reward.stepwise import calls_match, one_call_per_turn, stepwise_rewards
from forge_ray.types import ToolCall

ADD = {"name": "add", "arguments": {"a": 3, "b": 4}}
MUL = {"name": "mul", "arguments": {"a": 7, "b": 2}}
GOLD = one_call_per_turn([ADD, MUL])  # add(3, 4) = 7, then mul(7, 2) = 14, then "Answer: 14"


def test_expert_episode_earns_every_turn():
    # turns: add(3,4) ok -> 1; mul(7,2) ok -> 1; answer turn -> outcome 1
    model = [[ToolCall("add", {"a": 3, "b": 4})], [ToolCall("mul", {"b": 2, "a": 7})], []]
    assert stepwise_rewards(GOLD, model, outcome=1.0) == [1.0, 1.0, 1.0]


def test_wrong_argument_breaks_the_prefix_on_policy():
    # add(3,5): wrong b -> 0; mul(7,2) would match, but the model's context is no longer the
    # gold prefix -> 0; answer turn after a broken prefix -> 0 even with outcome 1
    model = [[ToolCall("add", {"a": 3, "b": 5})], [ToolCall("mul", {"a": 7, "b": 2})], []]
    assert stepwise_rewards(GOLD, model, outcome=1.0) == [0.0, 0.0, 0.0]
    # judged each against the gold prefix (teacher-forced): turn 2 matches on its own -> 1,
    # and the answer turn gets the outcome
    assert stepwise_rewards(GOLD, model, outcome=1.0, require_prefix=False) == [0.0, 1.0, 1.0]


def test_late_miss_keeps_earlier_credit():
    # add ok -> 1; mul with wrong name -> 0; a retry turn (k=2 is the answer position) -> 0
    model = [[ToolCall("add", {"a": 3, "b": 4})], [ToolCall("sub", {"a": 7, "b": 2})], [ToolCall("mul", {"a": 7, "b": 2})], []]
    assert stepwise_rewards(GOLD, model, outcome=0.0) == [1.0, 0.0, 0.0, 0.0]


def test_extra_or_missing_calls_and_unparsed_turns():
    two = [ToolCall("add", {"a": 3, "b": 4}), ToolCall("add", {"a": 3, "b": 4})]
    assert stepwise_rewards(GOLD, [two]) == [0.0]  # two calls where one is gold
    assert stepwise_rewards(GOLD, [None, [ToolCall("mul", {"a": 7, "b": 2})]]) == [0.0, 0.0]  # unparsed turn
    assert stepwise_rewards(GOLD, [[ADD]]) == [1.0]  # episode cut short: only the turns played
    assert stepwise_rewards(GOLD, []) == []
    # more turns than gold + answer: the answer position earns the outcome, beyond it 0
    model = [[ADD], [MUL], [], []]
    assert stepwise_rewards(GOLD, model, outcome=0.5) == [1.0, 1.0, 0.5, 0.0]


def test_parallel_calls_match_as_a_multiset():
    gold = [[ADD, MUL]]
    assert calls_match([ToolCall("mul", {"a": 7, "b": 2}), ToolCall("add", {"a": 3, "b": 4})], gold[0])
    assert not calls_match([ToolCall("mul", {"a": 7, "b": 2}), ToolCall("mul", {"a": 7, "b": 2})], gold[0])
    assert not calls_match([ToolCall("add", {"a": 3, "b": 4, "c": 0}), ToolCall("mul", {"a": 7, "b": 2})], gold[0])
    assert not calls_match([], [])  # a turn without gold calls is not a tool turn
    assert stepwise_rewards(gold, [[ToolCall("mul", {"a": 7, "b": 2}), ToolCall("add", {"a": 3, "b": 4})], []], outcome=1.0) == [1.0, 1.0]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a 'name'"):
        stepwise_rewards([[{"arguments": {}}]], [[ADD]])
    with pytest.raises(TypeError, match="ToolCall or a mapping"):
        stepwise_rewards(GOLD, [["add"]])
    with pytest.raises(TypeError, match="sequences"):
        stepwise_rewards("add", [])
