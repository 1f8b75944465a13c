"""A compact linear codec: the normalised log-mel, cut into patches of a few frames, on its
top principal components.

The mel codec's tokens are 5 frames × 64 bins = 320 numbers, and the head must model that
whole distribution. Mel patches of natural and synthetic sounds are highly correlated (a
sound's spectrum changes slowly within 50 ms), so a handful of principal directions keep
most of their variance: each token becomes `codec.pca_dim` numbers, the backbone sees the
same number of tokens, and the head models a far smaller distribution.

Latents are (B, pca_dim, T / pca_frames, 1): one latent frame per patch, the components as
channels (so `model.patch_t = model.patch_f = 1` gives one token per patch). The basis is
orthonormal and all components share one scale, so squared error on latents is squared
error on the normalised mel within the kept subspace, times a constant: losses stay
comparable to the mel codec's up to that constant plus the truncation floor.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from energytta.audio.codec import LatentGrid, MelCodec
from energytta.config import Config


class PCACodec(MelCodec):
    """Normalised log-mel patches of `codec.pca_frames` frames on `codec.pca_dim` components.

    Buffers (fitted by `fit_stats`, saved in every checkpoint): the mel codec's per-bin
    mean/std, then `pca_mean` (D,) and `pca_basis` (D, k) of the patches (D = frames ×
    n_mels, k = pca_dim) and `pca_scale`, the one scale that gives the components unit
    variance on average.
    """

    def __init__(self, cfg: Config, load_parts: bool = True) -> None:
        super().__init__(cfg, load_parts)
        self.frames, k = cfg.codec.pca_frames, cfg.codec.pca_dim
        d = self.frames * cfg.audio.n_mels
        self.register_buffer("pca_mean", torch.zeros(d))
        self.register_buffer("pca_basis", torch.eye(d)[:, :k].contiguous())
        self.register_buffer("pca_scale", torch.ones(()))

    @classmethod
    def latent_grid(cls, cfg: Config) -> LatentGrid:
        """(pca_dim, ceil((S // hop) / pca_frames), 1)."""
        a, c = cfg.audio, cfg.codec
        return LatentGrid(c.pca_dim, 1, a.sample_rate, a.hop_length, factor=c.pca_frames)

    def _patches(self, z: torch.Tensor) -> torch.Tensor:
        """mel latents (B, 1, T, M) -> patches (B, ceil(T / frames), frames · M), the last
        one edge-padded (as every codec here pads a partial last frame)."""
        B, _, T, M = z.shape
        pad = -T % self.frames
        z = F.pad(z, (0, 0, 0, pad), mode="replicate") if pad else z
        return z.reshape(B, (T + pad) // self.frames, self.frames * M)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, S) -> latents (B, k, ceil((S // hop) / frames), 1)."""
        p = self._patches(super().encode(wav))  # (B, T', D)
        c = (p - self.pca_mean) @ self.pca_basis / self.pca_scale  # (B, T', k)
        return c.transpose(1, 2).unsqueeze(-1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, k, T', 1) -> log-mel (B, n_mels, T' · frames)."""
        k = self.pca_basis.shape[1]
        if latents.dim() != 4 or latents.shape[1] != k or latents.shape[-1] != 1:
            raise ValueError(f"expected latents (B, {k}, T, 1), got {tuple(latents.shape)}")
        c = latents[..., 0].transpose(1, 2)  # (B, T', k)
        p = c * self.pca_scale @ self.pca_basis.T + self.pca_mean  # (B, T', D)
        B, T, _ = p.shape
        z = p.reshape(B, T * self.frames, -1)  # (B, T, M) normalised mel
        return z.transpose(1, 2) * self.std[:, None] + self.mean[:, None]

    @torch.no_grad()
    def fit_stats(self, data: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """The mel codec's per-bin statistics, then the principal components of the
        normalised patches of the same clips (wav (B, S) / (S,) or log-mel (B, n_mels, T))."""
        data = [data] if isinstance(data, torch.Tensor) else list(data)
        super().fit_stats(data)
        mels = [x if x.dim() == 3 else self.mel(x.to(self.mean.device)) for x in data]
        p = torch.cat([self._patches(self.normalize(m)).reshape(-1, self.pca_mean.numel())
                       for m in mels]).double().cpu()  # (n, D)
        mean = p.mean(0)
        cov = (p - mean).T @ (p - mean) / max(1, p.shape[0] - 1)  # (D, D)
        eigval, eigvec = torch.linalg.eigh(cov)  # ascending
        k = self.pca_basis.shape[1]
        top, basis = eigval.flip(0)[:k].clamp(min=0), eigvec.flip(1)[:, :k]
        self.pca_mean.copy_(mean.to(self.pca_mean))
        self.pca_basis.copy_(basis.to(self.pca_basis))
        self.pca_scale.copy_(top.mean().sqrt().clamp(min=1e-6).to(self.pca_scale))
        self.fitted.fill_(True)

    def kept_variance(self, logmel: torch.Tensor) -> float:
        """The share of the patches' variance (about the fitted mean) the components keep,
        on log-mels (B, n_mels, T): 1 - ‖p − decode(encode(p))‖² / ‖p − mean‖²."""
        p = self._patches(self.normalize(logmel)) - self.pca_mean
        rec = p @ self.pca_basis @ self.pca_basis.T
        return float(1 - (p - rec).square().sum() / p.square().sum().clamp(min=1e-12))
