"""`TTAModel`: MAR backbone + per-token head, sized from the config alone.

The model holds no codec or text encoder (both are built from the config elsewhere); the
token geometry comes from `latent_shape`, which must agree with `Codec.latent_shape`.
"""
from __future__ import annotations

import torch
from torch import nn

from energytta.config import Config
from energytta.errors import UserError
from energytta.models.heads import build_head
from energytta.models.mar import MARBackbone

MIN_TEXT_POSITIONS = 128  # learned text positions; more if text.max_length is larger


def latent_shape(cfg: Config, seconds: float) -> tuple[int, int, int]:
    """(C, T, F) of the codec latents for `seconds` of audio, without building the codec.

    Args:
        cfg: the full config (`codec.name`, `audio.*`).
        seconds: clip duration.
    """
    if cfg.codec.name == "mel":  # normalised log-mel: C=1, T = S // hop, F = n_mels
        samples = round(seconds * cfg.audio.sample_rate)  # as the codec: no float truncation
        return 1, samples // cfg.audio.hop_length, cfg.audio.n_mels
    if cfg.codec.name == "vae":  # trained VAE: C latent channels, ×2**levels down in T and F
        from energytta.audio.vae import vae_latent_shape
        return vae_latent_shape(cfg, seconds)
    if cfg.codec.name == "audioldm":  # AudioLDM's VAE: read from its config.json
        from energytta.audio.pretrained import audioldm_latent_shape
        return audioldm_latent_shape(cfg, seconds)
    raise UserError(f"codec.name '{cfg.codec.name}' has no known latent shape "
                    "(valid: mel, vae, audioldm)")


class TTAModel(nn.Module):
    """Backbone and head for one config.

    Args:
        cfg: the full config (audio, codec, model, head).
        text_dim: width of the text encoder's states.
    """

    def __init__(self, cfg: Config, text_dim: int) -> None:
        super().__init__()
        self.cfg, self.text_dim = cfg, text_dim
        self.patch_t, self.patch_f = cfg.model.patch_t, cfg.model.patch_f
        C, _, F = latent_shape(cfg, 1.0)
        if self.patch_t < 1 or self.patch_f < 1 or F % self.patch_f:
            raise UserError(f"model.patch_f={self.patch_f} must divide the codec's {F} "
                            f"frequency bins (and model.patch_t={self.patch_t} be >= 1)")
        self.latent_channels, self.latent_freq = C, F
        self.token_dim = C * self.patch_t * self.patch_f
        self.max_tokens = self._tokens(cfg.audio.max_seconds, "audio.max_seconds")
        max_text = max(MIN_TEXT_POSITIONS, cfg.text.max_length)
        self.backbone = MARBackbone(cfg.model, self.token_dim, self.max_tokens, text_dim,
                                    max_text_len=max_text)
        self.head = build_head(cfg.head, self.token_dim, self.backbone.out_dim)

    def _tokens(self, seconds: float, what: str) -> int:
        _, T, F = latent_shape(self.cfg, seconds)
        steps = T // self.patch_t
        if steps < 1:
            raise UserError(f"{what}={seconds} s is shorter than one token "
                            f"(model.patch_t={self.patch_t} latent frames)")
        return steps * (F // self.patch_f)

    def frames_for(self, seconds: float) -> int:
        """Latent frames the model generates for `seconds`: rounded down to whole time patches."""
        return self.tokens_for(seconds) // (self.latent_freq // self.patch_f) * self.patch_t

    def tokens_for(self, seconds: float) -> int:
        """Tokens N for a clip of `seconds` (rounded down to whole time patches).

        Raises UserError if the clip is longer than `audio.max_seconds` or too short for a token.
        """
        if seconds > self.cfg.audio.max_seconds + 1e-9:
            raise UserError(f"duration {seconds} s exceeds this model's audio.max_seconds="
                            f"{self.cfg.audio.max_seconds}; ask for a shorter clip")
        return self._tokens(seconds, "duration")

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor, drop_text: torch.Tensor | None = None,
                return_hidden: bool = False, max_visible: int | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The backbone's forward (so wrappers such as accelerate/DDP see one module call)."""
        return self.backbone(tokens, mask, text, text_mask, drop_text, return_hidden,
                             max_visible)
