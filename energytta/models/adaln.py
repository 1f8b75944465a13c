"""AdaLN residual MLP blocks shared by both per-token heads.

MAR's diffusion head (`SimpleMLPAdaLN`, conditioned on timestep + z) and EAR's energy head
(conditioned on the noise ε) use the same DiT-style pieces: a pre-norm MLP residual block
whose LayerNorm shift/scale and residual gate come from a conditioning vector, and a final
AdaLN layer. Modulation outputs and the output layer start at zero (DiT, Peebles & Xie
2023), so every block starts as the identity.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """x + gate · MLP(modulate(LN(x), shift, scale)); (shift, scale, gate) from c."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: Tensor, c: Tensor, shift_mult: float = 1.0) -> Tensor:
        """Args: x (M, W) residual stream; c (M, W) conditioning; shift_mult scales the
        shift (EAR's inference temperature; 1.0 elsewhere)."""
        shift, scale, gate = self.ada(c).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift_mult * shift, scale))


class FinalLayer(nn.Module):
    """AdaLN (no affine) then a linear map to the output channels (DiT's final layer)."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def init_adaln_mlp(module: nn.Module, blocks: nn.ModuleList, final: FinalLayer) -> None:
    """Xavier-uniform for every Linear of `module`, zero biases; then zero the AdaLN
    outputs of `blocks` and `final` and the output layer (identity blocks, zero output)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer in [b.ada[-1] for b in blocks] + [final.ada[-1], final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
