"""What updates the weights: AdamW with MAR's weight-decay exclusions, per-module lr
multipliers, warm-up + cosine, and the EMA of the weights.

MAR (`util/misc.py: add_weight_decay`) decays only matrices: biases, norm weights and the
learned embeddings / mask token get no weight decay. The head can train at
`cfg.head.lr_mult` × the base lr; the student's energy head gets no weight decay at all.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from energytta.config import Config
from energytta.errors import UserError

# parameters named like this are embeddings/tokens even when they are >= 2-D
_NO_DECAY_NAMES = ("pos", "mask_token", "null_text", "embedding", "cls_token")


def _no_decay(name: str, param: nn.Parameter, embedding_params: set[int]) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return (param.ndim < 2 or id(param) in embedding_params
            or any(k in leaf for k in _NO_DECAY_NAMES))


def param_groups(model: nn.Module, cfg: Config, extra: Any = None) -> list[dict[str, Any]]:
    """Split the trainable parameters into AdamW groups.

    Each group carries `lr_mult` (the scheduler multiplies the base lr by it) and its
    `weight_decay`. Group order and membership are deterministic (named_parameters order),
    so an optimizer state saved by one run loads into the next.

    Args:
        model: the raw TTAModel (`.head` is the per-token head).
        cfg: uses train.weight_decay, head.lr_mult, head.kind.
        extra: the objective; if it is an nn.Module its trainable parameters (e.g. the
            student's feature projections, the LoRA teacher) join at the base lr times
            its `extra_lr_mult` (default 1).
    """
    named = list(model.named_parameters())
    if isinstance(extra, nn.Module):
        named += [(f"objective.{n}", p) for n, p in extra.named_parameters()]
    extra_mult = float(getattr(extra, "extra_lr_mult", 1.0))  # e.g. the LoRA teacher's
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        is_head = name.startswith("head.")
        lr_mult = cfg.head.lr_mult if is_head else 1.0
        if name.startswith("objective."):
            lr_mult = extra_mult
        no_wd = _no_decay(name, p, embedding_params) or (is_head and cfg.head.kind == "energy")
        wd = 0.0 if no_wd else cfg.train.weight_decay
        groups.setdefault((lr_mult, wd), []).append(p)
    return [{"params": ps, "lr": cfg.train.lr * mult, "lr_mult": mult, "weight_decay": wd}
            for (mult, wd), ps in groups.items()]


class WarmupSchedule:
    """lr factor at optimizer step s: linear warm-up, then cosine to min_lr (or constant).

    A callable object (not a lambda) so `LambdaLR.state_dict()` stores its settings.
    """

    def __init__(self, warmup_steps: int, total_steps: int, kind: str, min_ratio: float) -> None:
        if kind not in ("cosine", "constant"):
            raise UserError(f"train.schedule must be 'cosine' or 'constant', got '{kind}'")
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.kind, self.min_ratio = kind, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: Config, extra: Any = None
                    ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over `param_groups(model, cfg, extra)` and its LambdaLR (one step per update)."""
    t = cfg.train
    groups = param_groups(model, cfg, extra)
    if not groups:
        raise UserError("no trainable parameters (distill.freeze_backbone with a frozen "
                        "head?); unfreeze something to train")
    opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    base = WarmupSchedule(t.warmup_steps, t.steps, t.schedule, t.min_lr / t.lr if t.lr else 0.0)
    # every group follows the same curve; its lr_mult is already in its initial lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [base] * len(groups))
    return opt, sched


def keep_config_schedule(sched: torch.optim.lr_scheduler.LambdaLR,
                         settings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Put the config's schedule back after `LambdaLR.load_state_dict`.

    Loading restores the saved run's `WarmupSchedule` settings too, so a run resumed with a
    larger `train.steps` (to train longer) would stay at min_lr. `settings` are the
    config's (`vars()` of the fresh lambdas, taken before loading). Sets each group's lr
    for the next step from them; returns the saved settings if they differed, else None.
    """
    saved = dict(vars(sched.lr_lambdas[0]))
    if all(vars(f) == s for f, s in zip(sched.lr_lambdas, settings)):
        return None
    for f, s in zip(sched.lr_lambdas, settings):
        f.__dict__.update(s)
    for group, base, f in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * f(sched.last_epoch)
    return saved


# ------------------------------------------------------------------------------ EMA
# Exponential moving average of the weights, kept in fp32 (MAR `ema_params`, ema_rate).
#
# torch's `AveragedModel` holds the copy and counts the updates; `get_ema_multi_avg_fn`
# does the averaging (one foreach lerp). The copy is a full module (gradients off, eval
# mode), so it can be sampled from, saved with `state_dict()` (the model's own keys: what
# `ema.safetensors` holds) and loaded into a fresh TTAModel. Buffers are copied,
# not averaged (they are statistics or constants, not weights). The trained weights are
# fp32 (mixed precision autocasts, it does not cast them), as the lerp needs one dtype.
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
