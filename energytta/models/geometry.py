"""`TokenGeometry`: the one object that knows how codec latents become tokens and back.

Latents (B, C, T, F) on the codec's `LatentGrid` are cut into patches of `patch_t` latent
frames × `patch_f` bins; tokens are time-major (`patchify` below, MAR's patchify on a 2-D map), so a clip of n time
patches is the first n · (F / patch_f) tokens. Durations, frame counts, crops and the
model's longest sequence all follow from these numbers, so every caller (training inputs,
sampler, pipeline, validation) asks the geometry instead of redoing the arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from energytta.audio.codec import LatentGrid, latent_grid
from energytta.config import Config
from energytta.config_rules import check_value
from energytta.errors import UserError


@dataclass(frozen=True)
class TokenGeometry:
    """Latents <-> tokens for one codec and patch size, up to `max_seconds` of audio.

    Args:
        grid: the codec's latent geometry (`energytta.audio.codec.latent_grid`).
        patch_t, patch_f: latent frames and frequency bins per token.
        max_seconds: the longest clip (`audio.max_seconds`): the positional tables' length.
    """

    grid: LatentGrid
    patch_t: int
    patch_f: int
    max_seconds: float

    def __post_init__(self) -> None:
        if self.patch_t < 1 or self.patch_f < 1 or self.grid.freq % self.patch_f:
            raise UserError(f"model.patch_f={self.patch_f} must divide the codec's "
                            f"{self.grid.freq} frequency bins (and model.patch_t="
                            f"{self.patch_t} be >= 1)")
        self._tokens(self.max_seconds, "audio.max_seconds")  # at least one token

    @classmethod
    def from_config(cls, cfg: Config) -> "TokenGeometry":
        """The geometry of `cfg` (codec, `model.patch_*`, `audio.max_seconds`)."""
        return cls(latent_grid(cfg), cfg.model.patch_t, cfg.model.patch_f,
                   cfg.audio.max_seconds)

    # -------------------------------------------------------------- sizes
    @property
    def channels(self) -> int:
        """C, latent channels."""
        return self.grid.channels

    @property
    def freq(self) -> int:
        """F, latent frequency bins."""
        return self.grid.freq

    @property
    def freq_tokens(self) -> int:
        """Tokens per time patch (F / patch_f)."""
        return self.grid.freq // self.patch_f

    @property
    def token_dim(self) -> int:
        """d = C · patch_t · patch_f."""
        return self.grid.channels * self.patch_t * self.patch_f

    @property
    def max_tokens(self) -> int:
        """Tokens of a `max_seconds` clip: the longest sequence the model takes."""
        return self._tokens(self.max_seconds, "audio.max_seconds")

    # -------------------------------------------------------------- durations
    def tokens_for_frames(self, frames: int) -> int:
        """Tokens of `frames` latent frames (rounded down to whole time patches)."""
        return frames // self.patch_t * self.freq_tokens

    def _tokens(self, seconds: float, what: str) -> int:
        n = self.tokens_for_frames(self.grid.frames(seconds))
        if n < 1:
            raise UserError(f"{what}={seconds} s is shorter than one token "
                            f"(model.patch_t={self.patch_t} latent frames)")
        return n

    def tokens_for(self, seconds: float) -> int:
        """Tokens N for a clip of `seconds` (rounded down to whole time patches).

        Raises UserError if the clip is longer than `max_seconds` or too short for a token.
        """
        if seconds > self.max_seconds + 1e-9:
            raise UserError(f"duration {seconds} s exceeds this model's audio.max_seconds="
                            f"{self.max_seconds}; ask for a shorter clip")
        return self._tokens(seconds, "duration")

    def frames_for(self, seconds: float) -> int:
        """Latent frames generated for `seconds`: rounded down to whole time patches."""
        return self.tokens_for(seconds) // self.freq_tokens * self.patch_t

    # -------------------------------------------------------------- tensors
    def crop(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T, F) -> (B, C, T', F), T' = T rounded down to whole time patches."""
        T = latents.shape[2]
        return latents[:, :, :T // self.patch_t * self.patch_t]

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T, F) latents, T a multiple of patch_t -> (B, N, d) tokens."""
        return patchify(latents, self.patch_t, self.patch_f)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, d) tokens, N whole time patches -> (B, C, T, F) latents."""
        frames = tokens.shape[1] // self.freq_tokens * self.patch_t
        return unpatchify(tokens, self.channels, frames, self.freq, self.patch_t, self.patch_f)


# ------------------------------------------------------- latents <-> tokens
# Time patches are the outer index and frequency patches the inner one, so the first N
# tokens of a long clip are exactly the tokens of a shorter clip: positional embeddings
# learned for the longest clip are sliced `[:N]` for shorter ones.
def _check(T: int, F: int, pt: int, pf: int) -> None:
    check_value("model.patch_t", pt)
    check_value("model.patch_f", pf)
    if T % pt:
        raise UserError(f"{T} latent frames are not divisible by model.patch_t={pt}; "
                        "crop the latents to a multiple of the time patch")
    if F % pf:
        raise UserError(f"{F} latent frequency bins are not divisible by model.patch_f={pf}; "
                        "pick a patch_f that divides the codec's latent_freq")


def patchify(lat: torch.Tensor, pt: int, pf: int) -> torch.Tensor:
    """Args:
        lat: (B, C, T, F) latents.
        pt, pf: time / frequency patch size.
    Returns (B, N, C·pt·pf) with N = (T/pt)·(F/pf), time patch outer.
    """
    if lat.dim() != 4:
        raise ValueError(f"patchify expects latents (B, C, T, F), got shape {tuple(lat.shape)}")
    B, C, T, F = lat.shape
    if not (pt > 0 and pf > 0 and T % pt == 0 and F % pf == 0):
        _check(T, F, pt, pf)  # the one-line reason (the config rules' ranges, divisibility)
    x = lat.reshape(B, C, T // pt, pt, F // pf, pf)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, T/pt, F/pf, C, pt, pf)
    return x.reshape(B, (T // pt) * (F // pf), C * pt * pf)


def unpatchify(tokens: torch.Tensor, C: int, T: int, F: int, pt: int, pf: int) -> torch.Tensor:
    """Inverse of `patchify`.

    Args:
        tokens: (B, N, C·pt·pf).
        C, T, F: latent shape to rebuild; pt, pf: patch sizes.
    Returns (B, C, T, F).
    """
    _check(T, F, pt, pf)
    B, N, d = tokens.shape
    nt, nf = T // pt, F // pf
    if N != nt * nf or d != C * pt * pf:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not fit latents "
                         f"(C={C}, T={T}, F={F}) with patches {pt}x{pf}: expected "
                         f"({nt * nf}, {C * pt * pf})")
    x = tokens.reshape(B, nt, nf, C, pt, pf).permute(0, 3, 1, 4, 2, 5)  # (B, C, nt, pt, nf, pf)
    return x.reshape(B, C, T, F)
