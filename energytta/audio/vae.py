"""A small convolutional VAE over the 64-bin log-mel, trained here (`configs/codec_vae.yaml`).

AudioLDM-like (Liu et al. 2023, after Rombach et al. 2022's KL autoencoder): the normalised
log-mel image (B, 1, T, n_mels) is downsampled ×2 per level in time and frequency (2 levels
= ×4, AudioLDM's factor) into a few latent channels; the loss is reconstruction L1 plus a
small KL term, with optional adversarial / feature-matching terms
(`energytta.train.objectives.codec`).

`VAECodec` wraps it in the `Codec` interface: encode = posterior mean, normalised per latent
channel by statistics measured after training (the role of AudioLDM's `scaling_factor`), so
the MAR backbone sees unit-scale tokens. All statistics are buffers, so the codec's state
(VAE weights included) travels in every model checkpoint as `codec.*` tensors.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from energytta.audio.codec import Codec, LatentGrid
from energytta.audio.mel import MelFrontend
from energytta.config import Config
from energytta.errors import UserError

VAE_KEYS = ("vae_width", "vae_levels", "vae_latent_channels")
LOGVAR_RANGE = (-30.0, 20.0)  # as LDM's DiagonalGaussianDistribution


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3×3 twice, residual (LDM's ResnetBlock without time embedding).

    Args:
        cin, cout: channels in / out (a 1×1 conv matches the skip when they differ).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(cin), cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            nn.GroupNorm(_groups(cout), cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, cin, T, F) -> (B, cout, T, F)."""
        return self.skip(x) + self.body(x)


class MelVAE(nn.Module):
    """KL-regularised conv autoencoder on (B, 1, T, F) images; T and F divisible by 2**levels.

    Args:
        width: channels at full resolution (doubled per level).
        levels: ×2 downsamplings in time and frequency.
        latent_channels: C of the latent (B, C, T / 2**levels, F / 2**levels).
    """

    def __init__(self, width: int = 32, levels: int = 2, latent_channels: int = 8) -> None:
        super().__init__()
        if width < 1 or levels < 0 or latent_channels < 1:
            raise UserError(f"codec.vae_width={width}, vae_levels={levels}, "
                            f"vae_latent_channels={latent_channels}: need >= 1, >= 0, >= 1")
        chans = [width * 2 ** i for i in range(levels + 1)]
        self.factor, self.latent_channels = 2 ** levels, latent_channels
        enc: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1)]
        for i in range(levels):  # resblock, then strided conv to the next level's width
            enc += [ResBlock(chans[i], chans[i]), nn.Conv2d(chans[i], chans[i + 1], 3, 2, 1)]
        top = chans[-1]
        enc += [ResBlock(top, top), nn.GroupNorm(_groups(top), top), nn.SiLU(),
                nn.Conv2d(top, 2 * latent_channels, 3, padding=1)]  # mean and log-variance
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(latent_channels, top, 3, padding=1), ResBlock(top, top)]
        for i in reversed(range(levels)):  # nearest ×2 + conv (no checkerboard artefacts)
            dec += [nn.Upsample(scale_factor=2.0, mode="nearest"),
                    nn.Conv2d(chans[i + 1], chans[i], 3, padding=1), ResBlock(chans[i], chans[i])]
        dec += [nn.GroupNorm(_groups(width), width), nn.SiLU(), nn.Conv2d(width, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, T, F) -> posterior mean and log-variance, each (B, C, T/f, F/f)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, T/f, F/f) -> x (B, 1, T, F)."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparametrised pass: x (B, 1, T, F) -> (reconstruction, mean, logvar)."""
        mean, logvar = self.encode(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.decode(mean + (0.5 * logvar).exp() * eps), mean, logvar


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, e^logvar) || N(0, I)) summed over all but the batch dim -> (B,)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class VAECodec(Codec):
    """The trained VAE as a codec: wav -> log-mel -> latents (B, C, ceil(T/f), n_mels/f).

    Buffers: `mel_mean`/`mel_std` (n_mels,) normalise the VAE input; `latent_mean`/
    `latent_std` (C,) normalise its output (`fit_latent_stats`, after training). Clips whose
    frame count is not a multiple of f are edge-padded before encoding; `decode` returns
    f × latent frames.

    Args:
        cfg: `audio.*`, `codec.vae_*`, and the vocoder keys (`codec.vocoder*`); the weights
            come from `codec.path` (a file from `energytta-train --config codec_vae`).
    """

    def __init__(self, cfg: Config, load_parts: bool = True) -> None:
        super().__init__()
        from energytta.audio.vocoder import build_vocoder, load_part

        a, c = cfg.audio, cfg.codec
        self.frontend = MelFrontend(a)
        self.vae = MelVAE(c.vae_width, c.vae_levels, c.vae_latent_channels)
        f = self.vae.factor
        if a.n_mels % f:
            raise UserError(f"audio.n_mels={a.n_mels} must be divisible by 2**codec.vae_levels"
                            f"={f}")
        self.factor, self.n_mels, self.sample_rate = f, a.n_mels, a.sample_rate
        self.grid = self.latent_grid(cfg)
        self.register_buffer("mel_mean", torch.zeros(a.n_mels))
        self.register_buffer("mel_std", torch.ones(a.n_mels))
        self.register_buffer("latent_mean", torch.zeros(c.vae_latent_channels))
        self.register_buffer("latent_std", torch.ones(c.vae_latent_channels))
        if not load_parts:
            pass  # the caller loads every codec.* tensor from a model checkpoint
        elif c.path:
            load_part(c.path, self, cfg, "vae", "codec.path")
        elif c.train != "vae":
            raise UserError("codec.name=vae needs codec.path=<codec .safetensors> (train one: "
                            "energytta-train --config codec_vae)")
        # after load_part: the VAE file holds no vocoder
        self.vocoder = build_vocoder(cfg, load_parts)

    @classmethod
    def latent_grid(cls, cfg: Config) -> LatentGrid:
        """(vae_latent_channels, ceil((S // hop) / f), n_mels / f), f = 2**vae_levels."""
        a, c = cfg.audio, cfg.codec
        f = 2 ** c.vae_levels
        return LatentGrid(c.vae_latent_channels, a.n_mels // f, a.sample_rate, a.hop_length, f)

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) or (S,) -> log-mel (B, n_mels, S // hop)."""
        return self.frontend(wav if wav.dim() == 2 else wav.reshape(1, -1))

    def mel_image(self, logmel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> normalised (B, 1, T', n_mels), T' = T edge-padded to f."""
        x = ((logmel - self.mel_mean[:, None]) / self.mel_std[:, None]).transpose(1, 2)
        pad = -x.shape[1] % self.factor
        if pad:
            x = torch.cat([x, x[:, -1:].expand(-1, pad, -1)], dim=1)
        return x.unsqueeze(1)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) -> latents (B, C, ceil((S // hop) / f), n_mels / f) (posterior mean)."""
        mean, _ = self.vae.encode(self.mel_image(self.mel(wav)))
        return (mean - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, T, n_mels / f) -> log-mel (B, n_mels, f·T)."""
        if latents.dim() != 4 or latents.shape[1] != self.latent_channels \
                or latents.shape[-1] != self.latent_freq:
            raise ValueError(f"expected latents (B, {self.latent_channels}, T, "
                             f"{self.latent_freq}), got {tuple(latents.shape)}")
        z = latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        x = self.vae.decode(z)[:, 0].transpose(1, 2)  # (B, n_mels, f·T)
        return x * self.mel_std[:, None] + self.mel_mean[:, None]

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """log-mel (B, n_mels, T) -> wav (B, T·hop) with the configured vocoder."""
        return self.vocoder(mel, generator=generator)

    @torch.no_grad()
    def fit_mel_stats(self, mels: Iterable[torch.Tensor]) -> None:
        """Per-bin mean / std of the VAE input from log-mels [(B, n_mels, T), ...]."""
        flat = torch.cat([m.transpose(1, 2).reshape(-1, self.n_mels) for m in mels]).double()
        self.mel_mean.copy_(flat.mean(0).to(self.mel_mean))
        self.mel_std.copy_(flat.std(0).clamp(min=0.1).to(self.mel_std))

    @torch.no_grad()
    def fit_latent_stats(self, mels: Iterable[torch.Tensor]) -> None:
        """Per-channel mean / std of posterior means over log-mels [(B, n_mels, T), ...]."""
        zs = [self.vae.encode(self.mel_image(m))[0] for m in mels]  # (B, C, T', F') each
        flat = torch.cat([z.transpose(0, 1).reshape(self.latent_channels, -1) for z in zs], 1)
        self.latent_mean.copy_(flat.double().mean(1).to(self.latent_mean))
        self.latent_std.copy_(flat.double().std(1).clamp(min=1e-3).to(self.latent_std))


def vae_state(codec: VAECodec) -> dict[str, torch.Tensor]:
    """The tensors of a VAE file: everything in the codec but the vocoder (which has its
    own file), so that `VAECodec` can load it before building the vocoder."""
    return {k: v for k, v in codec.state_dict().items() if not k.startswith("vocoder.")}
