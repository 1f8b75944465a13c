"""How eventful a clip is, read off its log-mel: the active fraction and the event count.

Generated clips can be right in kind and still wrong in amount: too few, too short events
are what wrong counts look like from the outside. Both numbers are measured the same way
on generated and real log-mels (B, n_mels, T), so they compare directly:

- **active fraction**: frames whose mel power is above `ACTIVE_DB` relative to a
  full-scale sine's frame (an absolute level, like -30 dBFS on the waveform, so a quiet
  clip is not called busy by normalising it to its own peak);
- **events**: runs of active frames, two runs closer than `MIN_GAP_S` being one event.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

ACTIVE_DB = -30.0  # dB below a full-scale sine's frame
MIN_GAP_S = 0.05  # shorter silences do not split an event


def frame_db(logmel: Tensor) -> Tensor:
    """log-magnitude mel (B, M, T) -> frame power in dB (B, T)."""
    power = torch.logsumexp(2.0 * logmel.float(), dim=1)  # log Σ_m |mel_m|²
    return power * (10.0 / math.log(10.0))


@lru_cache(maxsize=8)
def full_scale_db(sample_rate: int, n_fft: int, win_length: int, hop_length: int,
                  n_mels: int, f_min: float, f_max: float) -> float:
    """Frame power (dB) of a full-scale 1 kHz sine under this mel front-end."""
    from energytta.audio.mel import MelFrontend
    from energytta.config import AudioConfig

    audio = AudioConfig(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length,
                        hop_length=hop_length, n_mels=n_mels, f_min=f_min, f_max=f_max)
    t = torch.arange(sample_rate) / sample_rate
    mel = MelFrontend(audio)(torch.sin(2 * math.pi * 1000.0 * t)[None])
    return float(frame_db(mel)[0, 2:-2].median())


def reference_db(audio_cfg) -> float:
    """`full_scale_db` for a config's `audio` section."""
    a = audio_cfg
    return full_scale_db(a.sample_rate, a.n_fft, a.win_length, a.hop_length, a.n_mels,
                         float(a.f_min), float(a.f_max))


def activity(logmel: Tensor, ref_db: float, frames_per_second: float
             ) -> tuple[Tensor, Tensor]:
    """-> (active fraction (B,), event count (B,)) of log-mels (B, M, T)."""
    active = frame_db(logmel) > ref_db + ACTIVE_DB  # (B, T)
    gap = max(1, round(MIN_GAP_S * frames_per_second))
    events = torch.tensor([_runs(row.tolist(), gap) for row in active], dtype=torch.float32)
    return active.float().mean(dim=1), events


def _runs(active: list[bool], gap: int) -> int:
    """Runs of True, merging runs separated by fewer than `gap` False values."""
    count, quiet = 0, gap
    for a in active:
        if a:
            count += quiet >= gap
            quiet = 0
        else:
            quiet += 1
    return count
