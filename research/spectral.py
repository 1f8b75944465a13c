"""Helpers shared by the codec reports (`griffinlim_report`, `codec_report`)."""
from __future__ import annotations

from pathlib import Path

import torch

from energytta.data.manifest import read_manifest


def read_rows(path: str | Path, num: int) -> list[tuple[Path, str]]:
    """First `num` (audio path, caption) pairs of a manifest (JSONL, AudioCaps, Clotho)."""
    return [(item.audio, item.caption) for item in read_manifest(path)[:num]]


def spectral_convergence(mel: torch.Tensor, mel_hat: torch.Tensor) -> float:
    """||exp(M) - exp(M_hat)||_F / ||exp(M)||_F for log-mels (1, n_mels, T)."""
    target = mel.exp()
    return float(torch.linalg.norm(mel_hat.exp() - target) / torch.linalg.norm(target))
