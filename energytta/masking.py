"""Masking for training and sampling, seeded by a `torch.Generator` (MAR, Li et al. 2024).

- Training: one mask ratio per batch from a left-truncated Gaussian centred at 1
  (MAR: `scipy.stats.truncnorm((min - 1) / std, 0, loc=1, scale=std)`), a random order
  per row, and the first ceil(N·ratio) positions of each order masked.
- Sampling: MaskGIT/MAR cosine schedule; `cosine_num_masked` says how many tokens are
  still masked after each step.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from energytta.config_rules import check_value
from energytta.errors import UserError


def sample_mask_ratio(min_ratio: float, std: float, generator: torch.Generator) -> float:
    """One draw from N(1, std²) truncated to [min_ratio, 1] (MAR's mask-ratio generator).

    Inverse-CDF sampling: u ~ U(0, 1) is mapped into [Φ(a), Φ(0)] with a = (min - 1)/std,
    then x = Φ⁻¹(·) and ratio = 1 + std·x. Same law as scipy's truncnorm, no scipy needed.

    Args:
        min_ratio: lower bound in (0, 1] (`model.mask_ratio_min`).
        std: scale of the Gaussian, > 0 (`model.mask_ratio_std`).
        generator: torch generator for the uniform draw.
    """
    check_value("model.mask_ratio_min", min_ratio)
    check_value("model.mask_ratio_std", std)
    return _truncnorm_ratio(min_ratio, std, generator)


def _truncnorm_ratio(min_ratio: float, std: float, generator: torch.Generator) -> float:
    """`sample_mask_ratio` on arguments already checked (a loaded config's)."""
    u = torch.rand((), generator=generator, device=generator.device, dtype=torch.float64)
    lo = torch.special.ndtr(torch.tensor((min_ratio - 1.0) / std, dtype=torch.float64))
    hi = 0.5  # Φ(0): the upper end of the truncation is the mean, ratio = 1
    x = torch.special.ndtri(lo + u.cpu() * (hi - lo))
    return float(min(max(1.0 + std * float(x), min_ratio), 1.0))


def random_orders(B: int, N: int, generator: torch.Generator,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(B, N) long: an independent uniform random permutation of range(N) per row.

    Args:
        B, N: rows and sequence length.
        generator: draws the noise that is argsorted (on the generator's device).
        device: where the result lives (default: the generator's device).
    """
    noise = torch.rand(B, N, generator=generator, device=generator.device)
    return torch.argsort(noise, dim=1).to(device or generator.device)


def mask_by_order(orders: torch.Tensor, num_masked: int | torch.Tensor) -> torch.Tensor:
    """(B, N) bool mask: the first `num_masked` positions of each row's order are True.

    Args:
        orders: (B, N) long permutations (from `random_orders`).
        num_masked: one count for all rows, or a (B,) tensor of per-row counts.
    """
    B, N = orders.shape
    k = torch.as_tensor(num_masked, device=orders.device).reshape(-1, 1)  # (1|B, 1)
    by_rank = (torch.arange(N, device=orders.device)[None] < k).expand(B, N)
    return torch.zeros(B, N, dtype=torch.bool, device=orders.device).scatter(1, orders, by_rank)


def training_mask(B: int, N: int, model_cfg: Any, generator: torch.Generator,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """MAR's training mask: one ratio per batch, ceil(N·ratio) masked (at least 1, at most N).

    Args:
        B, N: rows and tokens per row.
        model_cfg: `Config.model` (mask_ratio_min, mask_ratio_std).
        generator: all draws come from it; device: where the mask lives.
    Returns (B, N) bool, True = masked.
    """
    # a loaded config's ranges were checked by the config rules: no check per step
    ratio = _truncnorm_ratio(model_cfg.mask_ratio_min, model_cfg.mask_ratio_std, generator)
    return ratio_mask(B, N, ratio, generator, device)


def ratio_mask(B: int, N: int, ratio: float, generator: torch.Generator,
               device: torch.device | str | None = None) -> torch.Tensor:
    """(B, N) bool: ceil(N·ratio) positions of each row's random order masked (1 to N)."""
    num = min(max(math.ceil(N * ratio), 1), N)
    return mask_by_order(random_orders(B, N, generator, device), num)


def cosine_num_masked(step: int, iterations: int, N: int) -> int:
    """Tokens still masked after decoding step `step` (0-based) of `iterations` (MAR/MaskGIT).

    mask_len = floor(N·cos(π/2·(step+1)/iterations)), clamped as in MAR so that each step
    reveals at least one token and at least one stays masked until the last step, which
    reveals everything (returns 0). When fewer tokens than steps remain, the last masked
    token waits for the final step.

    Args:
        step: 0 <= step < iterations.
        iterations: number of decoding steps, >= 1.
        N: tokens in the sequence.
    """
    if iterations < 1:
        raise UserError(f"sample.iterations must be >= 1, got {iterations}")
    if not 0 <= step < iterations:
        raise ValueError(f"step {step} is outside [0, {iterations})")
    if N <= 0:
        return 0
    remaining = N
    for s in range(step + 1):  # MAR clamps against the count left by the previous step
        if s == iterations - 1:
            return 0
        target = math.floor(N * math.cos(math.pi / 2.0 * (s + 1) / iterations))
        remaining = max(1, min(remaining - 1, target))
    return remaining
