"""The AudioLDM / HiFi-GAN log-mel front-end in plain torch (no torchaudio, no librosa).

Matches the mels AudioLDM's VAE and HiFi-GAN vocoder were trained on (16 kHz, n_fft 1024,
Hann window 1024, hop 160, 64 slaney mels over 0-8 kHz): magnitude STFT, mel projection and
`log(clamp(x, 1e-5))` (AudioLDM's `dynamic_range_compression` with C = 1). A clip of S samples
gives exactly S // hop frames under either framing:

- "audioldm": AudioLDM's `TacotronSTFT` framing, reflect padding of n_fft / 2 on each side
  (frame k centred on sample k·hop; S // hop + 1 frames, of which AudioLDM keeps its target
  count, S // hop for a clip of whole hops -- so 10.24 s gives 1,024 frames).
- "legacy": reflect padding of (n_fft - hop) / 2 with `center=False` (frame k centred on
  k·hop + hop / 2); the built-in mel codec and the checkpoints trained on it use this.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from energytta.config import AudioConfig

LOG_FLOOR = 1e-5  # AudioLDM's dynamic-range compression clamp

# Slaney's Auditory Toolbox mel scale (librosa htk=False): linear below 1 kHz, log above.
_F_SP = 200.0 / 3.0  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # = 15
_LOG_STEP = np.log(6.4) / 27.0  # 27 mels per factor 6.4 in frequency


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa.hz_to_mel with htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOG_STEP
    return np.where(hz >= _MIN_LOG_HZ, log, lin)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    lin = mel * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, lin)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """Slaney-normalised triangular mel filters, equal to `librosa.filters.mel` defaults.

    Args:
        sample_rate: Hz; n_fft: FFT size (n_fft // 2 + 1 frequency bins).
        n_mels: number of filters; f_min, f_max: band edges in Hz (f_max None = Nyquist).
    Returns:
        (n_mels, n_fft // 2 + 1) float32. Each triangle is scaled by 2 / (its width in Hz)
        ("slaney" norm) so that filters have roughly constant energy per band.
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)  # (K,)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # (M+2,)
    widths = np.diff(edges)  # (M+1,)
    ramps = edges[:, None] - fft_hz[None, :]  # (M+2, K)
    rising = -ramps[:-2] / widths[:-1, None]  # (M, K) 0 at left edge -> 1 at centre
    falling = ramps[2:] / widths[1:, None]  # (M, K) 1 at centre -> 0 at right edge
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


FRAMINGS = ("legacy", "audioldm")


class MelFrontend(nn.Module):
    """wav (B, S) -> log-mel (B, n_mels, S // hop), AudioLDM's TacotronSTFT settings.

    Args:
        audio_cfg: sample rate, n_fft, win_length, hop_length, n_mels, f_min, f_max.
        framing: "legacy" or "audioldm" (module docstring).
    The window and filterbank are non-persistent buffers: they follow `.to(device)` but are
    rebuilt from the config rather than stored in checkpoints.
    """

    def __init__(self, audio_cfg: AudioConfig, framing: str = "legacy") -> None:
        super().__init__()
        c = audio_cfg
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")
        if c.win_length > c.n_fft or (c.n_fft - c.hop_length) % 2:
            raise ValueError("need win_length <= n_fft and an even n_fft - hop_length, got "
                             f"n_fft={c.n_fft}, win_length={c.win_length}, hop={c.hop_length}")
        self.sample_rate, self.n_fft, self.hop_length = c.sample_rate, c.n_fft, c.hop_length
        self.n_mels = c.n_mels
        self.framing = framing
        self.pad = c.n_fft // 2 if framing == "audioldm" else (c.n_fft - c.hop_length) // 2
        self.register_buffer("window", padded_window(c.n_fft, c.win_length), persistent=False)
        fb = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max)
        self.register_buffer("mel_basis", torch.from_numpy(fb), persistent=False)

    def magnitude(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) -> linear STFT magnitude (B, n_fft // 2 + 1, S // hop)."""
        if wav.dim() != 2:
            raise ValueError(f"expected wav (B, S), got shape {tuple(wav.shape)}")
        if wav.shape[-1] <= self.pad:
            raise ValueError(f"need more than {self.pad} samples for the mel front-end, "
                             f"got {wav.shape[-1]}")
        x = nn.functional.pad(wav.float().unsqueeze(1), (self.pad, self.pad), mode="reflect")
        spec = torch.stft(x.squeeze(1), self.n_fft, self.hop_length, window=self.window,
                          center=False, return_complex=True)
        return spec[..., :wav.shape[-1] // self.hop_length].abs()  # audioldm: drop frame S//hop

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) -> linear-magnitude mel (B, n_mels, S // hop)."""
        return torch.matmul(self.mel_basis, self.magnitude(wav))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) float in [-1, 1] -> log-mel (B, n_mels, S // hop) float32."""
        return torch.log(torch.clamp(self.mel(wav), min=LOG_FLOOR))

    def full_scale_db(self) -> float:
        """Frame power (dB, `energytta.audio.render.frame_db`) of a full-scale 1 kHz sine:
        the reference of absolute frame levels (the mel analogue of 0 dBFS)."""
        if not hasattr(self, "_full_scale_db"):
            from energytta.audio.render import frame_db

            t = torch.arange(self.sample_rate, dtype=torch.float32) / self.sample_rate
            sine = torch.sin(2 * math.pi * 1000.0 * t)[None].to(self.window.device)
            self._full_scale_db = float(frame_db(self(sine))[0, 2:-2].median())
        return self._full_scale_db


def padded_window(n_fft: int, win_length: int) -> torch.Tensor:
    """Periodic Hann window of `win_length`, zero-padded to `n_fft` centred (torch.stft's rule)."""
    win = torch.hann_window(win_length, dtype=torch.float32)
    left = (n_fft - win_length) // 2
    return nn.functional.pad(win, (left, n_fft - win_length - left))
