"""AudioLDM's VAE as a codec, loaded from a local folder (never from a hub); its HiFi-GAN
vocoder is `energytta.audio.vocoder.HifiGanVocoder`.

AudioLDM (Liu et al. 2023) encodes the same 16 kHz, 64-bin log-mel our `MelFrontend`
computes, as an image (B, 1, T, 64), with a KL autoencoder (diffusers `AutoencoderKL`,
8 latent channels, ×4 down in time and frequency) whose latents are multiplied by
`scaling_factor`; its vocoder is a HiFi-GAN (transformers `SpeechT5HifiGan`) from mel
(B, T, 64) to wav. A diffusers-format AudioLDM checkpoint holds both as `vae/` and
`vocoder/` subfolders: set `codec.name=audioldm codec.path=FOLDER` (and
`codec.vocoder=hifigan` to use its HiFi-GAN). `diffusers` is the optional extra
`pip install energytta[audioldm]`.

With `codec.preprocess=audioldm` (the default) a waveform becomes the VAE's input exactly as
in AudioLDM's own code (`audioldm/audio/tools.py` `read_wav_file` + `wav_to_fbank`, and
`stft.py` `TacotronSTFT`): the clip's mean is removed and it is scaled to peak 0.5, before
it is padded or cropped and again after; the mel uses TacotronSTFT's framing
(`MelFrontend(framing="audioldm")`). A 10.24 s clip (audio.crop_seconds=10.24) gives
AudioLDM's 1,024 mel frames and 256 latent frames. `codec.preprocess=legacy` keeps the raw
waveform and the built-in mel framing (what checkpoints saved before the key used).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from energytta.audio.codec import Codec, LatentGrid
from energytta.audio.folders import model_folder, read_config
from energytta.audio.mel import MelFrontend
from energytta.config import Config
from energytta.errors import UserError
from energytta.utils import require_safetensors


PEAK = 0.5  # AudioLDM scales every clip to this peak (tools.py normalize_wav)


def normalize_wav(wav: torch.Tensor) -> torch.Tensor:
    """AudioLDM's `normalize_wav` on the last axis: remove the mean, scale to peak 0.5.

    Args:
        wav: (..., S) float. Returns the same shape, float32 or wider.
    """
    wav = wav - wav.mean(dim=-1, keepdim=True)
    return wav / (wav.abs().amax(dim=-1, keepdim=True) + 1e-8) * PEAK


def audioldm_waveform(wav: torch.Tensor) -> torch.Tensor:
    """wav (B, S) -> what AudioLDM's `read_wav_file` hands its STFT: `normalize_wav`, then
    (after its pad / crop) peak 0.5 again. On a clip `normalize_wav` already saw before it
    was zero-padded, both steps change nothing (its mean stays 0, its peak 0.5), so the
    padding never shifts the clip. Digital silence stays silence (AudioLDM would divide
    0 by 0)."""
    wav = normalize_wav(wav)
    peak = wav.abs().amax(dim=-1, keepdim=True)
    return torch.where(peak > 0, wav / peak.clamp(min=1e-12) * PEAK, wav)


def load_autoencoder(path: str | Path) -> nn.Module:
    """diffusers `AutoencoderKL` from `path` (or `path/vae`), offline, frozen, eval mode."""
    folder = model_folder(path, "vae", "codec.path")
    require_safetensors(folder, "codec.path")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise UserError("codec.name=audioldm needs diffusers: pip install "
                        "'energytta[audioldm]' (or bash scripts/install.sh test)") from None
    vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    return vae.eval().requires_grad_(False)


class AudioLDMCodec(Codec):
    """AudioLDM's VAE as a codec: latents (B, 8, ceil(T/4), 16) = scaling_factor · posterior mean.

    The diffusers weights are registered submodules; being frozen, checkpoints refer to
    their folder by hash instead of copying them (`pretrained_parts`,
    `energytta.audio.reference`); older checkpoints that hold a copy still load.

    Args:
        cfg: `codec.path` (AudioLDM folder or its `vae/`), `codec.vocoder*`, `audio.*`.
        load_parts: passed to `build_vocoder` (a trained vocoder's file); the folder
            always defines the VAE's architecture, so it is read either way.
    """

    def __init__(self, cfg: Config, load_parts: bool = True) -> None:
        super().__init__()
        from energytta.audio.vocoder import build_vocoder

        a = cfg.audio
        if not cfg.codec.path:
            raise UserError("codec.name=audioldm needs codec.path=<local AudioLDM folder>")
        self.exact = cfg.codec.preprocess == "audioldm"
        self.frontend = MelFrontend(a, framing="audioldm" if self.exact else "legacy")
        self.vae = load_autoencoder(cfg.codec.path)
        self.vae_folder = model_folder(cfg.codec.path, "vae", "codec.path")
        vc = self.vae.config
        self.grid = self.latent_grid(cfg)  # from the folder's config.json, like the VAE
        self.factor = self.grid.factor
        if vc.in_channels != 1 or a.n_mels % self.factor:
            raise UserError(f"codec.path={cfg.codec.path}: expected a 1-channel mel VAE whose "
                            f"downsampling {self.factor} divides audio.n_mels={a.n_mels}")
        self.scaling_factor = float(vc.scaling_factor)
        self.sample_rate = a.sample_rate
        self.vocoder = build_vocoder(cfg, load_parts)

    @classmethod
    def latent_grid(cls, cfg: Config) -> LatentGrid:
        """(latent_channels, ceil((S // hop) / f), n_mels / f), f = 2**(levels - 1), read
        from the VAE's config.json in `codec.path` (no weights are loaded)."""
        if not cfg.codec.path:
            raise UserError("codec.name=audioldm needs codec.path=<local AudioLDM folder>")
        vc = read_config(model_folder(cfg.codec.path, "vae", "codec.path"))
        f = 2 ** (len(vc["block_out_channels"]) - 1)
        a = cfg.audio
        return LatentGrid(int(vc["latent_channels"]), a.n_mels // f, a.sample_rate,
                          a.hop_length, f)

    @classmethod
    def clip_transform(cls, cfg: Config) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """`normalize_wav` under codec.preprocess=audioldm: AudioLDM normalises the whole
        clip before it pads or crops it, so the data pipeline must too."""
        return normalize_wav if cfg.codec.preprocess == "audioldm" else None

    def pretrained_parts(self) -> dict[str, Path]:
        """The VAE's folder (and the HiFi-GAN's, when it vocodes): frozen, so referred to."""
        return {"vae.": self.vae_folder, **super().pretrained_parts()}

    def prepare_clip(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (S,) -> `normalize_wav`(wav) under codec.preprocess=audioldm."""
        return normalize_wav(wav) if self.exact else wav

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) or (S,) -> the VAE's log-mel input (B, n_mels, S // hop)."""
        wav = wav if wav.dim() == 2 else wav.reshape(1, -1)
        if self.exact:  # AudioLDM also clips to [-1, 1]: a no-op at peak 0.5
            wav = audioldm_waveform(wav.float())
        return self.frontend(wav)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) -> latents (B, C, ceil((S // hop) / f), n_mels / f)."""
        mel = self.mel(wav)  # (B, M, T)
        x = mel.transpose(1, 2)  # AudioLDM's image: (B, T, M) with time as height
        pad = -x.shape[1] % self.factor
        if pad:  # edge-pad to whole latent frames
            x = torch.cat([x, x[:, -1:].expand(-1, pad, -1)], dim=1)
        p = next(self.vae.parameters())
        mean = self.vae.encode(x.unsqueeze(1).to(p.dtype)).latent_dist.mean
        return mean.float() * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, T, n_mels / f) -> log-mel (B, n_mels, f·T)."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"expected latents (B, {self.latent_channels}, T, "
                             f"{self.latent_freq}), got {tuple(latents.shape)}")
        p = next(self.vae.parameters())
        image = self.vae.decode((latents / self.scaling_factor).to(p.dtype)).sample
        return image[:, 0].float().transpose(1, 2)

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> wav (B, T·hop) with the configured vocoder."""
        return self.vocoder(mel, generator=generator)
