"""Tokens -> audio: the one path from decoded tokens to waveforms.

The pipeline, the trainer's samples and `tools/bench.py` all render through
`tokens_to_audio`: tokens (B, N, d) -> latents (B, C, T, F) by the model's geometry ->
log-mel (B, n_mels, T_mel) by the codec -> frames above the full-scale ceiling turned down
(`energytta.audio.level`) -> waveform (B, S) by the codec's vocoder.
"""
from __future__ import annotations

from typing import Protocol

import torch

from energytta.audio.level import CEILING_DB, limit_frames


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
        codec: its codec (`decode`: latents -> log-mel, `vocode`: log-mel -> wav,
            `full_scale_db`: the ceiling's reference level).
        generator: the vocoder's random draws (Griffin-Lim's initial phase).
    Returns:
        (log-mel (B, n_mels, T_mel), wav (B, S)): the codec's mel with any frame louder
        than a full-scale sine's (+ `CEILING_DB`) turned down to that level, and its
        waveform. A decoded frame above full scale is an outlier no training clip has;
        left in, the clip's later scaling to peak 1 would silence every other event.
    """
    latents = geometry.unpatchify(tokens.float())  # (B, C, T, F)
    mel = codec.decode(latents)
    mel = limit_frames(mel, codec.full_scale_db() + CEILING_DB)
    return mel, codec.vocode(mel, generator=generator)
