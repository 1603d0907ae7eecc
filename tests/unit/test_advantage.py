"""Unit tests for forge_ray.learner.advantage. Expected values are derived by hand in comments."""
import math

import pytest
import torch

from forge_ray.learner.advantage import group_advantages, turn_credit


def test_single_group_sample_std():
    # rewards [1,0,0,1]: mean = 0.5, deviations = [+.5,-.5,-.5,+.5]
    # sample var = (4 * 0.25) / (4 - 1) = 1/3, std = sqrt(1/3) = 0.577350
    # A = ±0.5 / 0.577350 = ±sqrt(3)/2 = ±0.866025
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    g = torch.tensor([0, 0, 0, 0])
    a = math.sqrt(3) / 2
    torch.testing.assert_close(group_advantages(r, g), torch.tensor([a, -a, -a, a]), atol=1e-5, rtol=0)


def test_sample_not_population_std():
    # rewards [0,1,2]: mean 1, deviations [-1,0,1]
    # sample var = (1 + 0 + 1) / 2 = 1 -> std 1 -> A = [-1, 0, 1]
    # (population std would be sqrt(2/3) = 0.8165 -> A = ±1.2247, which must NOT be what we get)
    r = torch.tensor([0.0, 1.0, 2.0])
    g = torch.tensor([5, 5, 5])
    torch.testing.assert_close(group_advantages(r, g, eps=0.0), torch.tensor([-1.0, 0.0, 1.0]))


def test_interleaved_groups_singleton_and_zero_variance():
    # group 0 -> indices 0,3: rewards [0,3], mean 1.5, dev ±1.5,
    #   sample var = (2.25 + 2.25) / 1 = 4.5, std = 2.121320, A = ±1.5/2.121320 = ±0.707107
    # group 7 -> indices 1,4,5: rewards [2,2,2]: zero variance -> 0
    # group 3 -> index 2: single sample -> 0
    r = torch.tensor([0.0, 2.0, 4.0, 3.0, 2.0, 2.0])
    g = torch.tensor([0, 7, 3, 0, 7, 7])
    s = 1 / math.sqrt(2)
    expected = torch.tensor([-s, 0.0, 0.0, s, 0.0, 0.0])
    out = group_advantages(r, g)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert out[[1, 2, 4, 5]].eq(0).all()  # exactly zero, not ~1e-7


def test_zero_variance_float_residue_is_exact_zero():
    # mean of three 0.1s need not equal 0.1 in float; still must give exactly 0 (not x/eps)
    r = torch.tensor([0.1, 0.1, 0.1])
    out = group_advantages(r, torch.zeros(3, dtype=torch.long))
    assert torch.equal(out, torch.zeros(3))


def test_no_std_normalisation():
    # [1,0,0,1] with normalize_std=False: A = R - mean = ±0.5
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    out = group_advantages(r, torch.zeros(4, dtype=torch.long), normalize_std=False)
    torch.testing.assert_close(out, torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_group_advantages_sum_to_zero_per_group_and_empty():
    # By construction sum_i (R_i - mean_g) = 0 in each group.
    r = torch.tensor([3.0, -1.0, 4.0, 1.0, 5.0, 9.0])
    g = torch.tensor([1, 2, 1, 2, 1, 2])
    out = group_advantages(r, g)
    assert abs(out[g == 1].sum().item()) < 1e-5 and abs(out[g == 2].sum().item()) < 1e-5
    assert group_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_integer_rewards_give_float():
    out = group_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]), normalize_std=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([0.5, -0.5]))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long))


def test_turn_credit_broadcast_and_per_turn():
    adv = torch.tensor([0.5, -1.0])
    turn_index = torch.tensor([[-1, 0, 0, 1], [0, -1, 1, 1]])
    turn_rewards = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    # row 0: [0.5 + 0 (t=-1), 0.5 + 0.1*1, 0.5 + 0.1*1, 0.5 + 0.1*2] = [0.5, 0.6, 0.6, 0.7]
    # row 1: [-1 + 0.1*0, -1 + 0 (t=-1), -1 + 0.1*4, -1 + 0.1*4]    = [-1, -1, -0.6, -0.6]
    out = turn_credit(adv, turn_index, turn_rewards, weight=0.1)
    expected = torch.tensor([[0.5, 0.6, 0.6, 0.7], [-1.0, -1.0, -0.6, -0.6]])
    torch.testing.assert_close(out, expected)


def test_turn_credit_without_turn_rewards():
    adv = torch.tensor([2.0, -3.0])
    turn_index = torch.tensor([[-1, 0, 1], [0, 0, -1]])
    expected = torch.tensor([[2.0, 2.0, 2.0], [-3.0, -3.0, -3.0]])
    out = turn_credit(adv, turn_index, None, weight=0.5)
    torch.testing.assert_close(out, expected)
    # weight 0 ignores turn_rewards
    torch.testing.assert_close(turn_credit(adv, turn_index, torch.ones(2, 2), 0.0), expected)
    # output is a fresh tensor: writing to it must not touch `adv`
    out[0, 0] = 100.0
    assert adv[0].item() == 2.0
