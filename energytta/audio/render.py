"""Tokens -> audio: the one path from decoded tokens to waveforms.

The pipeline, the trainer's samples and `tools/bench.py` all render through
`tokens_to_audio`: tokens (B, N, d) -> latents (B, C, T, F) by the model's geometry ->
log-mel (B, n_mels, T_mel) by the codec -> waveform (B, S) by the codec's vocoder.
"""
from __future__ import annotations

from typing import Protocol

import torch


class Geometry(Protocol):
    """What rendering needs of `energytta.models.geometry.TokenGeometry`."""

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor: ...


def tokens_to_audio(tokens: torch.Tensor, geometry: Geometry, codec: torch.nn.Module,
                    generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Render decoded tokens.

    Args:
        tokens: (B, N, d), N whole time patches (any float dtype; rendered in fp32).
        geometry: the model's `TokenGeometry` (`TTAModel.geometry`).
        codec: its codec (`decode`: latents -> log-mel, `vocode`: log-mel -> wav).
        generator: the vocoder's random draws (Griffin-Lim's initial phase).
    Returns:
        (log-mel (B, n_mels, T_mel), wav (B, S)) as the codec gives them (no level change).
    """
    latents = geometry.unpatchify(tokens.float())  # (B, C, T, F)
    mel = codec.decode(latents)
    return mel, codec.vocode(mel, generator=generator)
