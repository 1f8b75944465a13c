"""The teacher's diffusion head used once: a one-step token generator (SwiftBrush's student
parameterisation, Nguyen & Tran 2024, §4.1).

A caption-only student starts as the teacher. Its head is the teacher's per-token
denoiser evaluated once at the chain's start t_s (T − 1, or `head.sample_max_t`) on pure
noise x_T, read as a prediction of x_0: x̂_0 = √ᾱ·x_T − √(1−ᾱ)·v̂ for a v-predicting
teacher, (x_T − √(1−ᾱ)·ε̂)/√ᾱ for an ε-predicting one (ill-posed at ᾱ ≈ 0: train the
teacher with v or x_0 prediction, or clamp with `head.clip_x0`). At initialisation that is
the teacher's posterior mean of each token given its features; variational score
distillation (energytta/train/objectives/captiononly.py) then trains it into a sampler.
The parameters are exactly the teacher head's, so its weights load as they are.
"""
from __future__ import annotations

import torch

from teachers.diffusion_head import DiffusionHead


class OneStepHead(DiffusionHead):
    """`DiffusionHead` whose `sample` is one network pass (the `loss` is unchanged).

    Args: as `DiffusionHead` (head_cfg, token_dim, cond_dim).
    """

    def __init__(self, head_cfg, token_dim: int, cond_dim: int) -> None:
        super().__init__(head_cfg, token_dim, cond_dim)
        T = self.train_diffusion.num_timesteps
        self.start_t = head_cfg.sample_max_t if head_cfg.sample_max_t >= 0 else T - 1

    def generate(self, z: torch.Tensor, x_T: torch.Tensor, z_uncond: torch.Tensor | None = None,
                 cfg_scale: float = 1.0) -> torch.Tensor:
        """Differentiable one-step draw. z (M,D) features, x_T (M,d) noise -> x̂_0 (M,d).

        With `z_uncond` and `cfg_scale != 1` the prediction is guided as the teacher's ε is
        (linear in the output, so the same on ε, v or x_0).
        """
        t = torch.full((z.shape[0],), self.start_t, device=z.device, dtype=torch.long)
        d = self.token_dim
        if z_uncond is None or cfg_scale == 1.0:
            out = self.net(x_T, t, self.net.cond_embed(z))[:, :d]
        else:
            both = self.net(torch.cat([x_T, x_T]), torch.cat([t, t]),
                            self.net.cond_embed(torch.cat([z, z_uncond])))[:, :d]
            out_c, out_u = both.chunk(2)
            out = out_u + cfg_scale * (out_c - out_u)
        x0 = self.train_diffusion.x0_from_output(out, x_T, t)
        return x0.clamp(-self.clip_x0, self.clip_x0) if self.clip_x0 > 0 else x0

    @torch.no_grad()
    def sample(self, z: torch.Tensor, temperature: float, generator: torch.Generator | None,
               z_uncond: torch.Tensor | None = None, cfg_scale: float = 1.0) -> torch.Tensor:
        """One token per row of z in one pass; `temperature` scales the input noise."""
        x_T = torch.randn((z.shape[0], self.token_dim), generator=generator, device=z.device,
                          dtype=z.dtype)
        return self.generate(z, temperature * x_T, z_uncond, cfg_scale)
