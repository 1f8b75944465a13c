"""Training objectives: `objective(model, latents, text, text_mask, generator) -> (loss, logs)`.

The loop does not know which head it trains; `build_objective` picks the objective from
`cfg.head.kind`:

- "diffusion" → `TeacherObjective`: MAR's recipe — patchify, mask a truncnorm ratio of
  the tokens in a random order, drop the caption with probability `model.text_dropout`
  (for classifier-free guidance), run the backbone, and score the masked tokens with
  the head's denoising loss (MAR eq. 2, IMPACT's teacher).
- "energy" → `energytta.train.distill.StudentObjective`: energy score + feature
  distillation against the frozen teacher at `teacher.ckpt`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from energytta.config import Config
from energytta.errors import UserError
from energytta.masking import training_mask
from energytta.models.patchify import patchify

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator],
                     tuple[torch.Tensor, dict[str, float]]]


class TeacherObjective:
    """Masked denoising loss of the diffusion-head teacher.

    Args:
        cfg: uses model.patch_t/patch_f, model.mask_ratio_*, model.text_dropout.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def __call__(self, model: nn.Module, latents: torch.Tensor, text: torch.Tensor,
                 text_mask: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """Args:
            model: the raw TTAModel (`.backbone`, `.head`).
            latents: (B, C, T, F) codec latents, T a multiple of model.patch_t.
            text: (B, L, Dt) text states; text_mask: (B, L) bool.
            generator: mask order/ratio, caption dropout and the head's (t, ε) draws.
        Returns the scalar loss and {"diffusion": float}.
        """
        m = self.cfg.model
        tokens = patchify(latents, m.patch_t, m.patch_f)  # (B, N, d)
        B, N, _ = tokens.shape
        mask = training_mask(B, N, m, generator, tokens.device)  # (B, N), True = predict
        drop = torch.rand(B, generator=generator, device=generator.device) < m.text_dropout
        z = model.backbone(tokens, mask, text, text_mask, drop_text=drop.to(tokens.device))
        loss = model.head.loss(z, tokens, mask, generator=generator)
        return loss, {"diffusion": float(loss.detach())}


def build_objective(cfg: Config, model: nn.Module, device: Any) -> Any:
    """The objective for `cfg.head.kind`.

    Args:
        cfg: the full config.
        model: the raw TTAModel (the student objective may initialise it from the teacher).
        device: where the objective's own modules (the frozen teacher) live: a device
            or an `accelerate.Accelerator` (its `.device` is used).
    """
    device = getattr(device, "device", device)
    if cfg.head.kind == "diffusion":
        return TeacherObjective(cfg)
    if cfg.head.kind == "energy":
        from energytta.train.distill import StudentObjective
        return StudentObjective(cfg, model, device)
    raise UserError(f"unknown head.kind '{cfg.head.kind}' (valid: diffusion, energy)")
