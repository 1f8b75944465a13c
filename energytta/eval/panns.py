"""PANNs CNN14 (Kong et al. 2020, "PANNs: Large-Scale Pretrained Audio Neural Networks"),
the 16 kHz variant audioldm_eval uses for FD (2048-d `fc1` features) and KL/IS (527 logits).

The module tree and parameter names follow the official `pytorch/models.py` of
qiuqiangkong/audioset_tagging_cnn so that its checkpoint (`Cnn14_16k_mAP=0.438.pth`, a
dict with a "model" state dict) loads with `strict=True`:
`spectrogram_extractor.stft.conv_{real,imag}.weight`, `logmel_extractor.melW`, `bn0`,
`conv_block1..6.{conv1,conv2,bn1,bn2}`, `fc1`, `fc_audioset`.

The front-end is torchlibrosa's: a power STFT written as two conv1d layers whose kernels are
the Hann-windowed real and imaginary DFT rows (centre=True, reflect padding), librosa's
slaney mel filterbank (fmin 50, fmax 8000) and 10·log10(max(x, 1e-10)) with no top_db.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from energytta.audio.mel import mel_filterbank

SAMPLE_RATE, WINDOW, HOP, MEL_BINS, FMIN, FMAX, CLASSES = 16000, 512, 160, 64, 50.0, 8000.0, 527
AMIN = 1e-10
WIDTHS = (64, 128, 256, 512, 1024, 2048)


def periodic_hann(n: int) -> np.ndarray:
    """scipy/librosa `get_window("hann", n, fftbins=True)`."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


class STFT(nn.Module):
    """torchlibrosa.stft.STFT: wav (B, S) -> real, imag (B, 1, T, n_fft // 2 + 1)."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        bins = n_fft // 2 + 1
        self.conv_real = nn.Conv1d(1, bins, n_fft, stride=hop_length, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, n_fft, stride=hop_length, bias=False)
        # DFT rows exp(-2πi jk / n) times the analysis window, one output channel per bin k.
        j, k = np.meshgrid(np.arange(n_fft), np.arange(bins))  # (bins, n_fft)
        angle = 2 * np.pi * j * k / n_fft
        win = periodic_hann(n_fft)[None, :]
        with torch.no_grad():
            self.conv_real.weight.copy_(torch.from_numpy(np.cos(angle) * win)[:, None, :])
            self.conv_imag.weight.copy_(torch.from_numpy(-np.sin(angle) * win)[:, None, :])
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.pad(wav[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        real = self.conv_real(x).transpose(1, 2)[:, None]  # (B, 1, T, bins)
        imag = self.conv_imag(x).transpose(1, 2)[:, None]
        return real, imag


class Spectrogram(nn.Module):
    """Power spectrogram (B, 1, T, bins) via `STFT` (torchlibrosa.stft.Spectrogram)."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.stft = STFT(n_fft, hop_length)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        real, imag = self.stft(wav)
        return real ** 2 + imag ** 2


class LogmelFilterBank(nn.Module):
    """Power spectrogram (B, 1, T, bins) -> dB log-mel (B, 1, T, n_mels), ref 1, top_db None."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                 fmax: float) -> None:
        super().__init__()
        fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)  # (n_mels, bins)
        self.melW = nn.Parameter(torch.from_numpy(fb.T.copy()), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(power, self.melW)
        return 10.0 * torch.log10(torch.clamp(mel, min=AMIN))  # - 10·log10(max(amin, ref=1)) = 0


class ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU, then 2-D average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, kernel_size=pool)


class Cnn14(nn.Module):
    """wav (B, S) at 16 kHz -> {"2048": (B, 2048) embedding, "logits": (B, 527)}.

    Args:
        sample_rate, window, hop, mel_bins, fmin, fmax, classes: the 16 kHz AudioCaps
            convention of audioldm_eval by default.
        widths: the six conv blocks' channels (the official 64 ... 2048; smaller in tests).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, window: int = WINDOW, hop: int = HOP,
                 mel_bins: int = MEL_BINS, fmin: float = FMIN, fmax: float = FMAX,
                 classes: int = CLASSES, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.spectrogram_extractor = Spectrogram(window, hop)
        self.logmel_extractor = LogmelFilterBank(sample_rate, window, mel_bins, fmin, fmax)
        self.bn0 = nn.BatchNorm2d(mel_bins)
        widths = (1, *widths)
        for i in range(6):
            setattr(self, f"conv_block{i + 1}", ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(widths[-1], widths[-1])
        self.fc_audioset = nn.Linear(widths[-1], classes)

    def forward(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.logmel_extractor(self.spectrogram_extractor(wav))  # (B, 1, T, mel)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)  # BN over mel bins
        for i in range(6):
            x = getattr(self, f"conv_block{i + 1}")(x, (2, 2) if i < 5 else (1, 1))
        x = x.mean(dim=3)  # (B, 2048, T') average over frequency
        x = x.max(dim=2).values + x.mean(dim=2)  # (B, 2048) max + mean pooling over time
        x = F.relu(self.fc1(x))
        return {"2048": x, "logits": self.fc_audioset(x)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint (plain or under "model"),
    read with `weights_only=True` (no arbitrary pickle code runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # e.g. a training checkpoint that also pickles a sampler's numpy state
        raise ValueError(
            "it holds non-tensor objects that weights_only loading refuses; if you trust the "
            "file, convert it once: python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{path}', weights_only=False)['model'], "
            "'model.safetensors')\" and pass the .safetensors file") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    return state


def load_cnn14(path: str | Path) -> Cnn14:
    """CNN14 in eval mode with the official checkpoint at `path` loaded strictly."""
    model = Cnn14()
    model.load_state_dict(read_state_dict(path), strict=True)
    return model.eval()
