"""Waveform I/O and level/length helpers (numpy, float32, channels-first).

Reading goes through soundfile (libsndfile: wav, flac, ogg/vorbis, mp3 from libsndfile
1.1 on); every failure a user can cause becomes a one-line `UserError` naming the file.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from energytta.audio.resample import resample
from energytta.errors import UserError
from energytta.utils import atomic_path

SILENCE_RMS = 1e-8  # below this a clip counts as silent and is left unscaled


def load_audio(path: str | Path, sample_rate: int, mono: bool = True) -> np.ndarray:
    """Read an audio file as float32 at `sample_rate` Hz.

    Args:
        path: wav / flac / ogg / mp3 file.
        sample_rate: target rate; other rates are resampled (band-limited, `resample.py`).
        mono: average the channels.
    Returns:
        (S,) float32 if mono, else (channels, S).
    Raises:
        UserError: the file is missing, unreadable, empty or holds non-finite samples.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}")
    return _read(str(path), str(path), sample_rate, mono)


def decode_audio(data: bytes, name: str, sample_rate: int, mono: bool = True) -> np.ndarray:
    """`load_audio` of a file's bytes (a tar shard's member); `name` labels errors."""
    return _read(io.BytesIO(data), name, sample_rate, mono)


def _read(source: str | io.BytesIO, name: str, sample_rate: int, mono: bool) -> np.ndarray:
    try:
        data, file_sr = sf.read(source, dtype="float32", always_2d=True)  # (S, C)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read audio file {name}: {reason} "
                        "(expected a wav/flac/ogg/mp3 file)") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise UserError(f"audio file {name} is empty (0 samples)")
    if not np.isfinite(data).all():
        raise UserError(f"audio file {name} contains NaN or infinite samples")
    wav = data.T  # (C, S)
    if mono:
        wav = wav.mean(axis=0)
    if file_sr != sample_rate:
        wav = resample(wav, int(file_sr), int(sample_rate))
    return np.ascontiguousarray(wav, dtype=np.float32)


def write_wav(path: str | Path, wav: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    """Write 16-bit PCM WAV atomically; samples are clipped to [-1, 1] (NaN -> 0).

    Args:
        path: destination (.wav); parent folders are created.
        wav: (S,) mono or (channels, S).
        sample_rate: Hz.
    """
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.nan_to_num(np.asarray(wav, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    if wav.ndim not in (1, 2):
        raise ValueError(f"write_wav expects (S,) or (channels, S), got shape {wav.shape}")
    data = np.clip(wav, -1.0, 1.0).T  # soundfile wants (S, C)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data, int(sample_rate), subtype="PCM_16", format="WAV")


def peak_normalize(wav: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale so that max |wav| == `peak`; silent input is returned unchanged (as float32)."""
    top = float(np.max(np.abs(wav))) if wav.size else 0.0
    if top < SILENCE_RMS:
        return wav.astype(np.float32, copy=True)
    return (wav * (peak / top)).astype(np.float32)


def rms_dbfs(wav: np.ndarray) -> float:
    """RMS level in dB relative to a full-scale square wave (0 dBFS = RMS 1)."""
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    return 20.0 * np.log10(max(rms, SILENCE_RMS))


def loudness_normalize(wav: np.ndarray, target_dbfs: float = -20.0,
                       max_peak: float | None = None) -> np.ndarray:
    """Scale to an RMS level of `target_dbfs` dBFS.

    Args:
        wav: (..., S) float.
        target_dbfs: wanted RMS level (e.g. -20 dBFS).
        max_peak: if set, lower the gain so that max |wav| <= max_peak (avoids clipping, at
            the cost of ending below the target for very peaky clips).
    Returns:
        float32 copy; silent input is returned unchanged.
    """
    level = rms_dbfs(wav)
    if level <= 20.0 * np.log10(SILENCE_RMS):
        return wav.astype(np.float32, copy=True)
    gain = 10.0 ** ((target_dbfs - level) / 20.0)
    if max_peak is not None:
        gain = min(gain, max_peak / float(np.max(np.abs(wav))))
    return (wav * gain).astype(np.float32)


def crop_or_pad(wav: np.ndarray, length: int, offset: int | None = None,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Cut or zero-pad the last axis to exactly `length` samples.

    Args:
        wav: (..., S).
        length: wanted number of samples.
        offset: start of the crop when S > length (checked to fit).
        rng: if `offset` is None and S > length, draw the offset uniformly from this
            generator (random training crops); with neither, crop from the start.
    Returns:
        (..., length), zero-padded at the end when S < length.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    n = wav.shape[-1]
    if n <= length:
        pad = [(0, 0)] * (wav.ndim - 1) + [(0, length - n)]
        return np.pad(wav, pad)
    if offset is None:
        offset = int(rng.integers(0, n - length + 1)) if rng is not None else 0
    if not 0 <= offset <= n - length:
        raise ValueError(f"offset {offset} out of range [0, {n - length}] for {n} samples")
    return wav[..., offset:offset + length].copy()
