"""Gaussian diffusion for the teacher's per-token head (MAR's DiffLoss, after IDDPM).

* Cosine noise schedule over `num_timesteps` (Nichol & Dhariwal 2021, eq. 17) and
  ε-prediction (Ho et al. 2020).
* Optional learned variance ("learn_sigma", IDDPM §3.1): the network returns 2·d channels,
  the second half `v ∈ [-1, 1]` interpolates the log-variance between β̃_t (posterior) and
  β_t (eq. 15); it is trained with the hybrid loss L_simple + L_vlb where the VLB term
  sees a stop-gradient mean (eq. 16), exactly as MAR does.
* Without learned variance the reverse step uses MAR's default fixed variance, the "large"
  choice σ_t² = β_t (β̃_1 at t = 0).
* Sampling may clamp the predicted x_0 (`clip_x0`, IDDPM's clip_denoised with a range):
  MAR does not, but at t = 999 the cosine schedule has ᾱ ≈ 2e-9, so x̂_0 = (x_t − √(1−ᾱ)ε̂)/√ᾱ
  multiplies any ε̂ error by ~2e4; a briefly trained (or untrained) head then emits tokens
  in the thousands. Latents are unit-scale, so a loose clamp only removes that failure.
* What the network predicts (`prediction`): ε (DDPM, MAR), v = √ᾱ·ε − √(1−ᾱ)·x_0
  (Salimans & Ho 2022, "Progressive distillation", §4 and App. D) or x_0 itself. ε is
  ill-posed at zero SNR (see `create_diffusion`); v and x_0 are not, so with them the
  chain starts at t = T-1 with no `sample_max_t` workaround. The loss is the MSE of the
  predicted quantity (v-MSE = (1+SNR)·x_0-MSE: high-noise steps, where only the backbone
  knows what the token holds, keep weight instead of vanishing as in ε-MSE = SNR·x_0-MSE).
* SNR shift (`shift`, simple diffusion, Hoogeboom et al. 2023 §3.1; SD3 eq. 23):
  SNR'(t) = SNR(t)/shift², i.e. ᾱ'_t = ᾱ_t / (ᾱ_t + shift²·(1 − ᾱ_t)). A token of d
  dimensions whose values share a component (a clip's loudness) exposes that component
  with √d times the per-dimension SNR; shifting the whole schedule toward noise asks the
  backbone for it at more training steps.
* Respacing (IDDPM §4): keep `sampling_steps` evenly spaced timesteps and recompute
  β'_i = 1 − ᾱ_{k_i} / ᾱ_{k_{i-1}}, so the respaced chain has the same marginals ᾱ at
  the kept steps. The network always sees the *original* timestep index.

All tables are float64 numpy (accuracy, as in IDDPM); they are turned into tensors of the
input's device/dtype on use. Every random draw takes a `torch.Generator`.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from energytta.config_rules import PREDICTIONS, check_value  # noqa: F401 (re-exported)
from energytta.errors import UserError

# model_fn(x_t (M,d), t (M,) long original timesteps) -> (M,d) ε or (M,2d) [ε, v]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """β_t from ᾱ(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008 (IDDPM eq. 17).

    β is clipped at `max_beta` to avoid the singularity at t = T (IDDPM §3.2).
    """
    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    T = num_timesteps
    betas = [1 - alpha_bar((i + 1) / T) / alpha_bar(i / T) for i in range(T)]
    return np.minimum(np.array(betas, dtype=np.float64), max_beta)


def named_betas(schedule: str, num_timesteps: int) -> np.ndarray:
    """β schedule by name: "cosine" (default, MAR) or "linear" (Ho et al., 1e-4 → 0.02)."""
    check_value("head.noise_schedule", schedule)
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    scale = 1000 / num_timesteps  # "linear": keeps the schedule similar for any T (IDDPM)
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def shifted_betas(betas: np.ndarray, shift: float, max_beta: float = 0.999) -> np.ndarray:
    """β of the schedule whose SNR is SNR(t)/shift² (ᾱ' = ᾱ / (ᾱ + shift²(1−ᾱ))).

    shift = 1 returns `betas` unchanged (bit for bit, so old checkpoints sample as before).
    """
    check_value("head.schedule_shift", shift)
    if shift == 1.0:
        return betas
    ab = np.cumprod(1.0 - betas)
    ab = ab / (ab + shift ** 2 * (1.0 - ab))
    prev = np.append(1.0, ab[:-1])
    return np.minimum(1.0 - ab / prev, max_beta)


def space_timesteps(num_timesteps: int, sampling_steps: int,
                    max_t: int | None = None) -> list[int]:
    """`sampling_steps` evenly spaced indices of [0, max_t], both ends kept (IDDPM's "100").

    `max_t` (default T-1) is where the sampling chain starts; see `create_diffusion`.
    """
    max_t = num_timesteps - 1 if max_t is None or max_t < 0 else max_t
    if not 0 <= max_t < num_timesteps:
        raise UserError(f"config key 'head.sample_max_t': {max_t} must be in "
                        f"[0, head.num_timesteps - 1 = {num_timesteps - 1}] (or -1)")
    if not 1 <= sampling_steps <= max_t + 1:
        raise UserError(f"config key 'head.sampling_steps': {sampling_steps} must be in "
                        f"[1, {max_t + 1}] (the timesteps 0..{max_t} the chain can use)")
    if sampling_steps == 1:
        return [0]
    stride = max_t / (sampling_steps - 1)
    return sorted({round(i * stride) for i in range(sampling_steps)})


class GaussianDiffusion:
    """A (possibly respaced) Gaussian diffusion on (M, d) token batches.

    Args:
        betas: (T',) float64 noise schedule of this chain.
        timestep_map: (T',) original timestep of each step of this chain (identity if None);
            the network is conditioned on these.
        learn_sigma: the model returns [pred, v] (2·d channels) and v sets the variance.
        prediction: what the first d output channels are: "eps", "v" or "x0".
    """

    def __init__(self, betas: np.ndarray, timestep_map: list[int] | None = None,
                 learn_sigma: bool = False, prediction: str = "eps") -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        check_value("head.prediction", prediction)
        self.prediction = prediction
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = list(timestep_map or range(self.num_timesteps))
        self.learn_sigma = learn_sigma
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)  # ᾱ_t
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])  # ᾱ_{t-1}
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        # posterior q(x_{t-1} | x_t, x_0) = N(c1·x_0 + c2·x_t, β̃_t) (DDPM eqs. 6-7)
        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.posterior_variance = betas * (1.0 - ab_prev) / (1.0 - ab)
        # β̃_0 = 0: clip its log with β̃_1 (IDDPM), the chain ends there anyway
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(ab_prev) / (1.0 - ab)
        self.posterior_mean_coef2 = (1.0 - ab_prev) * np.sqrt(alphas) / (1.0 - ab)
        # MAR's fixed ("large") variance: β_t, with β̃_1 at t = 0 for a better decoder NLL
        self.fixed_log_variance = np.log(np.append(first, betas[1:]))
        self.log_betas = np.log(betas)
        self._cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def _at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at t as (M,1) on like's device/dtype (broadcasts over channels).

        Tables are moved to the device once and cached, so sampling loops do no copies.
        """
        key = (name, like.device, like.dtype)
        if key not in self._cache:
            table = torch.from_numpy(getattr(self, name))
            self._cache[key] = table.to(device=like.device, dtype=like.dtype)
        return self._cache[key][t].unsqueeze(-1)

    # --------------------------------------------------------------- forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε  (DDPM eq. 4). x0, noise (M,d); t (M,) long."""
        return (self._at("sqrt_alphas_cumprod", t, x0) * x0
                + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (M,d) and clipped log-variance (M,1) of q(x_{t-1} | x_t, x_0)."""
        mean = (self._at("posterior_mean_coef1", t, x_t) * x0
                + self._at("posterior_mean_coef2", t, x_t) * x_t)
        return mean, self._at("posterior_log_variance_clipped", t, x_t)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t, written as in IDDPM for stability."""
        return (self._at("sqrt_recip_alphas_cumprod", t, x_t) * x_t
                - self._at("sqrt_recipm1_alphas_cumprod", t, x_t) * eps)

    def x0_from_output(self, pred: torch.Tensor, x_t: torch.Tensor,
                       t: torch.Tensor) -> torch.Tensor:
        """The network's prediction (M,d) of this chain's kind -> x̂_0 (M,d).

        v: x_0 = √ᾱ·x_t − √(1−ᾱ)·v (Salimans & Ho 2022, eq. 24), exact at every t.
        """
        if self.prediction == "x0":
            return pred
        if self.prediction == "v":
            return (self._at("sqrt_alphas_cumprod", t, x_t) * x_t
                    - self._at("sqrt_one_minus_alphas_cumprod", t, x_t) * pred)
        return self.predict_x0(x_t, t, pred)

    def eps_from_x0(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε̂ = (x_t − √ᾱ_t·x̂_0) / √(1−ᾱ_t): the score, up to −1/√(1−ᾱ), that a prediction of
        any kind implies (used by variational score distillation). t must be > 0."""
        return ((x_t - self._at("sqrt_alphas_cumprod", t, x_t) * x0)
                / self._at("sqrt_one_minus_alphas_cumprod", t, x_t))

    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t as a (M,1) column of `like`'s dtype and device."""
        return self._at("alphas_cumprod", t, like)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output at (x_0, t, ε): ε, v or x_0 (M,d)."""
        if self.prediction == "x0":
            return x0
        if self.prediction == "v":  # v = √ᾱ·ε − √(1−ᾱ)·x_0
            return (self._at("sqrt_alphas_cumprod", t, x0) * noise
                    - self._at("sqrt_one_minus_alphas_cumprod", t, x0) * x0)
        return noise

    # --------------------------------------------------------------- reverse process
    def p_mean_log_variance(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                            clip_x0: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """p(x_{t-1} | x_t) from the network output `out` ((M,d) or (M,2d) [pred, v]).

        `clip_x0 > 0` clamps the predicted x_0 to [-clip_x0, clip_x0] before the posterior
        (IDDPM's clip_denoised with a range for unit-variance latents; 0 = off, as MAR).
        Returns the mean (M,d) and the log-variance ((M,d) learned or (M,1) fixed).
        """
        d = x_t.shape[-1]
        if self.learn_sigma:
            # IDDPM eq. 15: log σ² = f·log β_t + (1−f)·log β̃_t with f = (v+1)/2
            frac = (out[:, d:] + 1) / 2
            log_var = (frac * self._at("log_betas", t, x_t)
                       + (1 - frac) * self._at("posterior_log_variance_clipped", t, x_t))
        else:
            log_var = self._at("fixed_log_variance", t, x_t)
        x0 = self.x0_from_output(out[:, :d], x_t, t)
        if clip_x0 > 0:
            x0 = x0.clamp(-clip_x0, clip_x0)
        mean, _ = self.q_posterior(x0, x_t, t)
        return mean, log_var

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Chain step indices (M,) -> the original timesteps the network is conditioned on."""
        key = ("timestep_map", t.device, torch.long)
        if key not in self._cache:
            self._cache[key] = torch.tensor(self.timestep_map, device=t.device, dtype=torch.long)
        return self._cache[key][t]

    @torch.no_grad()
    def p_sample_loop(self, model_fn: ModelFn, noise: torch.Tensor, temperature: float = 1.0,
                      generator: torch.Generator | None = None,
                      clip_x0: float = 0.0) -> torch.Tensor:
        """Ancestral sampling x_T = noise -> x_0 over this chain's steps.

        Args:
            model_fn: network in ModelFn form (sees original timesteps).
            noise: (M,d) starting x_T.
            temperature: scales the std of every posterior noise draw (MAR's p_sample:
                x_{t-1} = μ + σ·temperature·z); the starting noise is left unscaled.
            generator: source of every noise draw.
            clip_x0: clamp range of the predicted x_0 (0 = off), see p_mean_log_variance.
        Returns: (M,d) samples.
        """
        x = noise
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            out = model_fn(x, self.model_timesteps(t))
            mean, log_var = self.p_mean_log_variance(out, x, t, clip_x0)
            if i == 0:  # no noise on the last step (DDPM Algorithm 2)
                return mean
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + torch.exp(0.5 * log_var) * z * temperature
        return x

    # ---------------------------------------------------------------------- training
    def training_losses(self, model_fn: ModelFn, x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor) -> torch.Tensor:
        """Per-token loss (M,): MSE on ε / v / x_0 (L_simple), + L_vlb when the variance is
        learned.

        Args:
            model_fn: network in ModelFn form (t here is already an original timestep
                because training uses the full chain).
            x0: (M,d) clean tokens; t: (M,) long; noise: (M,d) ε.
        """
        x_t = self.q_sample(x0, t, noise)
        out = model_fn(x_t, self.model_timesteps(t))
        d = x0.shape[-1]
        loss = ((self.target(x0, t, noise) - out[:, :d]) ** 2).mean(dim=-1)
        if self.learn_sigma:
            # IDDPM eq. 16: the VLB trains only the variance (stop-gradient on ε)
            frozen = torch.cat([out[:, :d].detach(), out[:, d:]], dim=-1)
            loss = loss + self._vlb_bits(frozen, x0, x_t, t)
        return loss

    def _vlb_bits(self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
        """L_{t-1} per token in bits (M,): KL(q(x_{t-1}|x_t,x_0) ‖ p) for t>0, −log p(x_0|x_1)
        (discretised Gaussian, DDPM §3.3) for t=0; mean over channels as in IDDPM."""
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        mean, log_var = self.p_mean_log_variance(out, x_t, t)
        kl = 0.5 * (-1.0 + log_var - true_log_var + torch.exp(true_log_var - log_var)
                    + (true_mean - mean) ** 2 * torch.exp(-log_var))
        nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        per = torch.where((t == 0).unsqueeze(-1), nll, kl.expand_as(nll))
        return per.mean(dim=-1) / math.log(2.0)


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                         log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of a Gaussian integrated over a bin of width 2/255 around x (DDPM §3.3);
    the outermost bins (|x| > 0.999) extend to ±∞, as in IDDPM."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (centered + 1.0 / 255.0))
    cdf_min = torch.special.ndtr(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def respace(base: GaussianDiffusion, use_timesteps: list[int]) -> GaussianDiffusion:
    """A chain over `use_timesteps` of `base` with β'_i = 1 − ᾱ_{k_i}/ᾱ_{k_{i-1}} (IDDPM §4),
    so that ᾱ' equals base's ᾱ at every kept step."""
    kept = sorted(use_timesteps)
    ab = base.alphas_cumprod[kept]
    prev = np.append(1.0, ab[:-1])
    return GaussianDiffusion(1.0 - ab / prev, timestep_map=[base.timestep_map[k] for k in kept],
                             learn_sigma=base.learn_sigma, prediction=base.prediction)


def create_diffusion(num_timesteps: int = 1000, schedule: str = "cosine",
                     sampling_steps: int | None = None,
                     learn_sigma: bool = False, max_t: int | None = None,
                     prediction: str = "eps", shift: float = 1.0) -> GaussianDiffusion:
    """The training chain (sampling_steps None) or its respaced sampling chain.

    Args:
        num_timesteps: training steps T (MAR: 1000).
        schedule: "cosine" (MAR) or "linear".
        sampling_steps: number of evenly spaced steps to keep (MAR: 100); None = all.
        learn_sigma: see GaussianDiffusion.
        max_t: first (noisiest) timestep of the sampling chain, which starts there from
            x ~ N(0, I); None or -1 = T-1 (MAR). Why start lower: at t = T-1 the cosine
            schedule has ᾱ ≈ 2e-9, so an ε-predicting network carries no information about
            x_0 and x̂_0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ turns an ε̂ error e into e/√ᾱ; the first
            step's posterior mean then multiplies it by ~300 (Lin et al. 2024, "Common
            diffusion noise schedules and sample steps are flawed", §3: ε-prediction cannot
            work at zero terminal SNR). A briefly trained head (ε̂ error ~0.1) sends the
            chain off the data manifold for good. Starting where ᾱ is ~0.02 (t = 900)
            drops a √ᾱ·x_0 ≈ 0.15·x_0 term from x_T, a small, bounded approximation.
            With v- or x_0-prediction the chain can start at T-1.
        prediction: "eps", "v" or "x0" (see GaussianDiffusion).
        shift: SNR shift of the schedule (see `shifted_betas`); 1 = none.
    """
    check_value("head.num_timesteps", num_timesteps)
    betas = shifted_betas(named_betas(schedule, num_timesteps), shift)
    base = GaussianDiffusion(betas, learn_sigma=learn_sigma, prediction=prediction)
    full = max_t is None or max_t < 0 or max_t == num_timesteps - 1
    if sampling_steps is None or (sampling_steps == num_timesteps and full):
        return base
    return respace(base, space_timesteps(num_timesteps, sampling_steps, max_t))
