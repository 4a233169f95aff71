"""Noise schedules, the forward process and the posterior of DDPM, and conversions between parameterisations.

Index convention (as in diffusers and the DDPM code): a timestep index t in {0, ..., T-1} stands for the
paper's t+1, so `alphas_cumprod[t]` is the paper's alpha_bar_{t+1} and `alphas_cumprod[0] = 1 - beta_1`.
The "clean" end of the chain (paper's t = 0, alpha_bar = 1) has no index; samplers write it as index -1.

Glossary (code -> paper, Ho et al. 2020 "DDPM"; Nichol & Dhariwal 2021 "IDDPM"; Salimans & Ho 2022):
  betas -> beta_t;  alphas -> alpha_t = 1 - beta_t;  alphas_cumprod (abar) -> alpha_bar_t = prod_{s<=t} alpha_s
  x0 -> x_0;  xt -> x_t;  eps -> epsilon ~ N(0, I);  v -> v = sqrt(abar) eps - sqrt(1 - abar) x_0
All schedule arrays are float64 tensors (the closed forms are then exact to ~1e-16); cast at the point of use.
"""

from __future__ import annotations

import math

import torch

from core.errors import ConfigError

PREDICTION_TYPES = ("eps", "x0", "v")
SCHEDULES = ("linear", "cosine")


# ------------------------------------------------------------------------------------------------ schedules
def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_t linearly spaced from beta_1 = 1e-4 to beta_T = 0.02 (DDPM sec. 4, T = 1000).

    For T != 1000 the end points are rescaled by 1000/T (IDDPM's convention), so the total noise is alike."""
    if num_timesteps < 1:
        raise ConfigError(f"num_timesteps must be >= 1, got {num_timesteps}")
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)


def cosine_alphas_cumprod(num_timesteps: int, s: float = 0.008) -> torch.Tensor:
    """alpha_bar_t = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2) (IDDPM eq. 17), t = 1..T."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64)
    f = torch.cos(((t / num_timesteps + s) / (1 + s)) * math.pi / 2) ** 2
    return f[1:] / f[0]


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} from the cosine alpha_bar, clipped at 0.999 (IDDPM sec. 3.2)
    to avoid the singularity at t = T."""
    t = torch.arange(num_timesteps + 1, dtype=torch.float64)
    f = torch.cos(((t / num_timesteps + s) / (1 + s)) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def make_betas(schedule: str, num_timesteps: int) -> torch.Tensor:
    if schedule == "linear":
        return linear_betas(num_timesteps)
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    raise ConfigError(f"unknown noise schedule {schedule!r}; valid: {list(SCHEDULES)}")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s=1}^{t} (1 - beta_s) (DDPM, notation above eq. 4)."""
    return torch.cumprod(1.0 - betas.double(), dim=0)


def betas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} (with alpha_bar_0 = 1): the betas of a respaced chain
    (IDDPM sec. 4, "Improving sampling speed")."""
    prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    return 1.0 - alphas_cumprod / prev


def _bcast(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to (B, 1, 1, ...) to broadcast against `like`, in like's dtype and device."""
    out = values.to(like.device)[t.to(like.device).long()]
    return out.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


# ----------------------------------------------------------------------------------------- forward process
def q_sample(
    x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4, reparameterised)."""
    abar = _bcast(alphas_cumprod, t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def q_posterior(
    x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7), for index t >= 0 (at t = 0, x_{t-1} is x_0):
        mu_tilde = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        beta_tilde = (1 - abar_{t-1}) / (1 - abar_t) beta_t
    Returns (mean like x0, variance broadcastable to x0)."""
    abar = alphas_cumprod.double()
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    beta = 1 - abar / abar_prev
    coef_x0 = abar_prev.sqrt() * beta / (1 - abar)
    coef_xt = (abar / abar_prev).sqrt() * (1 - abar_prev) / (1 - abar)
    var = (1 - abar_prev) / (1 - abar) * beta
    mean = _bcast(coef_x0, t, x0) * x0 + _bcast(coef_xt, t, xt) * xt
    return mean, _bcast(var, t, x0)


# ------------------------------------------------------------------------------------ parameterisations
def x0_from_eps(xt: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) (DDPM eq. 4 solved for x_0; DDIM eq. 9)."""
    return (xt - (1 - abar).sqrt() * eps) / abar.sqrt()


def eps_from_x0(xt: torch.Tensor, x0: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)."""
    return (xt - abar.sqrt() * x0) / (1 - abar).sqrt()


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho 2022, sec. 4 and app. D)."""
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def x0_eps_from_v(xt: torch.Tensor, v: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_0 = sqrt(abar) x_t - sqrt(1 - abar) v and eps = sqrt(1 - abar) x_t + sqrt(abar) v (Salimans & Ho 2022)."""
    a, s = abar.sqrt(), (1 - abar).sqrt()
    return a * xt - s * v, s * xt + a * v


def training_target(
    x0: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """What the network regresses: eps (DDPM's L_simple, eq. 14), x_0, or v."""
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    if prediction_type == "v":
        return v_from_x0_eps(x0, eps, abar)
    raise ConfigError(f"unknown prediction_type {prediction_type!r}; valid: {list(PREDICTION_TYPES)}")


def to_x0_eps(
    prediction: torch.Tensor, xt: torch.Tensor, abar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_0, eps) implied by a network output of the given type at noise level abar (broadcastable)."""
    if prediction_type == "eps":
        return x0_from_eps(xt, prediction, abar), prediction
    if prediction_type == "x0":
        return prediction, eps_from_x0(xt, prediction, abar)
    if prediction_type == "v":
        return x0_eps_from_v(xt, prediction, abar)
    raise ConfigError(f"unknown prediction_type {prediction_type!r}; valid: {list(PREDICTION_TYPES)}")
