"""The student's one-step energy-score head (EAR, Shao et al. 2025, `models/scoreloss.py`).

A per-token MLP *generator*: the backbone feature z of one token forms the residual
stream, a noise vector ε drives the AdaLN shift/scale/gate of every residual block, and
one forward pass maps (z, ε) to a token. Different ε give different samples of the
token's conditional distribution. It is trained with the energy score, a strictly proper
scoring rule (Gneiting & Raftery 2007), so it needs no likelihood and no diffusion steps.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from energytta.config import EnergyHeadConfig
from energytta.config_rules import check_section
from energytta.models.blocks import FinalLayer, ResBlock, init_adaln_mlp

# Added inside the square root of ||x - y||^2: keeps d/dx ||x - y||^alpha finite where two
# samples coincide (at initialisation every sample is identical: the output layer is zero).
_NORM_EPS = 1e-8


class EnergyHead(nn.Module):
    """One-step generator head trained with the energy score.

    Args:
        head_cfg: `cfg.head` (depth, width, noise_dim, noise_type, num_samples, alpha,
            train_temperature).
        token_dim: d, the size of one audio token (C·pt·pf).
        cond_dim: D, the backbone's output width.
    """

    def __init__(self, head_cfg: EnergyHeadConfig, token_dim: int, cond_dim: int) -> None:
        super().__init__()
        check_section(head_cfg, "head")  # the ranges of the config rules
        self.token_dim, self.cond_dim = token_dim, cond_dim
        self.noise_dim, self.noise_type = head_cfg.noise_dim, head_cfg.noise_type
        self.num_samples = head_cfg.num_samples
        self.alpha = head_cfg.alpha
        self.train_temperature = head_cfg.train_temperature
        w = head_cfg.width
        self.cond_proj = nn.Linear(cond_dim, w)
        # EAR embeds the noise with one Linear; a small MLP gives the modulations a
        # non-linear function of ε at negligible cost.
        self.noise_embed = nn.Sequential(nn.Linear(self.noise_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(ResBlock(w) for _ in range(head_cfg.depth))
        self.final = FinalLayer(w, token_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier everywhere; zero AdaLN outputs (gates) and the output layer (DiT/EAR)."""
        init_adaln_mlp(self, self.blocks, self.final)

    # ------------------------------------------------------------------ generator
    def draw_noise(self, n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """ε (n, noise_dim), unit variance per coordinate, on `like`'s device/dtype."""
        shape, kw = (n, self.noise_dim), dict(device=like.device, dtype=like.dtype)
        if self.noise_type == "gaussian":
            return torch.randn(shape, generator=generator, **kw)
        # uniform[-1, 1]·√3 has variance 1, like the Gaussian (EAR uses uniform[-0.5, 0.5]).
        return (torch.rand(shape, generator=generator, **kw) * 2 - 1) * math.sqrt(3.0)

    def forward(self, z: Tensor, noise: Tensor, temperature: float = 1.0) -> Tensor:
        """One pass of the generator.

        Args:
            z: (M, D) backbone features, one row per token.
            noise: (M, noise_dim) ε.
            temperature: multiplies the noise-driven AdaLN *shift* of every residual
                block, exactly as EAR's `ResBlock` does at inference. Scale, gate and the
                final layer's modulation are untouched, so 1.0 reproduces the trained
                distribution and values below 1 narrow it.
        Returns:
            (M, token_dim) tokens.
        """
        x = self.cond_proj(z)
        e = self.noise_embed(noise)
        for block in self.blocks:
            x = block(x, e, shift_mult=temperature)  # EAR: temperature scales the shift
        return self.final(x, e)

    # ------------------------------------------------------------------ training
    def _distance(self, a: Tensor, b: Tensor) -> Tensor:
        """||a - b||^alpha over the last axis, as (||a - b||^2 + eps)^(alpha/2)."""
        return ((a - b).pow(2).sum(-1) + _NORM_EPS).pow(self.alpha / 2)

    def energy_score(self, samples: Tensor, target: Tensor) -> Tensor:
        """Per-token energy-score loss (lower is better), EAR's scaling.

        With m samples x_1..x_m of a token and its target y (Gneiting & Raftery 2007,
        eq. 22, with EAR's temperature τ on the sample-to-sample term):

            ES_τ(x, y) = (1/m) Σ_i ||x_i − y||^α − τ / (2 m (m−1)) Σ_{i≠j} ||x_i − x_j||^α

        EAR (`ScoreLoss.energy_score`, m = 2) minimises
        ||x_1−y||^α + ||x_2−y||^α − τ·||x_1−x_2||^α = 2·ES_τ, so we return 2·ES_τ: for
        m = 2 this is exactly EAR's loss. It is strictly proper for τ = 1 and α ∈ (0, 2).

        Args:
            samples: (m, M, d) generator samples.
            target: (M, d) data tokens.
        Returns:
            (M,) loss per token.
        """
        m = samples.shape[0]
        to_target = self._distance(samples, target.unsqueeze(0)).mean(0)  # (M,)
        i, j = torch.triu_indices(m, m, offset=1, device=samples.device)
        # Σ_{i≠j} = 2 Σ_{i<j}; the mean over the m(m−1)/2 pairs i<j is Σ_{i≠j} / (m(m−1)).
        pairwise = self._distance(samples[i], samples[j]).mean(0)  # (M,)
        return 2 * to_target - self.train_temperature * pairwise

    def loss(self, z: Tensor, target: Tensor, mask: Tensor,
             generator: torch.Generator | None = None) -> Tensor:
        """Energy-score loss averaged over the masked tokens only.

        Args:
            z: (B, N, D) backbone features.
            target: (B, N, d) ground-truth tokens.
            mask: (B, N) bool, True = masked (predicted) token.
            generator: draws the m noise vectors per token (global RNG when None).
        Returns:
            scalar loss.
        """
        zm, y = z[mask], target[mask]  # (M, D), (M, d)
        if zm.shape[0] == 0:
            # Zero that still touches every parameter: DDP and the optimizer see a graph.
            return z.sum() * 0.0 + sum(p.sum() for p in self.parameters()) * 0.0
        m = self.num_samples
        noise = self.draw_noise(m * zm.shape[0], zm, generator)
        samples = self(zm.repeat(m, 1), noise).view(m, zm.shape[0], -1)  # (m, M, d)
        return self.energy_score(samples, y).mean()

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, z: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None,
               z_uncond: Tensor | None = None, cfg_scale: float = 1.0) -> Tensor:
        """Draw one token per feature row in a single pass.

        Classifier-free guidance interpolates the *features* before the pass (EAR
        `ScoreLoss.sample`): z_g = z_uncond + s·(z − z_uncond); the generator has no score
        to guide, so this is the one place the energy head differs from the diffusion head.

        Args:
            z: (M, D) conditional features.
            temperature: see `forward` (scales the noise-driven AdaLN shift).
            generator: draws ε.
            z_uncond: (M, D) unconditional features, or None (no guidance).
            cfg_scale: s; 1.0 means no guidance.
        Returns:
            (M, token_dim) tokens.
        """
        if z_uncond is not None and cfg_scale != 1.0:
            z = z_uncond + cfg_scale * (z - z_uncond)
        noise = self.draw_noise(z.shape[0], z, generator)
        return self(z, noise, temperature)
