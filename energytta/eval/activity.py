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

from energytta.audio.render import frame_db

ACTIVE_DB = -30.0  # dB below a full-scale sine's frame
MIN_GAP_S = 0.05  # shorter silences do not split an event


@lru_cache(maxsize=8)
def full_scale_db(sample_rate: int, n_fft: int, win_length: int, hop_length: int,
                  n_mels: int, f_min: float, f_max: float) -> float:
    """Frame power (dB) of a full-scale 1 kHz sine under this mel front-end."""
    from energytta.audio.mel import MelFrontend
    from energytta.config import AudioConfig

    audio = AudioConfig(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length,
                        hop_length=hop_length, n_mels=n_mels, f_min=f_min, f_max=f_max)
    return MelFrontend(audio).full_scale_db()


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


def waveform_active_fraction(wav: Tensor, frame: int = 1024, hop: int = 160) -> Tensor:
    """wav (B, S) or (S,) in [-1, 1] -> the fraction of frames above `ACTIVE_DB` dBFS (B,)
    or (), a frame's level being its RMS relative to a full-scale sine's (1/√2): what a
    listener gets after rendering, where `activity` reads the mel before the vocoder."""
    x = torch.as_tensor(wav, dtype=torch.float32)
    frames = x.unfold(-1, frame, hop)  # (..., T, frame)
    rms = frames.pow(2).mean(dim=-1).sqrt()  # (..., T)
    dbfs = 20.0 * torch.log10(rms.clamp(min=1e-10) * math.sqrt(2.0))
    return (dbfs > ACTIVE_DB).float().mean(dim=-1)
