"""Tokens -> audio: the one path from decoded tokens to waveforms.

The pipeline, the trainer's samples and `tools/bench.py` all render through
`tokens_to_audio`: tokens (B, N, d) -> latents (B, C, T, F) by the model's geometry ->
log-mel (B, n_mels, T_mel) by the codec -> frames above the full-scale ceiling turned down
-> waveform (B, S) by the codec's vocoder.

Frame levels are absolute: a frame's power is compared with the power of a full-scale
sine's frame under the same mel front-end (`MelFrontend.full_scale_db`), the mel analogue
of dBFS, so a quiet clip is not called loud by normalising it to its own peak.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor


# Generated mel frames above a full-scale sine's frame + this many dB are turned down to
# it. Training clips never exceed full scale (their loudest frames sit 2-25 dB below that
# level), but a model's rare outlier tokens can decode to frames 20-50 dB above it; scaled
# as one waveform, such a clip would push every other event below audibility.
CEILING_DB = 0.0


def frame_db(logmel: Tensor) -> Tensor:
    """log-magnitude mel (B, M, T) -> frame power in dB (B, T)."""
    power = torch.logsumexp(2.0 * logmel.float(), dim=1)  # log Σ_m |mel_m|²
    return power * (10.0 / math.log(10.0))


def limit_frames(logmel: Tensor, ceiling_db: float) -> Tensor:
    """Turn each frame of a log-magnitude mel (B, M, T) louder than `ceiling_db` down to it,
    keeping its spectral shape; quieter frames are returned unchanged (bit for bit)."""
    excess = (frame_db(logmel) - ceiling_db).clamp(min=0.0)  # (B, T) dB over the ceiling
    # a power ratio of `excess` dB is excess / 20 · ln 10 in natural-log magnitude
    return logmel - (excess * (math.log(10.0) / 20.0)).unsqueeze(1).to(logmel.dtype)


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
