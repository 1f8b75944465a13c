"""EnergyHead: the energy score by hand, properness on a toy mixture, CFG, validation."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from energytta.config import EnergyHeadConfig
from energytta.errors import UserError
from energytta.models.energy_head import EnergyHead


def _cfg(**kw) -> EnergyHeadConfig:
    base = dict(kind="energy", depth=2, width=32, noise_dim=8, num_samples=3)
    return dataclasses.replace(EnergyHeadConfig(), **{**base, **kw})


def _hand_energy_score(x: torch.Tensor, y: torch.Tensor, alpha: float, tau: float) -> list[float]:
    """2·ES_τ per token written with explicit loops. x (m, M, d), y (M, d)."""
    m, num_tokens, _ = x.shape
    out = []
    for t in range(num_tokens):
        attract = 0.0
        for i in range(m):
            diff = [float(a) - float(b) for a, b in zip(x[i, t], y[t])]
            attract += math.sqrt(sum(v * v for v in diff)) ** alpha
        attract /= m
        repel = 0.0
        for i in range(m):
            for j in range(m):
                if i != j:
                    diff = [float(a) - float(b) for a, b in zip(x[i, t], x[j, t])]
                    repel += math.sqrt(sum(v * v for v in diff)) ** alpha
        repel *= tau / (2 * m * (m - 1))
        out.append(2 * (attract - repel))
    return out


@pytest.mark.parametrize("alpha,tau,m", [(1.0, 1.0, 2), (0.5, 0.8, 3), (1.7, 1.0, 4)])
def test_energy_score_matches_hand_computation(alpha, tau, m):
    head = EnergyHead(_cfg(alpha=alpha, train_temperature=tau, num_samples=m), 3, 4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, 5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)
    got = head.energy_score(x, y)
    assert got.shape == (5,)
    assert torch.allclose(got, torch.tensor(_hand_energy_score(x, y, alpha, tau),
                                            dtype=torch.float64), atol=1e-6)


def test_m2_is_ear_loss():
    """For m = 2 the loss is EAR's d(x1,y) + d(x2,y) − τ·d(x1,x2)."""
    head = EnergyHead(_cfg(num_samples=2, train_temperature=0.9), 2, 4)
    x = torch.tensor([[[0.0, 0.0]], [[3.0, 4.0]]])
    y = torch.tensor([[0.0, 4.0]])
    assert torch.allclose(head.energy_score(x, y), torch.tensor([4.0 + 3.0 - 0.9 * 5.0]))


def test_loss_uses_masked_tokens_only_and_is_reproducible():
    torch.manual_seed(0)
    head = EnergyHead(_cfg(), 6, 4)
    for p in head.parameters():  # leave zero-init so the output depends on z and ε
        torch.nn.init.normal_(p, std=0.3)
    z, y = torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = mask[1, 3] = True
    loss = head.loss(z, y, mask, generator=torch.Generator().manual_seed(1))
    again = head.loss(z, y, mask, generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.equal(loss, again)
    y2 = y.clone()
    y2[~mask] += 100.0  # unmasked targets must not matter
    assert torch.equal(head.loss(z, y2, mask, generator=torch.Generator().manual_seed(1)), loss)
    none = head.loss(z, y, torch.zeros_like(mask))
    assert none.item() == 0.0 and none.requires_grad


def test_pairwise_gradient_finite_at_init():
    """At init all samples coincide (zero output layer): the gradient must stay finite."""
    head = EnergyHead(_cfg(alpha=0.5), 4, 4)
    z, y = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    head.loss(z, y, torch.ones(1, 3, dtype=torch.bool)).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.parametrize("noise_type", ["gaussian", "uniform"])
def test_head_learns_toy_mixture_mean_and_covariance(noise_type):
    """Properness: with z fixed, minimising the energy score recovers the data law."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    head = EnergyHead(_cfg(depth=2, width=64, noise_dim=4, num_samples=4,
                           noise_type=noise_type), 2, 4)
    centers = torch.tensor([[-2.0, 1.0], [1.5, -1.0]])

    def data(n: int) -> torch.Tensor:  # mixture 0.3/0.7 of two isotropic Gaussians (std 0.4)
        k = (torch.rand(n, generator=g) < 0.7).long()
        return centers[k] + 0.4 * torch.randn(n, 2, generator=g)

    big = data(20000)
    z = torch.ones(1, 256, 4)
    mask = torch.ones(1, 256, dtype=torch.bool)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(400):
        loss = head.loss(z, data(256).unsqueeze(0), mask, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = head.sample(torch.ones(20000, 4), 1.0, g)
    assert torch.allclose(out.mean(0), big.mean(0), atol=0.15)
    assert torch.allclose(torch.cov(out.T), torch.cov(big.T), atol=0.25)


def test_cfg_scale_one_equals_conditional_path():
    torch.manual_seed(0)
    head = EnergyHead(_cfg(), 6, 4)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    z, zu = torch.randn(7, 4), torch.randn(7, 4)
    plain = head.sample(z, 1.0, torch.Generator().manual_seed(3))
    guided = head.sample(z, 1.0, torch.Generator().manual_seed(3), z_uncond=zu, cfg_scale=1.0)
    assert torch.equal(plain, guided)
    # s ≠ 1 really interpolates: the same as the plain path on z_uncond + s (z − z_uncond).
    s = 3.0
    manual = head.sample(zu + s * (z - zu), 1.0, torch.Generator().manual_seed(3))
    got = head.sample(z, 1.0, torch.Generator().manual_seed(3), z_uncond=zu, cfg_scale=s)
    assert torch.allclose(manual, got) and not torch.allclose(got, plain)


def test_temperature_changes_spread_and_shapes():
    torch.manual_seed(0)
    head = EnergyHead(_cfg(), 6, 4)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.3)
    z = torch.randn(1, 4).expand(500, 4)
    hot = head.sample(z, 1.0, torch.Generator().manual_seed(0))
    cold = head.sample(z, 0.0, torch.Generator().manual_seed(0))
    assert hot.shape == (500, 6) and hot.dtype == z.dtype
    assert not torch.allclose(hot, cold)


@pytest.mark.parametrize("kw", [dict(alpha=0.0), dict(alpha=2.0), dict(alpha=-1.0),
                                dict(num_samples=1), dict(num_samples=0),
                                dict(noise_type="laplace")])
def test_validation(kw):
    with pytest.raises(UserError, match="head."):
        EnergyHead(_cfg(**kw), 4, 4)
    with pytest.raises(ValueError):
        EnergyHead(_cfg(**kw), 4, 4)
