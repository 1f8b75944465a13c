"""Exponential moving average of the weights, kept in fp32 (MAR `ema_params`, ema_rate).

torch's `AveragedModel` holds the copy and counts the updates; `get_ema_multi_avg_fn`
does the averaging (one foreach lerp). The copy is a full module (gradients off, eval
mode), so it can be sampled from, saved with `state_dict()` (the model's own keys: what
`ema.safetensors` holds) and loaded into a fresh TTAModel. Buffers are copied,
not averaged (they are statistics or constants, not weights). The trained weights are
fp32 (mixed precision autocasts, it does not cast them), as the lerp needs one dtype.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


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
        self._avg = AveragedModel(model, multi_avg_fn=self._lerp, use_buffers=False)
        self.module = self._avg.module.float().eval().requires_grad_(False)
        # AveragedModel's first update copies the weights: the EMA starts at the model,
        # and its counter then reads 1 + the number of averaging updates
        self._avg.update_parameters(model)

    @property
    def num_updates(self) -> int:
        """Averaging updates so far (`ema_updates` in a run's state.json)."""
        return int(self._avg.n_averaged) - 1

    @num_updates.setter
    def num_updates(self, n: int) -> None:
        self._avg.n_averaged.fill_(int(n) + 1)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    def _lerp(self, ema: list[torch.Tensor], params: list[torch.Tensor], _n: torch.Tensor
              ) -> None:
        """ema <- ema + (1 − d)·(θ − ema), with d this update's decay."""
        get_ema_multi_avg_fn(self.current_decay())(ema, params, _n)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- d·ema + (1 − d)·θ for every parameter; buffers are copied."""
        self._avg.update_parameters(model)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.module.load_state_dict(state, strict=True)
        self.num_updates = num_updates
