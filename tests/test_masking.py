"""Mask-ratio sampler, random orders, training masks and the cosine decoding schedule."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from energytta.config import load_config
from energytta.errors import UserError
from energytta.masking import (cosine_num_masked, mask_by_order, random_orders,
                               sample_mask_ratio, training_mask)


def _draws(n: int, min_ratio: float = 0.7, std: float = 0.25, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return [sample_mask_ratio(min_ratio, std, g) for _ in range(n)]


@pytest.mark.parametrize("min_ratio,std", [(0.7, 0.25), (0.5, 0.3)])
def test_mask_ratio_follows_mar_truncnorm(min_ratio, std):
    ref = stats.truncnorm((min_ratio - 1.0) / std, 0, loc=1.0, scale=std)  # MAR's generator
    draws = _draws(3000, min_ratio, std)
    assert min(draws) >= min_ratio and max(draws) <= 1.0
    mean = sum(draws) / len(draws)
    assert abs(mean - ref.mean()) < 4 * ref.std() / math.sqrt(len(draws))
    assert min(draws) < min_ratio + 0.02  # the whole range is reached
    assert stats.kstest(draws, ref.cdf).pvalue > 1e-3


def test_mask_ratio_is_seeded_and_checks_its_arguments():
    assert _draws(5, seed=3) == _draws(5, seed=3)
    assert _draws(5, seed=3) != _draws(5, seed=4)
    assert _draws(3, min_ratio=1.0) == [1.0, 1.0, 1.0]
    with pytest.raises(UserError, match="mask_ratio_min"):
        _draws(1, min_ratio=0.0)
    with pytest.raises(UserError, match="mask_ratio_std"):
        _draws(1, std=0.0)


def test_random_orders_are_seeded_permutations():
    g = torch.Generator().manual_seed(0)
    orders = random_orders(8, 50, g, "cpu")
    assert orders.dtype == torch.long and orders.shape == (8, 50)
    assert torch.equal(orders.sort(1).values, torch.arange(50).expand(8, 50))
    assert len({tuple(o.tolist()) for o in orders}) == 8  # rows are independent
    assert torch.equal(random_orders(8, 50, torch.Generator().manual_seed(0)), orders)


def test_mask_by_order_masks_the_first_positions_of_each_order():
    orders = torch.tensor([[3, 1, 0, 2], [0, 1, 2, 3]])
    assert mask_by_order(orders, 2).tolist() == [[False, True, False, True],
                                                 [True, True, False, False]]
    per_row = mask_by_order(orders, torch.tensor([0, 3]))
    assert per_row.tolist() == [[False] * 4, [True, True, True, False]]
    assert mask_by_order(orders, 4).all()


def test_training_mask_counts():
    cfg = load_config("tiny").model
    g = torch.Generator().manual_seed(0)
    N = 40
    for _ in range(50):
        mask = training_mask(6, N, cfg, g, "cpu")
        counts = mask.sum(1)
        assert (counts == counts[0]).all()  # one ratio per batch, as MAR
        assert math.ceil(N * cfg.mask_ratio_min) <= counts[0] <= N
    assert training_mask(3, 1, cfg, g).sum() == 3  # at least one masked token per row
    first = training_mask(4, N, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(training_mask(4, N, cfg, torch.Generator().manual_seed(7)), first)


@pytest.mark.parametrize("N,iterations", [(160, 64), (160, 8), (40, 4), (5, 16), (1, 3), (500, 1)])
def test_cosine_schedule_is_monotone_and_finishes(N, iterations):
    left = [cosine_num_masked(s, iterations, N) for s in range(iterations)]
    assert left[-1] == 0
    before = [N] + left[:-1]
    for prev, now in zip(before, left):
        assert now <= prev
        assert now < prev or prev == 1  # a token is revealed each step while more than one is left
    assert all(x >= 1 for x in left[:-1])  # nothing is finished early


def test_cosine_schedule_matches_mar_formula_where_unclamped():
    N, iterations = 256, 16  # few steps: consecutive counts differ, the clamp never binds
    for s in range(iterations - 1):
        mar = math.floor(N * math.cos(math.pi / 2 * (s + 1) / iterations))
        if mar >= 1:
            assert cosine_num_masked(s, iterations, N) == mar
    with pytest.raises(UserError, match="iterations"):
        cosine_num_masked(0, 0, 10)
    with pytest.raises(ValueError):
        cosine_num_masked(4, 4, 10)
