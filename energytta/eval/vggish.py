"""VGGish (Hershey et al. 2017) for the Fréchet Audio Distance (Kilgour et al. 2019).

Module and parameter names follow harritaylor/torchvggish (`features.{0,3,6,8,11,13}`,
`embeddings.{0,2,4}`) so its state dict (`vggish-10086976.pth`) loads strictly. As in
audioldm_eval's FAD (use_pca=False, use_activation=False) the PCA/quantisation
post-processor is not applied and the last ReLU is dropped: 128-d raw embeddings.

Front-end (vggish_input.waveform_to_examples): 16 kHz, 25 ms periodic-Hann frames every
10 ms, |FFT| with n_fft 512, 64 HTK-mel bands 125-7500 Hz (triangles in the mel domain, no
area normalisation, DC bin zeroed), log(mel + 0.01), cut into non-overlapping 0.96 s examples
of 96 x 64.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

SAMPLE_RATE, WIN, HOP, N_FFT, BANDS, FMIN, FMAX = 16000, 400, 160, 512, 64, 125.0, 7500.0
EXAMPLE_FRAMES = 96  # 0.96 s
LOG_OFFSET = 0.01


def htk_mel(hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def vggish_mel_matrix() -> np.ndarray:
    """(n_fft // 2 + 1, 64) weights of mel_features.spectrogram_to_mel_matrix."""
    bins_mel = htk_mel(np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1))
    edges = np.linspace(htk_mel(FMIN), htk_mel(FMAX), BANDS + 2)
    lower = (bins_mel[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])
    upper = (edges[None, 2:] - bins_mel[:, None]) / (edges[2:] - edges[1:-1])
    w = np.maximum(0.0, np.minimum(lower, upper))
    w[0, :] = 0.0
    return w


def waveform_to_examples(wav: torch.Tensor) -> torch.Tensor:
    """wav (S,) at 16 kHz -> log-mel examples (N, 1, 96, 64); short clips are zero-padded
    to one example."""
    need = (EXAMPLE_FRAMES - 1) * HOP + WIN
    if wav.shape[-1] < need:
        wav = nn.functional.pad(wav, (0, need - wav.shape[-1]))
    frames = wav.unfold(0, WIN, HOP)  # (T, 400), no padding (mel_features.frame)
    window = torch.as_tensor(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN),
                             dtype=wav.dtype, device=wav.device)
    mag = torch.fft.rfft(frames * window, n=N_FFT).abs()  # (T, 257)
    mel_w = torch.as_tensor(vggish_mel_matrix(), dtype=wav.dtype, device=wav.device)
    log_mel = torch.log(mag @ mel_w + LOG_OFFSET)  # (T, 64)
    n = log_mel.shape[0] // EXAMPLE_FRAMES
    return log_mel[: n * EXAMPLE_FRAMES].reshape(n, 1, EXAMPLE_FRAMES, BANDS)


class VGGish(nn.Module):
    """log-mel examples (N, 1, 96, 64) -> embeddings (N, 128)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.ReLU()]
                channels = v
        self.features = nn.Sequential(*layers)
        # The official last ReLU (index 5) is omitted: FAD uses pre-activation embeddings.
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(),
                                        nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 128))

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        x = self.features(examples)  # (N, 512, 6, 4)
        # TF flattens channels-last: (N, H, W, C) -> (N, 6*4*512), as torchvggish does.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


def load_vggish(path: str | Path) -> VGGish:
    """VGGish in eval mode from a torchvggish state dict (PCA `pproc.*` keys are ignored)."""
    from energytta.eval.panns import read_state_dict

    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("pproc.")}
    model = VGGish()
    model.load_state_dict(state, strict=True)
    return model.eval()
