"""The VAE's math against closed forms and torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from lit_modules.vae import (
    bernoulli_log_likelihood,
    importance_sampled_log_likelihood,
    kl_standard_normal,
    log_normal_diag,
    reparameterize,
)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)
    assert torch.all(kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)) == 0)


def test_log_normal_diag_matches_normal_log_prob():
    g = torch.Generator().manual_seed(1)
    z, mu, logvar = (torch.randn(4, 6, generator=g) for _ in range(3))
    expected = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal_diag(z, mu, logvar), expected)


def test_bernoulli_log_likelihood_on_binary_pixels():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 1, 4, 4, generator=g)
    x = (torch.rand(3, 1, 4, 4, generator=g) > 0.5).float()
    expected = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), expected)
    # sample dims broadcast: (K, B, C, H, W) logits against (B, C, H, W) images
    many = bernoulli_log_likelihood(logits.expand(5, -1, -1, -1, -1), x)
    assert many.shape == (5, 3)
    torch.testing.assert_close(many[4], expected)


def test_reparameterize_moments():
    mu, logvar = torch.tensor([1.5, -2.0]), torch.tensor([0.0, math.log(4.0)])
    z = reparameterize(mu, logvar, torch.randn(200_000, 2, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(z.mean(0), mu, atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0]), atol=0.02, rtol=0)


# A linear-Gaussian model with a closed-form marginal: z ~ N(0, 1), x | z ~ N(a z, s^2)  =>  x ~ N(0, a^2 + s^2);
# posterior z | x ~ N(a x / (a^2 + s^2), s^2 / (a^2 + s^2)).
A, S = 2.0, 0.5


def _log_px_given_z(x):
    """z: (K, B, 1) -> log N(x; a z, s^2), (K, B)."""
    return lambda z: Normal(A * z[..., 0], S).log_prob(x)


def _true_log_px(x):
    return Normal(0.0, math.sqrt(A**2 + S**2)).log_prob(x)


def test_importance_sampling_is_exact_with_the_true_posterior():
    x = torch.tensor([-1.0, 0.3, 2.5])
    mu = (A * x / (A**2 + S**2))[:, None]
    logvar = torch.full_like(mu, math.log(S**2 / (A**2 + S**2)))
    for k in (1, 7):
        est, _ = importance_sampled_log_likelihood(
            _log_px_given_z(x), mu, logvar, k, generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(est, _true_log_px(x), atol=1e-5, rtol=0)


def test_importance_sampling_tightens_with_k_and_stays_below_log_px():
    x = torch.tensor([-1.0, 0.3, 2.5])
    mu = torch.zeros(3, 1)  # a poor proposal: the prior
    logvar = torch.zeros(3, 1)
    truth = _true_log_px(x)
    means = {}
    for k in (1, 10, 1000):
        ests = [
            importance_sampled_log_likelihood(
                _log_px_given_z(x), mu, logvar, k, chunk=64, generator=torch.Generator().manual_seed(s)
            )[0]
            for s in range(40)
        ]
        means[k] = torch.stack(ests).mean(0)
    assert torch.all(means[1] < means[10]) and torch.all(means[10] < means[1000])
    assert torch.all(means[1000] <= truth + 0.02)
    torch.testing.assert_close(means[1000], truth, atol=0.15, rtol=0)


def test_importance_sampling_rejects_k0():
    with pytest.raises(ValueError, match="num_samples"):
        importance_sampled_log_likelihood(lambda z: z.sum(-1), torch.zeros(1, 1), torch.zeros(1, 1), 0)
