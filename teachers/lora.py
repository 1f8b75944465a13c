"""The LoRA fake-score teacher of caption-only distillation (SwiftBrush §4.2, after
ProlificDreamer's VSD): a frozen copy of the teacher whose attention q/v projections and
head linears get low-rank adapters (Hu et al. 2022, "LoRA": W + (α/r)·B·A, B = 0 at init,
so the copy starts as the teacher). It is trained on the student's samples with the
ordinary denoising loss and so tracks the score of the student's distribution.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from energytta.errors import UserError
from energytta.models.blocks import Block


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus low-rank updates on some of its output rows.

    Args:
        base: the layer to adapt (frozen here).
        rank, alpha: LoRA rank r and scale α (the update is (α/r)·B·A).
        rows: (start, stop) output-row ranges to adapt, sorted and disjoint; None = all
            (for a fused qkv projection, the q and v rows).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float,
                 rows: list[tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rows = rows or [(0, base.out_features)]
        self.scale = alpha / rank
        self.down = nn.ModuleList(nn.Linear(base.in_features, rank, bias=False)
                                  for _ in self.rows)
        self.up = nn.ModuleList(nn.Linear(rank, b - a, bias=False) for a, b in self.rows)
        for down, up in zip(self.down, self.up):
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))  # LoRA: A random, B = 0
            nn.init.zeros_(up.weight)
        self.to(base.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (callers read its dtype/device, as of an nn.Linear)."""
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        pieces, at = [], 0
        for (a, b), down, up in zip(self.rows, self.down, self.up):
            if a > at:
                pieces.append(y.new_zeros(*y.shape[:-1], a - at))
            pieces.append(self.scale * up(down(x)).to(y.dtype))
            at = b
        if at < y.shape[-1]:
            pieces.append(y.new_zeros(*y.shape[:-1], y.shape[-1] - at))
        return y + torch.cat(pieces, dim=-1)


def _wrap_head_linears(module: nn.Module, rank: int, alpha: float) -> int:
    """Replace every nn.Linear below `module` by a LoRALinear; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, LoRALinear(child, rank, alpha))
            count += 1
        else:
            count += _wrap_head_linears(child, rank, alpha)
    return count


def lora_teacher(teacher: nn.Module, rank: int, alpha: float) -> nn.Module:
    """A copy of a frozen TTAModel teacher with LoRA on attention q/v and the head's linears.

    Args:
        teacher: the frozen teacher (left untouched: the copy is deep).
        rank, alpha: LoRA rank and scale.
    Returns the copy; only its LoRA parameters require grad.
    """
    if rank < 1 or rank > teacher.backbone.out_dim:
        raise UserError(f"vsd.lora_rank={rank} does not fit the teacher (width "
                        f"{teacher.backbone.out_dim}); use 1..{teacher.backbone.out_dim}")
    fake = copy.deepcopy(teacher).requires_grad_(False)
    for block in fake.modules():
        if isinstance(block, Block):
            D = block.qkv.in_features
            block.qkv = LoRALinear(block.qkv, rank, alpha, rows=[(0, D), (2 * D, 3 * D)])
    if _wrap_head_linears(fake.head.net, rank, alpha) == 0:
        raise UserError("the teacher's head has no linear layers to adapt (is teacher.ckpt a "
                        "diffusion-head teacher?)")
    return fake.eval()
