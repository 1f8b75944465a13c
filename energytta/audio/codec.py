"""Codecs: waveform <-> latents (B, C, T, F) <-> log-mel, plus a vocoder back to audio.

`Codec` fixes the interface the backbone, sampler and pipeline use (docs/architecture.md);
`MelCodec` is the built-in one: the normalised AudioLDM log-mel, vocoded by Griffin-Lim.
Latent statistics live with the codec as buffers so they travel in every checkpoint.

Every codec reports its latent geometry as a `LatentGrid`, from the config alone
(`latent_grid(cfg)`: no weights are built or read), so the model can size its tokens
without building the codec, and the built codec answers with the very same numbers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from energytta.audio.griffinlim import GriffinLim
from energytta.audio.mel import MelFrontend
from energytta.config import Config
from energytta.errors import UserError
from energytta.plugins import load_object

STD_FLOOR = 0.1  # nats; a bin that is silent in every clip must not blow up when normalised


@dataclass(frozen=True)
class LatentGrid:
    """Where a codec's latents (C, T, F) sit on the mel front-end's frames.

    All codecs here encode the log-mel (S // hop frames for S samples) and downsample its
    frames by `factor`, edge-padding a partial last frame: T = ceil((S // hop) / factor).

    Args:
        channels: C; freq: F (latent frequency bins).
        sample_rate, hop_length: the mel front-end (`audio.*`).
        factor: mel frames per latent frame (1: the mel itself).
    """

    channels: int
    freq: int
    sample_rate: int
    hop_length: int
    factor: int = 1

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length / self.factor

    def frames(self, seconds: float) -> int:
        """Latent frames `encode` gives for `seconds` (S = round(seconds · sample_rate),
        so no float truncation)."""
        return -(-(round(seconds * self.sample_rate) // self.hop_length) // self.factor)

    def shape(self, seconds: float) -> tuple[int, int, int]:
        """(C, T, F) of the latents of a `seconds`-long clip."""
        return self.channels, self.frames(seconds), self.freq


class Codec(ABC, nn.Module):
    """Base class. Subclasses implement `latent_grid` and encode / decode / vocode, and
    set `sample_rate` and `grid` (= `latent_grid(cfg)`) when built.

    Attributes:
        sample_rate: Hz of the waveforms `encode` takes and `vocode` returns.
        grid: the latent geometry; `frames_per_second`, `latent_channels` (C) and
            `latent_freq` (F) read it.
    """

    sample_rate: int
    grid: LatentGrid

    @classmethod
    @abstractmethod
    def latent_grid(cls, cfg: Config) -> LatentGrid:
        """The latent geometry this codec has under `cfg`, without building it."""

    @classmethod
    def clip_transform(cls, cfg: Config) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What to apply to each whole clip (S,) before it is cropped, padded or batched;
        None = nothing. A codec whose reference preprocessing normalises per clip says so
        here (AudioLDM: mean and peak of the whole file), since `encode` sees padded batches."""
        return None

    def prepare_clip(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (S,) -> (S,): `clip_transform` of this codec, for callers holding one."""
        return wav

    def pretrained_parts(self) -> dict[str, Path]:
        """{state-dict prefix: local folder} of the frozen parts loaded from pretrained
        folders; checkpoints refer to these by hash instead of copying them
        (`energytta.audio.reference`). A pretrained vocoder (HiFi-GAN) counts."""
        folder = getattr(getattr(self, "vocoder", None), "folder", None)
        return {"vocoder.": folder} if folder is not None else {}

    @property
    def frames_per_second(self) -> float:
        """Latent frames per second of audio."""
        return self.grid.frames_per_second

    @property
    def latent_channels(self) -> int:
        return self.grid.channels

    @property
    def latent_freq(self) -> int:
        return self.grid.freq

    @abstractmethod
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) -> latents (B, C, T, F)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, T, F) -> log-mel (B, n_mels, T_mel)."""

    @abstractmethod
    def vocode(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """log-mel (B, n_mels, T_mel) -> wav (B, S)."""

    def full_scale_db(self) -> float:
        """Frame power (dB) of a full-scale sine in this codec's log-mel: the level that
        rendering holds decoded frames to (`energytta.audio.render`)."""
        return self.frontend.full_scale_db()

    def latent_frames(self, seconds: float) -> int:
        """Latent frames for a clip of `seconds` (the frames `encode` gives for it)."""
        return self.grid.frames(seconds)

    def latent_shape(self, seconds: float) -> tuple[int, int, int]:
        """(C, T, F) of the latents of a `seconds`-long clip."""
        return self.grid.shape(seconds)


class MelCodec(Codec):
    """Normalised log-mel "codec": latent = (log-mel - mean) / std, shaped (B, 1, T, n_mels).

    mean and std are per mel bin (n_mels,) buffers: low bins carry far more energy than high
    ones, so one scalar would leave the high-frequency tokens tiny and the low ones large.
    They start at 0 / 1 (identity) and are set from data by `fit_stats`; `fitted` records that.

    Args:
        cfg: uses `cfg.audio` (front-end) and `cfg.codec.griffin_lim_iters` (vocoder).
    """

    def __init__(self, cfg: Config, load_parts: bool = True) -> None:
        super().__init__()
        a = cfg.audio
        self.frontend = MelFrontend(a)
        if cfg.codec.vocoder == "griffin-lim":
            self.vocoder = GriffinLim(a, n_iter=cfg.codec.griffin_lim_iters)
        else:  # a trained or pretrained vocoder (energytta.audio.vocoder; imports this module)
            from energytta.audio.vocoder import build_vocoder
            self.vocoder = build_vocoder(cfg, load_parts)
        self.sample_rate = a.sample_rate
        self.grid = self.latent_grid(cfg)
        self.register_buffer("mean", torch.zeros(a.n_mels))
        self.register_buffer("std", torch.ones(a.n_mels))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @classmethod
    def latent_grid(cls, cfg: Config) -> LatentGrid:
        """(1, S // hop, n_mels): the mel frames themselves."""
        a = cfg.audio
        return LatentGrid(1, a.n_mels, a.sample_rate, a.hop_length)

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) or (S,) -> log-mel (B, n_mels, S // hop)."""
        return self.frontend(wav if wav.dim() == 2 else wav.reshape(1, -1))

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) -> latents (B, 1, S // hop, n_mels)."""
        return self.normalize(self.mel(wav))

    def normalize(self, logmel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> latents (B, 1, T, n_mels)."""
        z = (logmel - self.mean[:, None]) / self.std[:, None]
        return z.transpose(1, 2).unsqueeze(1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, 1, T, n_mels) -> log-mel (B, n_mels, T)."""
        if latents.dim() != 4 or latents.shape[1] != 1 or latents.shape[-1] != self.latent_freq:
            raise ValueError(f"expected latents (B, 1, T, {self.latent_freq}), "
                             f"got {tuple(latents.shape)}")
        return latents[:, 0].transpose(1, 2) * self.std[:, None] + self.mean[:, None]

    @torch.no_grad()  # 32+ STFT round trips: never worth keeping a graph for
    def vocode(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> wav (B, T·hop) by fast Griffin-Lim (seeded phase)."""
        return self.vocoder(mel, generator=generator)

    @torch.no_grad()
    def fit_stats(self, data: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Set per-bin mean / std from waveforms or log-mels.

        Args:
            data: a tensor or an iterable of tensors (e.g. batches from a loader), each
                either wav (B, S) / (S,) or log-mel (B, n_mels, T). Statistics pool all frames.
        """
        total = torch.zeros(self.mean.numel(), dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        for x in [data] if isinstance(data, torch.Tensor) else data:
            mel = x if x.dim() == 3 else self.mel(x.to(self.mean.device))
            if mel.shape[1] != self.mean.numel():
                raise ValueError(f"expected log-mels (B, {self.mean.numel()}, T), "
                                 f"got {tuple(mel.shape)}")
            mel = mel.detach().double().cpu()
            total += mel.sum(dim=(0, 2))
            total_sq += mel.square().sum(dim=(0, 2))
            count += mel.shape[0] * mel.shape[2]
        if count == 0:
            raise ValueError("fit_stats got no frames")
        mean = total / count
        std = (total_sq / count - mean.square()).clamp(min=0.0).sqrt().clamp(min=STD_FLOOR)
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))
        self.fitted.fill_(True)


# name -> "module:class" of a Codec taking (cfg, load_parts) (docs/codecs.md). Imported on
# use: vae and pretrained subclass `Codec` from this module, and diffusers stays optional.
CODECS: dict[str, str] = {"mel": f"{__name__}:MelCodec",
                          "vae": "energytta.audio.vae:VAECodec",
                          "pca": "energytta.audio.pca:PCACodec",
                          "audioldm": "energytta.audio.pretrained:AudioLDMCodec"}


def codec_class(name: str) -> type[Codec]:
    """The Codec subclass registered as `name`; unknown names raise `UserError`."""
    if name not in CODECS:
        raise UserError(f"unknown codec.name '{name}' (choose from: {', '.join(sorted(CODECS))})")
    return load_object(CODECS[name])


def latent_grid(cfg: Config) -> LatentGrid:
    """The latent geometry of the codec `cfg` names, without building the codec."""
    return codec_class(cfg.codec.name).latent_grid(cfg)


def clip_transform(cfg: Config) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The per-clip waveform step of the codec `cfg` names (`Codec.clip_transform`)."""
    return codec_class(cfg.codec.name).clip_transform(cfg)


def latent_shape(cfg: Config, seconds: float) -> tuple[int, int, int]:
    """(C, T, F) of the codec latents for `seconds` of audio, without building the codec."""
    return latent_grid(cfg).shape(seconds)


def build_codec(cfg: Config, load_parts: bool = True) -> Codec:
    """The codec named by `cfg.codec.name`; unknown names raise `UserError`.

    Args:
        cfg: the full config.
        load_parts: read trained parts (`codec.path` VAE, `codec.vocoder_path` vocoder)
            from their files. False builds them empty, for a caller that loads their
            weights from a model checkpoint (which holds every `codec.*` tensor), so a
            model keeps working after those files move. Pretrained folders (AudioLDM,
            HiFi-GAN) define the architecture and are always read.
    """
    return codec_class(cfg.codec.name)(cfg, load_parts)
