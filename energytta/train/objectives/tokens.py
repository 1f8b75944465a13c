"""What the teacher and student objectives share: a TTAModel trained on codec tokens.

`TokenParts.build` makes, in this order (the order fixes the initial weights), the frozen
text encoder (cached per caption: `energytta.text.TextCache`), the frozen codec and the
model; `TokenObjective` turns batches of wavs (or cached latents) into model inputs, fits
the codec's statistics, renders the training samples, validates (held-out loss + the
diagnostics of `energytta.eval.diagnostics`) and exports the inference file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energytta.checkpoint import kind_for, load_weights, save_inference
from energytta.config import Config
from energytta.errors import UserError
from energytta.text import TextCache
from energytta.train.objectives.base import Objective, TrainContext, ValContext, mean_loss
from energytta.train.stream import fit_batches
from energytta.utils import atomic_path


@dataclass
class TokenParts:
    """The pieces of a text-to-audio run: text cache, frozen codec, TTAModel, their device."""

    text: TextCache
    text_dim: int
    codec: nn.Module
    model: nn.Module
    device: torch.device

    @classmethod
    def build(cls, cfg: Config, device: torch.device) -> "TokenParts":
        from energytta.audio.codec import build_codec
        from energytta.models.tta import TTAModel
        from energytta.text import build_text_encoder

        encoder = build_text_encoder(cfg.text).to(device).eval()
        codec = build_codec(cfg).to(device).eval()
        model = TTAModel(cfg, int(encoder.dim)).to(device)
        return cls(TextCache(encoder), int(encoder.dim), codec, model, device)


class TokenObjective(Objective):
    """Base of the text-to-audio objectives; `build` sets `parts` (see `TokenParts`)."""

    ema = True
    cfg: Config
    parts: TokenParts

    @property
    def kind(self) -> str:  # type: ignore[override]
        return kind_for(self.cfg)

    @property
    def model(self) -> nn.Module:  # type: ignore[override]
        return self.parts.model

    @property
    def codec(self) -> nn.Module:  # type: ignore[override]
        return self.parts.codec

    @property
    def text(self) -> TextCache:  # type: ignore[override]
        return self.parts.text

    @property
    def text_dim(self) -> int:  # type: ignore[override]
        return self.parts.text_dim

    # -------------------------------------------------------------- data
    def inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """-> latents (B, C, T, F) cropped to whole time patches, text (B, L, Dt), text_mask."""
        device = self.parts.device
        if "latents" in batch:
            lat = batch["latents"].to(device)
            text, mask = batch["text"].to(device), batch["text_mask"].to(device)
        else:
            with torch.no_grad():
                lat = self.codec.encode(batch["wav"].to(device))
            text, mask = self.text(batch["captions"])
        g = self.model.geometry
        lat = g.crop(lat)
        n = g.tokens_for_frames(lat.shape[2])
        if n > g.max_tokens:
            raise UserError(f"training crops give {n} tokens but audio.max_seconds="
                            f"{self.cfg.audio.max_seconds} allows {g.max_tokens}; "
                            "raise audio.max_seconds or lower audio.crop_seconds")
        return {"latents": lat, "text": text, "text_mask": mask}

    def fit(self, ctx: TrainContext) -> None:
        """The codec's statistics: from the latent cache when training on one, else the mel
        codec's per-bin statistics fitted on a fixed, seeded set of training clips."""
        if hasattr(ctx.dataset, "codec_state"):  # cached latents: use the cache's codec
            load_weights(self.codec, ctx.dataset.codec_state, Path(self.cfg.data.train),
                         "codec")
        elif hasattr(self.codec, "fit_stats"):
            wavs = [b["wav"].to(ctx.device) for b in
                    fit_batches(ctx.dataset, ctx.collate, self.cfg.train.seed)]
            self.codec.fit_stats(wavs)

    # -------------------------------------------------------------- outputs
    def validate(self, model: nn.Module, ctx: ValContext) -> dict[str, float]:
        """Held-out loss plus the time diagnostics (`energytta.eval.diagnostics`)."""
        from energytta.eval.diagnostics import validate_tta

        out = mean_loss(self, model, ctx)
        out.update(validate_tta(self.cfg, model, ctx))
        return out

    @torch.no_grad()
    def generate(self, model: nn.Module, folder: Path) -> Path | None:
        """`train.sample_prompts` at `sample.*` (seeded) -> folder/NN.wav, NN.png, prompts.txt."""
        from energytta.audio.io import write_wav
        from energytta.audio.plot import save_spectrogram_png
        from energytta.audio.render import tokens_to_audio
        from energytta.sampling import DecodeSettings, decode

        prompts, s, a = list(self.cfg.train.sample_prompts), self.cfg.sample, self.cfg.audio
        if not prompts:
            return None
        text, mask = self.text(prompts)
        gen = torch.Generator(device=text.device).manual_seed(s.seed)
        tokens = decode(model.backbone, model.head, text, mask, model.tokens_for(s.duration),
                        DecodeSettings.of(s, one_pass=None), generator=gen)  # (B, N, d)
        mel, wav = tokens_to_audio(tokens, model.geometry, self.codec, generator=gen)
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            for i, prompt in enumerate(prompts):
                write_wav(tmp / f"{i:02d}.wav", wav[i].float().cpu().numpy(), a.sample_rate)
                save_spectrogram_png(mel[i].float().cpu(), tmp / f"{i:02d}.png", title=prompt,
                                     sample_rate=a.sample_rate, hop_length=a.hop_length)
            (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
        return folder

    def export(self, model: nn.Module, out: Path) -> Path:
        """`out/model.safetensors`: the (EMA) weights, the codec's buffers and the config."""
        return save_inference(out / "model.safetensors", model, self.codec, self.cfg,
                              self.kind, text_dim=self.text_dim)
