"""Exponential moving average of the weights, kept in fp32 (MAR `ema_params`, ema_rate).

The EMA copy is a full module (a deep copy of the raw model, gradients off, eval mode),
so it can be sampled from, saved with `state_dict()` and loaded into a fresh TTAModel.
Buffers are copied, not averaged (they are statistics or constants, not weights).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """EMA of a model's parameters.

    Args:
        model: the raw (unwrapped) model being trained.
        decay: the target decay (cfg.train.ema_decay).
        warmup: use `min(decay, (1 + n) / (10 + n))` after n updates (the warm-up of
            diffusers' `EMAModel` / TF's `ExponentialMovingAverage(num_updates)`), so that a
            short run's EMA is not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = float(decay), warmup
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- d·ema + (1 − d)·θ for every parameter; buffers are copied."""
        d = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach().float(), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.module.load_state_dict(state, strict=True)
        self.num_updates = num_updates
