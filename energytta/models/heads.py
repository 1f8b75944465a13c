"""Per-token heads: one interface, two implementations (MAR's DiffLoss vs EAR's ScoreLoss).

The backbone and the sampler never branch on the head type; they only call `loss` and
`sample`. Classifier-free guidance is the one place heads differ (see `Head.sample`).
Heads are imported lazily so that sampling with a student never imports diffusion code.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from energytta.errors import UserError

HEAD_KINDS = ("diffusion", "energy")


@runtime_checkable
class Head(Protocol):
    """What the trainer and the sampler need from a head."""

    def loss(self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args:
            z: (B, N, D) backbone output; target: (B, N, d) clean tokens;
            mask: (B, N) bool, True = masked (only these tokens count).
        Returns a scalar: the mean per-token loss over masked tokens.
        """
        ...

    def sample(self, z: torch.Tensor, temperature: float, generator: torch.Generator,
               z_uncond: torch.Tensor | None = None, cfg_scale: float = 1.0) -> torch.Tensor:
        """Args:
            z: (M, D) conditions of the tokens to draw; temperature: sampling temperature;
            generator: every random draw comes from it;
            z_uncond: (M, D) unconditional conditions for CFG (None = no guidance);
            cfg_scale: guidance scale (diffusion: on ε in its loop; energy: on z).
        Returns (M, d) tokens.
        """
        ...


def build_head(head_cfg: Any, token_dim: int, cond_dim: int) -> nn.Module:
    """Build the head named by `head_cfg.kind`.

    Args:
        head_cfg: `Config.head`.
        token_dim: d, the size of one audio token.
        cond_dim: D, the backbone's output width.
    """
    kind = head_cfg.kind
    if kind == "diffusion":
        from teachers.diffusion_head import DiffusionHead
        return DiffusionHead(head_cfg, token_dim, cond_dim)
    if kind == "energy":
        from energytta.models.energy_head import EnergyHead
        return EnergyHead(head_cfg, token_dim, cond_dim)
    raise UserError(f"unknown head.kind '{kind}' (valid: {', '.join(HEAD_KINDS)})")
