"""Teacher diffusion: schedule, respacing, posterior, the MLP-AdaLN head, load_teacher."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from energytta.config import DiffusionHeadConfig, load_config
from energytta.errors import UserError
from teachers.diffusion import create_diffusion, space_timesteps
from teachers.diffusion_head import DiffusionHead


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _head(token_dim: int = 2, cond_dim: int = 4, randomize: bool = True,
          **overrides) -> DiffusionHead:
    cfg = dataclasses.replace(DiffusionHeadConfig(), depth=2, width=32, sampling_steps=10,
                              **overrides)
    torch.manual_seed(0)
    head = DiffusionHead(cfg, token_dim, cond_dim)
    if randomize:  # zero-init outputs would make ε̂ ≡ 0 and hide differences
        g = _gen(1)
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return head


# ------------------------------------------------------------------ schedule
def test_cosine_schedule_goes_from_one_to_zero():
    diff = create_diffusion(1000, "cosine")
    ab = diff.alphas_cumprod
    assert diff.num_timesteps == 1000 and len(diff.betas) == 1000
    assert np.all(np.diff(ab) < 0)
    assert ab[0] > 0.9999 and ab[-1] < 1e-4
    assert diff.betas.max() <= 0.999


def test_respacing_keeps_alphas_cumprod_at_kept_steps():
    base = create_diffusion(1000, "cosine")
    spaced = create_diffusion(1000, "cosine", sampling_steps=100)
    kept = space_timesteps(1000, 100)
    assert len(kept) == 100 and kept[0] == 0 and kept[-1] == 999
    assert spaced.timestep_map == kept and spaced.num_timesteps == 100
    np.testing.assert_allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-10)
    assert space_timesteps(1000, 1) == [0]
    assert create_diffusion(1000, sampling_steps=1000).timestep_map == list(range(1000))
    with pytest.raises(UserError, match="head.sampling_steps"):
        space_timesteps(1000, 1001)
    with pytest.raises(UserError, match="head.noise_schedule"):
        create_diffusion(10, "sigmoid")


def test_sample_max_t_starts_the_chain_lower():
    base = create_diffusion(1000, "cosine")
    spaced = create_diffusion(1000, "cosine", sampling_steps=100, max_t=900)
    assert spaced.timestep_map[0] == 0 and spaced.timestep_map[-1] == 900
    assert len(spaced.timestep_map) == 100
    np.testing.assert_allclose(spaced.alphas_cumprod,
                               base.alphas_cumprod[spaced.timestep_map], rtol=1e-10)
    assert create_diffusion(1000, "cosine", 100, max_t=-1).timestep_map[-1] == 999
    assert create_diffusion(1000, "cosine", 1000, max_t=999).timestep_map == list(range(1000))
    with pytest.raises(UserError, match="head.sample_max_t"):
        space_timesteps(1000, 100, 1000)
    with pytest.raises(UserError, match="head.sampling_steps"):
        space_timesteps(1000, 100, 50)


def test_first_step_amplifies_eps_errors_300x_from_t999_but_not_from_t900():
    """Why `head.sample_max_t` exists: at t = 999 (ᾱ ≈ 2e-9, zero terminal SNR) the first
    reverse step's mean moves ~316x an error on ε̂; started at t = 900, ~0.17x."""
    base = create_diffusion(1000, "cosine")
    ideal_scale = np.sqrt(1 - base.alphas_cumprod)  # ε̂ = √(1−ᾱ)·x_t is ideal for N(0, I) data

    def gain(max_t: int) -> float:
        diff = create_diffusion(1000, "cosine", 100, max_t=max_t)
        x = torch.randn(256, 8, generator=_gen(5), dtype=torch.float64)
        t = torch.full((256,), diff.num_timesteps - 1, dtype=torch.long)
        ideal = float(ideal_scale[max_t]) * x
        clean = diff.p_mean_log_variance(ideal, x, t)[0]
        off = diff.p_mean_log_variance(ideal + 0.01, x, t)[0]
        return float((off - clean).abs().mean() / 0.01)

    assert gain(999) > 300
    assert gain(900) < 0.2


def test_posterior_matches_gaussian_conditioning_and_q_sample_inverts():
    diff = create_diffusion(1000, "cosine")
    g = _gen()
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 5, 100, 500, 900, 999])
    x_t = diff.q_sample(x0, t, noise)
    # x_0 is recovered exactly from x_t and the true ε
    torch.testing.assert_close(diff.predict_x0(x_t, t, noise), x0)
    # q(x_{t-1}|x_t,x_0) by conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0
    ab = torch.from_numpy(diff.alphas_cumprod)[t].unsqueeze(-1)
    ab_prev = torch.from_numpy(diff.alphas_cumprod_prev)[t].unsqueeze(-1)
    a = ab / ab_prev
    cov = a.sqrt() * (1 - ab_prev)
    mean_ref = ab_prev.sqrt() * x0 + cov / (1 - ab) * (x_t - ab.sqrt() * x0)
    var_ref = (1 - ab_prev) - cov ** 2 / (1 - ab)
    mean, log_var = diff.q_posterior(x0, x_t, t)
    torch.testing.assert_close(mean, mean_ref)
    torch.testing.assert_close(log_var.exp(), var_ref)
    # a perfect ε-predictor gives the true posterior mean
    p_mean, _ = diff.p_mean_log_variance(noise, x_t, t)
    torch.testing.assert_close(p_mean, mean_ref)


def test_q_sample_marginal_statistics():
    diff = create_diffusion(1000, "cosine")
    g = _gen()
    x0 = torch.full((20000, 1), 2.0)
    t = torch.full((20000,), 400)
    x_t = diff.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    ab = diff.alphas_cumprod[400]
    assert abs(x_t.mean().item() - 2.0 * ab ** 0.5) < 0.03
    assert abs(x_t.var().item() - (1 - ab)) < 0.03


@pytest.mark.parametrize("steps", [10, 100])
def test_sampler_reproduces_gaussian_data_with_the_exact_eps(steps):
    """For x_0 ~ N(μ, s²), E[ε | x_t] is known in closed form; the chain must return N(μ, s²)."""
    mu, s = 3.0, 0.5
    ab_full = torch.from_numpy(create_diffusion(1000).alphas_cumprod)

    def exact_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = ab_full[t].unsqueeze(-1).to(x.dtype)
        return (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s * s + 1 - ab)

    diff = create_diffusion(1000, "cosine", sampling_steps=steps)
    g = _gen()
    out = diff.p_sample_loop(exact_eps, torch.randn(20000, 1, generator=g), 1.0, g)
    assert abs(out.mean().item() - mu) < 0.03
    assert abs(out.std().item() - s) < 0.06
    cold = diff.p_sample_loop(exact_eps, torch.randn(20000, 1, generator=g), 0.0, g)
    assert cold.std().item() < 0.5 * s  # temperature scales the posterior noise only


def test_clip_x0_bounds_an_untrained_head():
    head = _head(randomize=False)  # zero-init: ε̂ = 0, so x̂_0 = x_T / √ᾱ_999 ≈ 2e4·x_T
    z = torch.randn(64, 4, generator=_gen(2))
    head.clip_x0 = 0.0
    assert head.sample(z, 1.0, _gen(1)).abs().max() > 100
    head.clip_x0 = 10.0
    assert head.sample(z, 1.0, _gen(1)).abs().max() < 15


def test_vlb_is_zero_for_the_exact_posterior():
    diff = create_diffusion(1000, "cosine", learn_sigma=True)
    g = _gen()
    x0, noise = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    t = torch.tensor([3, 50, 400, 998])
    x_t = diff.q_sample(x0, t, noise)
    exact = torch.cat([noise, -torch.ones_like(noise)], dim=-1)  # v = -1 -> σ² = β̃_t
    assert diff._vlb_bits(exact, x0, x_t, t).abs().max() < 1e-4
    wrong = torch.cat([noise + 0.5, torch.zeros_like(noise)], dim=-1)
    assert (diff._vlb_bits(wrong, x0, x_t, t) > 1e-3).all()


# ------------------------------------------------------------------ head
def test_head_shapes_and_init_is_zero_output():
    head = _head(token_dim=3, cond_dim=5, randomize=False, learn_sigma=True)
    x = torch.randn(7, 3)
    out = head.net(x, torch.randint(0, 1000, (7,)), head.net.cond_embed(torch.randn(7, 5)))
    assert out.shape == (7, 6) and out.abs().max() == 0  # zero-init final layer (MAR)
    z = torch.randn(2, 4, 5)
    loss = head.loss(z, torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool), generator=_gen())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert head.net.final.linear.weight.grad[3:].abs().sum() > 0  # variance channels learn
    assert head.sample(torch.randn(9, 5), 1.0, _gen()).shape == (9, 3)


def test_loss_counts_only_masked_tokens():
    head = _head()
    g = _gen(3)
    z, target = torch.randn(2, 6, 4, generator=g), torch.randn(2, 6, 2, generator=g)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    base = head.loss(z, target, mask, generator=_gen(7))
    changed = target.clone()
    changed[~mask] += 10.0
    torch.testing.assert_close(head.loss(z, changed, mask, generator=_gen(7)), base)
    changed[mask] += 1.0
    assert not torch.allclose(head.loss(z, changed, mask, generator=_gen(7)), base)
    # mean over masked tokens: equals the loss of masked tokens alone when all are masked
    empty = head.loss(z, target, torch.zeros_like(mask), generator=_gen(7))
    assert empty.item() == 0.0


def test_sample_is_seeded():
    head = _head()
    z = torch.randn(5, 4, generator=_gen(2))
    a = head.sample(z, 1.0, _gen(11))
    torch.testing.assert_close(head.sample(z, 1.0, _gen(11)), a)
    assert not torch.allclose(head.sample(z, 1.0, _gen(12)), a)


def test_cfg_scale_one_is_unguided_and_zero_is_unconditional():
    head = _head()
    z, z_u = torch.randn(5, 4, generator=_gen(2)), torch.randn(5, 4, generator=_gen(3))
    plain = head.sample(z, 1.0, _gen(11))
    torch.testing.assert_close(head.sample(z, 1.0, _gen(11), z_uncond=z_u, cfg_scale=1.0), plain)
    # s = 0: ε = ε_u, so the guided chain is the chain conditioned on z_uncond
    torch.testing.assert_close(head.sample(z, 1.0, _gen(11), z_uncond=z_u, cfg_scale=0.0),
                               head.sample(z_u, 1.0, _gen(11)))
    guided = head.sample(z, 1.0, _gen(11), z_uncond=z_u, cfg_scale=3.0)
    assert guided.shape == plain.shape and not torch.allclose(guided, plain)


def test_temperature_scales_only_the_posterior_noise():
    head = _head()
    z = torch.randn(64, 4, generator=_gen(2))
    cold = [head.sample(z, 0.0, _gen(s)) for s in (1, 2)]
    hot = [head.sample(z, 1.0, _gen(s)) for s in (1, 2)]
    # at temperature 0 only x_T is random, so two seeds differ less than at temperature 1
    assert (cold[0] - cold[1]).std() < (hot[0] - hot[1]).std()


@pytest.mark.slow
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_head_learns_a_conditional_distribution(learn_sigma):
    """z = ±1 (one-hot-ish); target = z·(2, -1) + 0.1·noise. Samples must land on the means."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(DiffusionHeadConfig(), depth=2, width=64, sampling_steps=50,
                              learn_sigma=learn_sigma)
    head = DiffusionHead(cfg, token_dim=2, cond_dim=2)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    g = _gen(0)
    centre = torch.tensor([2.0, -1.0])

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        sign = torch.randint(0, 2, (n, 1), generator=g).float() * 2 - 1
        return torch.cat([sign, -sign], -1), sign * centre + 0.1 * torch.randn(n, 2, generator=g)

    first = None
    for _ in range(200):
        z, x = batch(128)
        loss = head.loss(z[None], x[None], torch.ones(1, 128, dtype=torch.bool), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < 0.5 * first
    z = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat_interleave(200, 0)
    out = head.sample(z, 1.0, _gen(5))
    for half, sign in ((out[:200], 1.0), (out[200:], -1.0)):
        assert torch.allclose(half.mean(0), sign * centre, atol=0.25), half.mean(0)
        assert half.std(0).max() < 0.5


# ------------------------------------------------------------------ load_teacher
def _save(tmp_path, kind: str, tiny_cfg):
    from energytta.audio.codec import build_codec
    from energytta.checkpoint import save_inference
    from energytta.models.tta import TTAModel

    model = TTAModel(tiny_cfg, text_dim=16)
    return save_inference(tmp_path / f"{kind}.safetensors", model, build_codec(tiny_cfg),
                          tiny_cfg, kind=kind, text_dim=16)


def test_load_teacher_is_frozen_and_checks_kind(tmp_path):
    from teachers import load_teacher

    cfg = load_config("tiny")
    path = _save(tmp_path, "teacher", cfg)
    loaded_cfg, model = load_teacher(path, "cpu")
    assert loaded_cfg.head.kind == "diffusion" and isinstance(model.head, DiffusionHead)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    student = load_config("tiny", ["head.kind=energy"])
    with pytest.raises(UserError, match="not 'teacher'"):
        load_teacher(_save(tmp_path, "student", student), "cpu")
