"""The network's building blocks: the pre-norm ViT block of the backbone and the AdaLN
residual MLP blocks of both per-token heads.

Pre-norm ViT block on `scaled_dot_product_attention` (timm's `Block`, which MAR uses).

We do not depend on timm (it imports torchvision, which has no CPU build here); the block
is the standard one: x + Attn(LN(x)), then x + MLP(LN(x)), GELU MLP, dropout on the
attention probabilities, the output projection and the MLP (MAR: attn/proj dropout 0.1).

Rotary positions (RoFormer, Su et al. 2021): queries and keys of each head are rotated by
angles proportional to the token's position, so q·k depends on the *relative* position of
query and key. `Rotary` builds the (cos, sin) tables from integer positions; a block
applies them when given. Over a 2-D token grid (latent time × frequency patches) half of
each head's channel pairs rotate with time and half with frequency (axial RoPE, as in
2-D vision transformers); position 0 (used for the text prefix) is the identity.

AdaLN heads: MAR's diffusion head (`SimpleMLPAdaLN`, conditioned on timestep + z) and EAR's
energy head (conditioned on the noise ε) use the same DiT-style pieces: a pre-norm MLP
residual block whose LayerNorm shift/scale and residual gate come from a conditioning
vector, and a final AdaLN layer. Modulation outputs and the output layer start at zero
(DiT, Peebles & Xie 2023), so every block starts as the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from energytta.errors import UserError


def init_weights(module: nn.Module) -> None:
    """MAR / JAX-ViT init: xavier-uniform Linear weights, zero biases, LayerNorm 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


RopeTables = tuple[torch.Tensor, torch.Tensor]  # cos, sin: (B or 1, 1, S, head_dim)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(..., 2k) -> (..., 2k): the pairs (x1, x2) of the two halves become (−x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """Rotate (B, H, S, hd) queries or keys by the (cos, sin) tables (RoFormer eq. 34)."""
    cos, sin = rope
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class Rotary(nn.Module):
    """(cos, sin) tables of rotary positions for one attention head width.

    Args:
        head_dim: channels per head (even; a multiple of 4 when `axes == 2`).
        axes: 1 = positions along time only; 2 = (time, frequency) positions, each
            rotating half of the channel pairs.
        base: wavelength base θ (RoFormer: 10000).
    Holds no weights (its frequency table is a non-persistent buffer), so adding it
    changes no checkpoint.
    """

    def __init__(self, head_dim: int, axes: int = 1, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % (2 * axes):
            raise UserError(f"model.pos_embed=rope needs a head width (model.width / "
                            f"model.num_heads) divisible by {2 * axes}, got {head_dim}")
        self.axes = axes
        pairs = head_dim // (2 * axes)  # rotating channel pairs per axis
        inv = base ** (-torch.arange(pairs, dtype=torch.float64) / pairs)
        self.register_buffer("inv_freq", inv.float(), persistent=False)

    def forward(self, positions: torch.Tensor) -> RopeTables:
        """positions (B, S, axes) float (time[, freq]) -> cos, sin (B, 1, S, head_dim)."""
        ang = positions[..., :, None].float() * self.inv_freq  # (B, S, axes, pairs)
        ang = ang.flatten(-2)  # (B, S, axes·pairs)
        ang = torch.cat([ang, ang], dim=-1)[:, None]  # halves rotate together (rotate_half)
        return ang.cos(), ang.sin()


class Block(nn.Module):
    """Bidirectional transformer block.

    Args:
        dim: model width D.
        heads: attention heads (D must be divisible by it).
        mlp_ratio: MLP hidden width / D.
        dropout: dropout after the attention projection and in the MLP.
        attn_dropout: dropout on attention probabilities (training only).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {heads}")
        self.heads = heads
        self.attn_dropout = attn_dropout
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.apply(init_weights)

    def attention(self, x: torch.Tensor, key_mask: torch.Tensor | None,
                  rope: RopeTables | None = None) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:  # relative positions enter q·k directly (RoFormer)
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        # (B, S) keys -> (B, 1, 1, S): the same keys for every head and query; True = attend
        mask = None if key_mask is None else key_mask[:, None, None, :]
        drop = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, S, D)))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None,
                rope: RopeTables | None = None) -> torch.Tensor:
        """Args:
            x: (B, S, D) tokens.
            key_mask: (B, S) bool, True = the token may be attended to; None = all.
            rope: rotary (cos, sin) tables (B or 1, 1, S, D / heads), or None.
        Returns (B, S, D). Every row needs at least one attendable key.
        """
        x = x + self.attention(self.norm1(x), key_mask, rope)
        return x + self.mlp(self.norm2(x))


# AdaLN residual MLP blocks (the per-token heads)
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
