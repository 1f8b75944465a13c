"""The frozen text encoder of a text-to-audio run, with a per-caption cache."""
from __future__ import annotations

import torch
from torch import nn


class TextCache:
    """Frozen text encoder with a CPU cache of each unique caption's states.

    Captions are encoded one at a time, so a caption's states never depend on which
    other captions shared its batch (padding can change float rounding): a resumed run,
    whose cache starts empty, sees exactly the same text features.

    Args:
        encoder: `energytta.text.TextEncoder` (frozen, on the training device).
    """

    def __init__(self, encoder: nn.Module) -> None:
        self.encoder = encoder
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions -> (states (B, L, Dt), mask (B, L) bool) on the encoder's device."""
        for c in dict.fromkeys(captions):
            if c not in self.cache:
                states, mask = self.encoder([c])  # (1, L, Dt), (1, L)
                self.cache[c] = states[0, mask[0]].float().cpu()  # (L_c, Dt)
        rows = [self.cache[c] for c in captions]
        L = max(r.shape[0] for r in rows)
        states = torch.zeros(len(rows), L, rows[0].shape[1])
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, :r.shape[0]], mask[i, :r.shape[0]] = r, True
        device = next(self.encoder.parameters()).device
        return states.to(device), mask.to(device)
