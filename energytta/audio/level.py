"""Frame levels of log-mels, and the ceiling generated mels are held to before vocoding.

Levels are absolute: a frame's power is compared with the power of a full-scale sine's
frame under the same mel front-end (`MelFrontend.full_scale_db`), the mel analogue of
dBFS, so a quiet clip is not called loud by normalising it to its own peak.
"""
from __future__ import annotations

import math

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
