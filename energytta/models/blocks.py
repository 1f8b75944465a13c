"""Pre-norm ViT block on `scaled_dot_product_attention` (timm's `Block`, which MAR uses).

We do not depend on timm (it imports torchvision, which has no CPU build here); the block
is the standard one: x + Attn(LN(x)), then x + MLP(LN(x)), GELU MLP, dropout on the
attention probabilities, the output projection and the MLP (MAR: attn/proj dropout 0.1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

    def attention(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        # (B, S) keys -> (B, 1, 1, S): the same keys for every head and query; True = attend
        mask = None if key_mask is None else key_mask[:, None, None, :]
        drop = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, S, D)))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args:
            x: (B, S, D) tokens.
            key_mask: (B, S) bool, True = the token may be attended to; None = all.
        Returns (B, S, D). Every row needs at least one attendable key.
        """
        x = x + self.attention(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))
