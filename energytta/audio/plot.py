"""Spectrogram figures (matplotlib, imported lazily so the package loads without it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from energytta.utils import atomic_path


def save_spectrogram_png(mel: np.ndarray | torch.Tensor, path: str | Path, title: str = "",
                         sample_rate: int = 16000, hop_length: int = 160) -> None:
    """Save a log-mel spectrogram as a PNG (atomic write).

    Args:
        mel: (n_mels, T) log-mel, e.g. `MelFrontend(...)(wav)[0]`.
        path: destination .png; parent folders are created.
        title: figure title, drawn as plain text (a prompt's dollar signs are literal).
        sample_rate, hop_length: to label the time axis in seconds.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(mel, torch.Tensor):
        mel = mel.detach().float().cpu().numpy()
    mel = np.asarray(mel)
    if mel.ndim != 2:
        raise ValueError(f"expected a (n_mels, T) spectrogram, got shape {mel.shape}")
    n_mels, frames = mel.shape
    # Figure + Agg canvas directly (no pyplot): no global state, safe in worker threads.
    fig = Figure(figsize=(max(4.0, min(14.0, 2.0 + frames / 80.0)), 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(mel, origin="lower", aspect="auto", interpolation="nearest",
                      cmap="magma", extent=(0.0, frames * hop_length / sample_rate, 0, n_mels))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    if title:  # a prompt is plain text: `$\foo$` must not reach mathtext (it would raise)
        ax.set_title(title, parse_math=False)
    fig.colorbar(image, ax=ax, label="log magnitude")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
