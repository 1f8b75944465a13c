"""`TTAModel`: MAR backbone + per-token head, sized from the config alone.

The model holds no codec or text encoder (both are built from the config elsewhere); its
token geometry (`geometry`, a `TokenGeometry`) comes from the codec's latent grid, which
the codec reports from the config without being built, so it always agrees with
`Codec.latent_shape`.
"""
from __future__ import annotations

import torch
from torch import nn

from energytta.audio.codec import latent_shape
from energytta.config import Config
from energytta.models.geometry import TokenGeometry
from energytta.models.heads import build_head
from energytta.models.mar import build_backbone

__all__ = ["TTAModel", "latent_shape"]  # latent_shape: public since 0.1, now the codec's

MIN_TEXT_POSITIONS = 128  # learned text positions; more if text.max_length is larger


class TTAModel(nn.Module):
    """Backbone and head for one config.

    Args:
        cfg: the full config (audio, codec, model, head).
        text_dim: width of the text encoder's states.
    Attributes:
        geometry: latents <-> tokens, durations and crops; `token_dim`, `max_tokens`,
            `tokens_for`, `frames_for`, `latent_channels`, `latent_freq`, `patch_t`,
            `patch_f` read it.
    """

    def __init__(self, cfg: Config, text_dim: int) -> None:
        super().__init__()
        self.cfg, self.text_dim = cfg, text_dim
        g = self.geometry = TokenGeometry.from_config(cfg)
        encoders = 2 if cfg.text.extra_model else 1  # ConcatTextEncoder: up to 2 × max_length
        max_text = max(MIN_TEXT_POSITIONS, encoders * cfg.text.max_length)
        self.backbone = build_backbone(cfg.model, g.token_dim, g.max_tokens, text_dim,
                                       max_text_len=max_text, freq_tokens=g.freq_tokens)
        self.head = build_head(cfg.head, g.token_dim, self.backbone.out_dim)

    # the geometry's numbers as attributes of the model (the sampler, tools and tests read them)
    @property
    def token_dim(self) -> int:
        return self.geometry.token_dim

    @property
    def max_tokens(self) -> int:
        return self.geometry.max_tokens

    @property
    def latent_channels(self) -> int:
        return self.geometry.channels

    @property
    def latent_freq(self) -> int:
        return self.geometry.freq

    @property
    def patch_t(self) -> int:
        return self.geometry.patch_t

    @property
    def patch_f(self) -> int:
        return self.geometry.patch_f

    def tokens_for(self, seconds: float) -> int:
        """Tokens N for a clip of `seconds` (see `TokenGeometry.tokens_for`)."""
        return self.geometry.tokens_for(seconds)

    def frames_for(self, seconds: float) -> int:
        """Latent frames generated for `seconds` (see `TokenGeometry.frames_for`)."""
        return self.geometry.frames_for(seconds)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor, drop_text: torch.Tensor | None = None,
                return_hidden: bool = False, max_visible: int | None = None,
                noise: torch.Tensor | None = None, guidance: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The backbone's forward (so wrappers such as accelerate/DDP see one module call)."""
        return self.backbone(tokens, mask, text, text_mask, drop_text, return_hidden,
                             max_visible, noise, guidance)
