"""The codec parts as objectives: the mel VAE (`codec.train=vae`) and the vocoder
(`codec.train=vocoder`), reached through `energytta-train --config codec_vae|vocoder`.

- VAE: L1 between normalised log-mel and reconstruction + `codec.vae_kl_weight` · KL
  (summed over latent elements, divided by mel elements: the per-pixel ratio of LDM's
  `LPIPSWithDiscriminator`), and, when their weights are > 0, a hinge adversarial term from a
  patch discriminator on mels and a discriminator feature-matching term (MelGAN, Kumar et
  al. 2019) standing in for LDM's image LPIPS, which has no mel counterpart.
- Vocoder: multi-resolution STFT distance + log-mel L1 (`energytta.audio.vocoder.vocoder_loss`).

The model is the part itself (no EMA); the export is the part file, `train.out_dir/
codec.safetensors` | `vocoder.safetensors` (point `codec.path` / `codec.vocoder_path` at
it). The discriminator is this objective's own module: its parameters join the optimizer
beside the VAE's and follow the same lr schedule.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from energytta.audio.mel import MelFrontend
from energytta.config import Config
from energytta.errors import UserError
from energytta.train.objectives.base import Objective, TrainContext
from energytta.train.stream import fit_batches

PART_FILES = {"vae": "codec.safetensors", "vocoder": "vocoder.safetensors"}
Critic = Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]


class MelDiscriminator(nn.Module):
    """Patch discriminator on normalised mel images (B, 1, T, F) (PatchGAN, Isola et al. 2017).

    Args:
        width: channels of the first conv (doubled once).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            nn.Conv2d(1, width, 4, 2, 1), nn.Conv2d(width, 2 * width, 4, 2, 1),
            nn.Conv2d(2 * width, 2 * width, 3, 1, 1)])
        self.out = nn.Conv2d(2 * width, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, 1, T, F) -> (patch logits (B, 1, T/4, F/4), intermediate features)."""
        feats = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            feats.append(x)
        return self.out(x), feats


def vae_loss(codec: nn.Module, mel: torch.Tensor, cfg: Config, generator: torch.Generator,
             disc: Critic | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                           dict[str, float]]:
    """The VAE objective on a batch of log-mels.

    Args:
        codec: `VAECodec` (its `mel_image` normalisation and `vae`).
        mel: log-mel (B, n_mels, T); cfg: `codec.vae_*` weights.
        generator: draws the reparametrisation noise.
        disc: the discriminator when an adversarial / feature-matching weight is > 0.
    Returns:
        (loss, normalised mel image x, reconstruction x̂, logs) — x̂ for the discriminator.
    """
    from energytta.audio.vae import kl_divergence

    c = cfg.codec
    x = codec.mel_image(mel)  # (B, 1, T, M)
    rec, mean, logvar = codec.vae(x, generator)
    l1 = (rec - x).abs().mean()
    kl = kl_divergence(mean, logvar).mean() / x[0].numel()
    loss = l1 + c.vae_kl_weight * kl
    logs = {"l1": float(l1.detach()), "kl": float(kl.detach())}
    if disc is not None:
        logits, feats = disc(rec)
        with torch.no_grad():
            real_feats = disc(x)[1]
        adv = -logits.mean()  # hinge generator loss
        fm = sum((f - r).abs().mean() for f, r in zip(feats, real_feats)) / len(feats)
        loss = loss + c.vae_adv_weight * adv + c.vae_perceptual_weight * fm
        logs.update(adv=float(adv.detach()), fm=float(fm.detach()))
    return loss, x, rec, logs


def discriminator_loss(disc: MelDiscriminator, x: torch.Tensor, rec: torch.Tensor
                       ) -> torch.Tensor:
    """Hinge loss: relu(1 - D(x)) + relu(1 + D(x̂)) (Lim & Ye 2017; used by LDM/AudioLDM)."""
    return F.relu(1 - disc(x)[0]).mean() + F.relu(1 + disc(rec.detach())[0]).mean()


class _CodecPart(Objective):
    """Shared parts: wav inputs, the fixed fit clips, fresh-run statistics, the part file."""

    cfg: Config
    fit_mels: list[torch.Tensor]

    def _setup(self, cfg: Config, ctx: TrainContext) -> MelFrontend:
        """Check the part, keep the fit clips' log-mels; returns the mel front-end."""
        if cfg.codec.train != self.kind:
            raise UserError(f"train.objective={self.kind} trains the codec part named by "
                            f"codec.train; set codec.train={self.kind}")
        self.cfg, self.device = cfg, ctx.device
        frontend = MelFrontend(cfg.audio).to(ctx.device)
        with torch.no_grad():  # log-mels of a fixed, seeded set of training clips
            self.fit_mels = [frontend(b["wav"].to(ctx.device)) for b in
                             fit_batches(ctx.dataset, ctx.collate, cfg.train.seed)]
        return frontend

    def inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """-> wav (B, S) on device."""
        return {"wav": batch["wav"].to(self.device)}

    def _from_file(self) -> bool:
        """Whether training starts from an existing part file (fine-tuning)."""
        c = self.cfg.codec
        return bool(c.path if self.kind == "vae" else c.vocoder_path)

    def _save_part(self, state: dict[str, torch.Tensor], keys: tuple[str, ...], out: Path
                   ) -> Path:
        from energytta.audio.vocoder import save_part

        path = out / PART_FILES[self.kind]
        save_part(path, state, self.cfg, self.kind, keys)
        return path


class VAEObjective(nn.Module, _CodecPart):
    """The mel VAE; with a GAN weight > 0, also its patch discriminator (`disc`).

    The discriminator's hinge loss is added to the VAE's loss: it only reaches `disc`
    (it reads x̂ detached), while the VAE's adversarial terms read `disc` through detached
    weights, so one backward pass gives each network its own gradients.
    """

    kind = "vae"

    def __init__(self, cfg: Config, part: nn.Module, disc: MelDiscriminator | None) -> None:
        super().__init__()
        object.__setattr__(self, "model", part)  # trained by the loop, not a submodule
        self.disc = disc

    @classmethod
    def build(cls, cfg: Config, ctx: TrainContext) -> "VAEObjective":
        from energytta.audio.vae import VAECodec

        c = cfg.codec
        part = VAECodec(cfg).to(ctx.device)
        part.vocoder.requires_grad_(False)  # the VAE trains; its vocoder keeps its weights
        gan = c.vae_adv_weight > 0 or c.vae_perceptual_weight > 0
        disc = MelDiscriminator(c.vae_width).to(ctx.device) if gan else None
        objective = cls(cfg, part, disc)
        objective._setup(cfg, ctx)
        return objective

    def fit(self, ctx: TrainContext) -> None:
        if not self._from_file():  # a fine-tuned VAE keeps its statistics
            self.model.fit_mel_stats(self.fit_mels)

    def _frozen_disc(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weights = {k: v.detach() for k, v in self.disc.named_parameters()}
        return functional_call(self.disc, weights, (x,))

    def forward(self, model: nn.Module, wav: torch.Tensor, generator: torch.Generator
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """wav (B, S) -> (VAE loss [+ discriminator loss], logs; "loss" is the VAE's)."""
        with torch.no_grad():
            mel = model.mel(wav)  # (B, n_mels, T)
        critic = self._frozen_disc if self.disc is not None else None
        loss, x, rec, logs = vae_loss(model, mel, self.cfg, generator, critic)
        logs["loss"] = float(loss.detach())
        if self.disc is not None:
            d_loss = discriminator_loss(self.disc, x, rec)
            logs["disc"] = float(d_loss.detach())
            loss = loss + d_loss
        return loss, logs

    def export(self, model: nn.Module, out: Path) -> Path:
        """The VAE file, with latent statistics measured on the fit clips now."""
        from energytta.audio.vae import VAE_KEYS, vae_state

        model.fit_latent_stats(self.fit_mels)
        return self._save_part(vae_state(model), VAE_KEYS, out)


class VocoderObjective(_CodecPart):
    """The trained mel vocoder (multi-resolution STFT + log-mel L1)."""

    kind = "vocoder"
    frontend: MelFrontend

    def __init__(self, part: nn.Module) -> None:
        self.model = part

    @classmethod
    def build(cls, cfg: Config, ctx: TrainContext) -> "VocoderObjective":
        from energytta.audio.vocoder import load_part, trained_vocoder

        voc = trained_vocoder(cfg)
        if cfg.codec.vocoder_path:  # fine-tune an existing vocoder
            load_part(cfg.codec.vocoder_path, voc, cfg, "vocoder", "codec.vocoder_path")
        objective = cls(voc.to(ctx.device))
        objective.frontend = objective._setup(cfg, ctx)
        return objective

    def fit(self, ctx: TrainContext) -> None:
        if not self._from_file():  # a fine-tuned vocoder keeps its statistics
            self.model.fit_stats(self.fit_mels)

    def __call__(self, model: nn.Module, wav: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """wav (B, S) -> (loss, logs); deterministic (`generator` is unused)."""
        from energytta.audio.vocoder import vocoder_loss

        return vocoder_loss(model, self.frontend, wav)

    def export(self, model: nn.Module, out: Path) -> Path:
        from energytta.audio.vocoder import VOCODER_KEYS

        return self._save_part(model.state_dict(), VOCODER_KEYS, out)
