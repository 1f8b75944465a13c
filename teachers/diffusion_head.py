"""The teacher's per-token diffusion head: MAR's DiffLoss with its `SimpleMLPAdaLN` network.

Each masked token x_0 ∈ R^d is modelled by a small diffusion model conditioned on the
backbone feature z ∈ R^D at its position (Li et al. 2024, "Autoregressive Image Generation
without Vector Quantization", §3). The network is an MLP of residual blocks with adaptive
LayerNorm driven by c = emb(t) + emb(z) (DiT-style, zero-initialised modulation).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from energytta.config import DiffusionHeadConfig
from energytta.models.blocks import FinalLayer, ResBlock, init_adaln_mlp
from teachers.diffusion import GaussianDiffusion, create_diffusion


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features (GLIDE/DiT) followed by a 2-layer SiLU MLP."""

    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t (M,) -> (M, width)."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # (M, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class SimpleMLPAdaLN(nn.Module):
    """MAR's denoiser: (x_t (M,d), t (M,), z (M,D)) -> ε̂ (M,d) or [ε̂, v] (M,2d).

    Args:
        token_dim: d. cond_dim: D. width: hidden size. depth: residual blocks.
        out_dim: d, or 2·d when the variance is learned.
    """

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int,
                 out_dim: int) -> None:
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList([ResBlock(width) for _ in range(depth)])
        self.final = FinalLayer(width, out_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # MAR/DiT: xavier linears, zero adaLN and output (every block starts as the identity
        # and the initial prediction is ε̂ = 0), N(0, 0.02) for the timestep MLP.
        init_adaln_mlp(self, self.blocks, self.final)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_emb: torch.Tensor) -> torch.Tensor:
        """x (M,d), t (M,), c_emb = cond_embed(z) (M,width) -> (M,out_dim)."""
        c = self.time_embed(t) + c_emb
        h = self.input_proj(x)
        for block in self.blocks:
            h = block(h, c)
        return self.final(h, c)


class DiffusionHead(nn.Module):
    """Per-token diffusion head with the shared head interface (`loss`, `sample`).

    Args:
        head_cfg: `DiffusionHeadConfig` (depth, width, num_timesteps, noise_schedule,
            sampling_steps, learn_sigma, batch_mul).
        token_dim: d, channels of one audio token.
        cond_dim: D, width of the backbone features z.
    """

    def __init__(self, head_cfg: DiffusionHeadConfig, token_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.batch_mul = max(1, head_cfg.batch_mul)
        self.clip_x0 = head_cfg.clip_x0
        out_dim = 2 * token_dim if head_cfg.learn_sigma else token_dim
        self.net = SimpleMLPAdaLN(token_dim, cond_dim, head_cfg.width, head_cfg.depth, out_dim)
        kinds = dict(prediction=head_cfg.prediction, shift=head_cfg.schedule_shift)
        self.train_diffusion: GaussianDiffusion = create_diffusion(
            head_cfg.num_timesteps, head_cfg.noise_schedule, None, head_cfg.learn_sigma,
            **kinds)
        self.gen_diffusion: GaussianDiffusion = create_diffusion(
            head_cfg.num_timesteps, head_cfg.noise_schedule, head_cfg.sampling_steps,
            head_cfg.learn_sigma, head_cfg.sample_max_t, **kinds)

    def loss(self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising loss averaged over masked tokens (MAR's DiffLoss.forward).

        Only the masked tokens run through the head (MAR runs all B·N and zero-weights the
        visible ones, ~20 % of the work here at MAR's mask ratios), each repeated
        `batch_mul` times with independent (t, ε) — more noise levels per backbone pass,
        which MAR found helps (diffusion_batch_mul = 4).

        Args:
            z: (B,N,D) backbone features. target: (B,N,d) clean tokens.
            mask: (B,N) bool, True = masked = counted in the loss.
            generator: source of t and ε. None draws from torch's global RNG, which is
                acceptable only in training where the trainer seeds it (torch.manual_seed);
                pass a generator wherever reproducibility matters.
        Returns: scalar loss.
        """
        sel = mask.reshape(-1).bool()  # (B·N,); boolean indexing: one host sync on GPU
        z = z.reshape(-1, z.shape[-1])[sel].repeat(self.batch_mul, 1)  # (M,D), M = masked·mul
        x0 = target.reshape(-1, target.shape[-1])[sel].repeat(self.batch_mul, 1)  # (M,d)
        if x0.shape[0] == 0:  # nothing masked: a zero that still touches every parameter
            return z.sum() * 0.0 + sum(p.sum() for p in self.parameters()) * 0.0
        t = torch.randint(0, self.train_diffusion.num_timesteps, (x0.shape[0],),
                          generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        c_emb = self.net.cond_embed(z)
        per_token = self.train_diffusion.training_losses(
            lambda x, tt: self.net(x, tt, c_emb), x0, t, noise)  # (M,)
        return per_token.mean()

    @torch.no_grad()
    def probe_error(self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                    generator: torch.Generator | None, t: int) -> torch.Tensor:
        """x̂_0 MSE of the masked tokens at one fixed training timestep `t` (a diagnostic).

        At high-noise t the token itself is almost gone from x_t, so the error measures
        what the backbone features z say about it (energytta.eval.diagnostics).

        Args:
            z: (B,N,D); target: (B,N,d); mask: (B,N) bool; generator: draws ε.
        Returns: scalar mean over masked tokens and channels.
        """
        sel = mask.reshape(-1).bool()
        zm, x0 = z.reshape(-1, z.shape[-1])[sel], target.reshape(-1, target.shape[-1])[sel]
        tt = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        diff = self.train_diffusion
        x_t = diff.q_sample(x0, tt, noise)
        out = self.net(x_t, tt, self.net.cond_embed(zm))[:, :self.token_dim]
        return ((diff.x0_from_output(out, x_t, tt) - x0) ** 2).mean()

    @torch.no_grad()
    def sample(self, z: torch.Tensor, temperature: float, generator: torch.Generator | None,
               z_uncond: torch.Tensor | None = None, cfg_scale: float = 1.0) -> torch.Tensor:
        """Draw one token per row of z with the respaced reverse chain.

        With `z_uncond` and `cfg_scale != 1` classifier-free guidance acts on ε at every
        step (Ho & Salimans 2022; MAR's forward_with_cfg): the network runs once on
        [z; z_uncond] with the same x_t and ε̂ = ε̂_u + s·(ε̂_c − ε̂_u).

        Args:
            z: (M,D) conditional features. temperature: scales the posterior noise std.
            generator: source of x_T and of every posterior noise draw.
            z_uncond: (M,D) unconditional features (null text), or None.
            cfg_scale: guidance scale s.
        Returns: (M,d) tokens.
        """
        x_T = torch.randn((z.shape[0], self.token_dim), generator=generator, device=z.device,
                          dtype=z.dtype)
        if z_uncond is None or cfg_scale == 1.0:
            c_emb = self.net.cond_embed(z)

            def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.net(x, t, c_emb)
        else:
            c_both = self.net.cond_embed(torch.cat([z, z_uncond], dim=0))  # (2M,width)
            d = self.token_dim

            def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                out_c, out_u = self.net(torch.cat([x, x]), torch.cat([t, t]), c_both).chunk(2)
                # guidance is linear in the output, so it acts the same on ε, v or x̂_0
                eps = out_u[:, :d] + cfg_scale * (out_c[:, :d] - out_u[:, :d])
                return torch.cat([eps, out_c[:, d:]], dim=-1)  # variance from the cond rows
        return self.gen_diffusion.p_sample_loop(model_fn, x_T, temperature, generator,
                                                self.clip_x0)
