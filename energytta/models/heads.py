"""Per-token heads: one interface, many implementations (MAR's DiffLoss vs EAR's ScoreLoss).

The backbone and the sampler never branch on the head type; they only call `loss` and
`sample`. Classifier-free guidance is the one place heads differ (see `Head.sample`).

Heads are found by kind in one registry: `register_head` (the student's energy head,
which ships here, and tests), then the `energytta.heads` entry-point group
(`energytta.plugins`), where the `teachers` package announces the diffusion head. So
energytta never imports `teachers` (DESIGN: dependency direction), and sampling with a
student never imports diffusion code.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from energytta.errors import UserError
from energytta.models.energy_head import EnergyHead
from energytta.plugins import load_plugin, plugin_names

HEAD_GROUP = "energytta.heads"
HeadBuilder = Callable[[Any, int, int], nn.Module]  # (head_cfg, token_dim, cond_dim) -> Head
_BUILDERS: dict[str, HeadBuilder] = {}


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


def register_head(kind: str, builder: HeadBuilder) -> None:
    """Make `head.kind=<kind>` build heads with `builder(head_cfg, token_dim, cond_dim)`."""
    _BUILDERS[kind] = builder


def head_kinds() -> list[str]:
    """Every kind `build_head` can build: registered ones and installed entry points."""
    return sorted({*_BUILDERS, *plugin_names(HEAD_GROUP)})


def build_head(head_cfg: Any, token_dim: int, cond_dim: int) -> nn.Module:
    """Build the head named by `head_cfg.kind`.

    Args:
        head_cfg: `Config.head`.
        token_dim: d, the size of one audio token.
        cond_dim: D, the backbone's output width.
    """
    kind = head_cfg.kind
    if kind not in _BUILDERS:
        builder = load_plugin(HEAD_GROUP, kind)
        if builder is None:
            raise UserError(f"unknown head.kind '{kind}' (valid: {', '.join(head_kinds())}; "
                            "the diffusion head is registered by installing the package: "
                            "pip install -e .)")
        register_head(kind, builder)
    return _BUILDERS[kind](head_cfg, token_dim, cond_dim)


register_head("energy", EnergyHead)  # the student's head ships with energytta itself
