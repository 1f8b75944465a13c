"""The teacher objective: MAR's masked denoising loss of the diffusion-head teacher.

MAR's recipe (IMPACT's teacher): patchify, mask a truncnorm ratio of the tokens in a random
order, drop the caption with probability `model.text_dropout` (for classifier-free
guidance), run the backbone, and score the masked tokens with the head's loss (MAR eq. 2).
Any head other than the student's trains this way: the loss is `head.loss`.
"""
from __future__ import annotations

import torch
from torch import nn

from energytta.config import Config
from energytta.masking import training_mask
from energytta.train.objectives.base import TrainContext
from energytta.train.objectives.tokens import TokenObjective, TokenParts


class TeacherObjective(TokenObjective):
    """Masked denoising loss of the diffusion-head teacher.

    Args:
        cfg: uses model.mask_ratio_*, model.text_dropout.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    @classmethod
    def build(cls, cfg: Config, ctx: TrainContext) -> "TeacherObjective":
        objective = cls(cfg)
        objective.parts = TokenParts.build(cfg, ctx.device)
        return objective

    def __call__(self, model: nn.Module, latents: torch.Tensor, text: torch.Tensor,
                 text_mask: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """Args:
            model: the raw TTAModel (`.backbone`, `.head`, `.geometry`).
            latents: (B, C, T, F) codec latents, T whole time patches.
            text: (B, L, Dt) text states; text_mask: (B, L) bool.
            generator: mask order/ratio, caption dropout and the head's (t, ε) draws.
        Returns the scalar loss and {"diffusion": float}.
        """
        m = self.cfg.model
        tokens = model.geometry.patchify(latents)  # (B, N, d)
        B, N, _ = tokens.shape
        mask = training_mask(B, N, m, generator, tokens.device)  # (B, N), True = predict
        drop = torch.rand(B, generator=generator, device=generator.device) < m.text_dropout
        z = model.backbone(tokens, mask, text, text_mask, drop_text=drop.to(tokens.device))
        loss = model.head.loss(z, tokens, mask, generator=generator)
        return loss, {"diffusion": float(loss.detach())}
