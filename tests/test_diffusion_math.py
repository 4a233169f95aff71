"""Schedules, the forward process, the posterior and the parameterisations against independent closed forms."""

import math

import pytest
import torch

from lit_modules.diffusion import (
    alphas_cumprod_from_betas,
    betas_from_alphas_cumprod,
    cosine_alphas_cumprod,
    cosine_betas,
    eps_from_x0,
    linear_betas,
    make_betas,
    q_posterior,
    q_sample,
    timestep_schedule,
    to_x0_eps,
    training_target,
    v_from_x0_eps,
    x0_eps_from_v,
    x0_from_eps,
)


def test_linear_schedule_is_ddpm_and_alpha_bar_identities():
    betas = linear_betas(1000)
    assert (
        betas.dtype == torch.float64 and betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    )
    abar = alphas_cumprod_from_betas(betas)
    # alpha_bar_t = prod (1 - beta_s), computed independently in log space
    assert torch.allclose(abar, torch.exp(torch.cumsum(torch.log1p(-betas), 0)), rtol=1e-12)
    assert abar[0] == pytest.approx(1 - 1e-4) and (abar[1:] < abar[:-1]).all()
    assert 3e-5 < abar[-1] < 5e-5  # DDPM's linear schedule ends at alpha_bar_T ~ 4.0e-5 (nearly pure noise)
    assert torch.allclose(betas_from_alphas_cumprod(abar), betas, rtol=1e-9)


def test_cosine_schedule_matches_improved_ddpm():
    T, s = 1000, 0.008
    abar = cosine_alphas_cumprod(T)
    for t in (1, 250, 500, 999):  # alpha_bar_t = f(t)/f(0), paper index t
        f = math.cos(((t / T + s) / (1 + s)) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
        assert abar[t - 1].item() == pytest.approx(f, rel=1e-12)
    betas = cosine_betas(T)
    assert betas.max() <= 0.999 and betas.max() == pytest.approx(0.999)  # clipped at the end
    unclipped = betas < 0.999
    assert torch.allclose(alphas_cumprod_from_betas(betas)[unclipped], abar[unclipped], rtol=1e-9)
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'.*linear.*cosine"):
        make_betas("quadratic", 10)


def test_forward_process_empirical_moments_match_closed_form():
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, and the same distribution as T single steps
    x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t (DDPM eq. 2, one step of the forward process)."""
    g = torch.Generator().manual_seed(0)
    betas = linear_betas(1000)
    abar = alphas_cumprod_from_betas(betas)
    n = 200_000
    x0 = 0.3 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)  # data N(0.3, 0.25)
    for t in (0, 99, 499, 999):
        xt = q_sample(x0, torch.full((n,), t), torch.randn(n, generator=g, dtype=torch.float64), abar)
        mean, var = math.sqrt(abar[t]) * 0.3, abar[t].item() * 0.25 + 1 - abar[t].item()
        assert xt.mean().item() == pytest.approx(mean, abs=4 * math.sqrt(var / n))
        assert xt.var().item() == pytest.approx(var, rel=0.01)
    x = x0.clone()
    for t in range(500):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    var = abar[499].item() * 0.25 + 1 - abar[499].item()
    assert x.mean().item() == pytest.approx(math.sqrt(abar[499]) * 0.3, abs=4 * math.sqrt(var / n))
    assert x.var().item() == pytest.approx(var, rel=0.01)


def test_posterior_matches_gaussian_conjugacy():
    """q(x_{t-1} | x_t, x0) from Bayes' rule on x_{t-1} | x0 ~ N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) and
    x_t | x_{t-1} ~ N(sqrt(alpha_t) x_{t-1}, beta_t): precision-weighted, independent of DDPM eq. 7."""
    abar = alphas_cumprod_from_betas(linear_betas(1000))
    x0 = torch.tensor([-0.7, 0.1, 0.9], dtype=torch.float64)
    xt = torch.tensor([0.5, -1.2, 2.0], dtype=torch.float64)
    for t in (1, 10, 500, 999):
        a_prev, a = abar[t - 1].item(), abar[t].item()
        alpha, beta = a / a_prev, 1 - a / a_prev
        precision = 1 / (1 - a_prev) + alpha / beta
        mean = (math.sqrt(a_prev) * x0 / (1 - a_prev) + math.sqrt(alpha) * xt / beta) / precision
        got_mean, got_var = q_posterior(x0, xt, torch.full((3,), t), abar)
        assert torch.allclose(got_mean, mean, rtol=1e-9)
        assert torch.allclose(
            got_var.flatten(), torch.full((3,), 1 / precision, dtype=torch.float64), rtol=1e-9
        )
    # t = 0 (paper t = 1): x_{t-1} is x0 itself
    m0, v0 = q_posterior(x0, xt, torch.zeros(3, dtype=torch.long), abar)
    assert torch.allclose(m0, x0) and (v0 == 0).all()


def test_parameterisations_round_trip():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 5, generator=g, dtype=torch.float64)
    abar = torch.tensor(0.37, dtype=torch.float64)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    assert torch.allclose(x0_from_eps(xt, eps, abar), x0) and torch.allclose(eps_from_x0(xt, x0, abar), eps)
    v = v_from_x0_eps(x0, eps, abar)
    assert torch.allclose(v, abar.sqrt() * eps - (1 - abar).sqrt() * x0)
    x0_v, eps_v = x0_eps_from_v(xt, v, abar)
    assert torch.allclose(x0_v, x0) and torch.allclose(eps_v, eps)
    for kind in ("eps", "x0", "v"):
        x0_k, eps_k = to_x0_eps(training_target(x0, eps, abar, kind), xt, abar, kind)
        assert torch.allclose(x0_k, x0) and torch.allclose(eps_k, eps), kind
    with pytest.raises(ValueError, match="unknown prediction_type 'score'"):
        training_target(x0, eps, abar, "score")


def test_timestep_spacings():
    assert timestep_schedule(1000, 1000, "trailing") == list(range(999, -1, -1))
    for spacing in ("trailing", "leading", "linspace"):
        assert timestep_schedule(1000, 1000, spacing) == list(range(999, -1, -1))
    assert timestep_schedule(1000, 4, "trailing") == [999, 749, 499, 249]
    assert timestep_schedule(1000, 4, "leading") == [750, 500, 250, 0]
    assert timestep_schedule(1000, 4, "linspace") == [999, 666, 333, 0]
    for bad in (0, 1001, -3):
        with pytest.raises(
            ValueError, match=rf"steps={bad}: must be an integer between 1 and the model's training T=1000"
        ):
            timestep_schedule(1000, bad)
    with pytest.raises(ValueError, match="unknown timestep spacing 'uniform'.*trailing.*leading.*linspace"):
        timestep_schedule(1000, 10, "uniform")
