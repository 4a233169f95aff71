"""Samplers for any denoiser callable `(x_t, t) -> prediction`: ancestral DDPM (fixed small / fixed large
variance), DDIM (eta, timestep spacing), DPM-Solver++(2M), and classifier-free guidance on top of any of them.

A denoiser takes x_t (B, ...) and integer timestep indices t (B,) in [0, T) (index convention of
`schedules.py`) and returns a prediction of `prediction_type` ("eps", "x0" or "v") of x_t's shape. Class
labels are bound by the caller (see `classifier_free_guidance`), so a closed-form function of (x_t, t) works
as well as a UNet: that is how the tests check the samplers on data whose exact denoiser is known.

One seed per image (`lit_modules.sampling.PerImageNoise`): an image depends only on its seed. The samplers are
also `lit_modules.sampling.Sampler` records in `SAMPLERS`, whose `run(model_fn, x_init, grid, noise, *,
alphas_cumprod, prediction_type, progress, callback, **options)` takes the `grid` of integer timesteps
(`timestep_schedule`); `sample(...)` is the one-call form.

Each step works in the scalars of its two noise levels, `abar` (alpha_bar at the current index) and
`abar_prev` (at the next index of the sampling sequence; 1.0 past the last one, i.e. the clean image).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from core.errors import ConfigError
from lit_modules.diffusion.schedules import PREDICTION_TYPES, to_x0_eps
from lit_modules.sampling import PerImageNoise, Sampler, check_sampler_name, guided

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step number, timestep index, x after the step)

SPACINGS = ("trailing", "leading", "linspace")


# ------------------------------------------------------------------------------------------------ steps
def timestep_schedule(num_train_timesteps: int, steps: int, spacing: str = "trailing") -> list[int]:
    """The `steps` timestep indices a sampler visits, descending (Lin et al. 2023, Table 2, names as in diffusers):
    - trailing: round(T - k*T/steps) - 1, k = 0..steps-1; starts at T-1, where x_T ~ N(0, I) is the right start.
    - leading: k * (T // steps) reversed; DDIM's "uniform" subsequence (Song et al. 2021, app. D.2).
    - linspace: round(linspace(0, T-1, steps)) reversed.
    With steps = T every spacing gives T-1, ..., 0 (the full ancestral chain)."""
    check_steps(steps, num_train_timesteps)
    if spacing == "trailing":
        ts = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
    elif spacing == "leading":
        ts = (np.arange(0, steps) * (num_train_timesteps // steps))[::-1]
    elif spacing == "linspace":
        ts = np.linspace(0, num_train_timesteps - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ConfigError(f"unknown timestep spacing {spacing!r}; valid: {list(SPACINGS)}")
    out = [int(t) for t in ts]
    assert len(out) == steps and all(a > b for a, b in zip(out, out[1:])), (spacing, steps, out[:5])
    return out


def check_steps(steps: int, num_train_timesteps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= num_train_timesteps:
        raise ConfigError(
            f"steps={steps!r}: must be an integer between 1 and the model's training T={num_train_timesteps}"
        )


def check_sampler(name: str) -> None:
    check_sampler_name(SAMPLERS, name)


def _levels(timesteps: Sequence[int], alphas_cumprod: torch.Tensor) -> list[tuple[int, float, float]]:
    """(t, abar_t, abar_prev) per step, abar_prev = 1 past the last step (the clean image)."""
    abar = [float(alphas_cumprod[t]) for t in timesteps]
    return [(t, abar[i], abar[i + 1] if i + 1 < len(abar) else 1.0) for i, t in enumerate(timesteps)]


def _predict(
    denoiser: Denoiser, x: torch.Tensor, t: int, abar: float, prediction_type: str, clip_x0: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from one network evaluation; with clip_x0, x0_hat is clipped to [-1, 1] and eps_hat
    re-derived from it (as GLIDE / improved-diffusion do), so x_t = sqrt(abar) x0_hat + sqrt(1-abar) eps_hat holds."""
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    pred = denoiser(x, tt).to(x.dtype)
    a = torch.tensor(abar, dtype=x.dtype, device=x.device)
    x0, eps = to_x0_eps(pred, x, a, prediction_type)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)
    return x0, eps


def _progress(steps: list, desc: str, progress: bool):
    return tqdm(steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------ samplers
def ancestral_loop(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    noise: Callable[[], torch.Tensor],
    prediction_type: str = "eps",
    variance: str = "small",
    clip_x0: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral sampling (DDPM Algorithm 2), on any decreasing subsequence of timesteps (IDDPM sec. 4 respacing:
    beta_t = 1 - abar_t / abar_prev for the subsequence). Per step, with x0_hat from the network:
      1. mu = sqrt(abar_prev) beta / (1 - abar) x0_hat + sqrt(abar / abar_prev) (1 - abar_prev) / (1 - abar) x_t
         (the posterior mean, DDPM eq. 7, with x0_hat for x_0; equivalent to eq. 11 for an eps-model without clipping)
      2. sigma^2 = beta_tilde = (1 - abar_prev) / (1 - abar) beta ("fixed small", variance="small")
         or sigma^2 = beta ("fixed large", variance="large") (DDPM sec. 3.2)
      3. x_prev = mu + sigma z, z ~ N(0, I); no noise on the last step (Algorithm 2, line 3), whose mean is x0_hat.
    """
    if variance not in ("small", "large"):
        raise ConfigError(f"variance={variance!r}: valid are 'small' (beta_tilde) and 'large' (beta)")
    levels = _levels(timesteps, alphas_cumprod)
    for i, (t, abar, abar_prev) in enumerate(_progress(levels, f"ancestral ({variance})", progress)):
        x0, _ = _predict(denoiser, x, t, abar, prediction_type, clip_x0)
        beta = 1.0 - abar / abar_prev
        coef_x0 = math.sqrt(abar_prev) * beta / (1.0 - abar)
        coef_xt = math.sqrt(abar / abar_prev) * (1.0 - abar_prev) / (1.0 - abar)
        x = coef_x0 * x0 + coef_xt * x
        if i + 1 < len(levels):
            var = (1.0 - abar_prev) / (1.0 - abar) * beta if variance == "small" else beta
            x = x + math.sqrt(var) * noise()
        if callback is not None:
            callback(i, t, x)
    return x


def ddim_loop(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    noise: Callable[[], torch.Tensor],
    prediction_type: str = "eps",
    eta: float = 0.0,
    clip_x0: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12 with sigma from eq. 16); eta = 0 is deterministic, eta = 1 is the
    ancestral sampler with fixed-small variance. Glossary: x0_hat -> f_theta(x_t), eps_hat -> eps_theta(x_t).
      1. predict x0_hat (and eps_hat) from the network output
      2. sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)          (eq. 16)
      3. direction pointing to x_t: sqrt(1 - abar_prev - sigma^2) eps_hat
      4. x_prev = sqrt(abar_prev) x0_hat + direction + sigma z                             (eq. 12)
    """
    if eta < 0:
        raise ConfigError(f"eta={eta}: must be >= 0")
    levels = _levels(timesteps, alphas_cumprod)
    for i, (t, abar, abar_prev) in enumerate(_progress(levels, f"ddim (eta={eta:g})", progress)):
        x0, eps = _predict(denoiser, x, t, abar, prediction_type, clip_x0)
        sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
        direction = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0)) * eps
        x = math.sqrt(abar_prev) * x0 + direction
        if sigma > 0:
            x = x + sigma * noise()
        if callback is not None:
            callback(i, t, x)
    return x


def dpmpp_2m_loop(
    denoiser: Denoiser,
    x: torch.Tensor,
    timesteps: Sequence[int],
    alphas_cumprod: torch.Tensor,
    noise: Callable[[], torch.Tensor] | None = None,
    prediction_type: str = "eps",
    clip_x0: bool = True,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), a deterministic multistep solver of the
    probability-flow ODE in the data-prediction form. Glossary: alpha_t = sqrt(abar), sigma_t = sqrt(1 - abar),
    lambda_t = log(alpha_t / sigma_t) (half log-SNR); x0_hat_i -> x_theta(x_{t_i}, t_i); h_i = lambda_next - lambda_i.
      1. x0_hat_i from the network at (x_i, t_i)
      2. first step (no history): first-order update (= DDIM eta=0)
            x_next = (sigma_next / sigma_i) x_i - alpha_next (e^{-h_i} - 1) x0_hat_i
      3. later steps: r_i = h_{i-1} / h_i, D_i = (1 + 1/(2 r_i)) x0_hat_i - 1/(2 r_i) x0_hat_{i-1}
            x_next = (sigma_next / sigma_i) x_i - alpha_next (e^{-h_i} - 1) D_i
      4. the last step goes to sigma = 0 (lambda = +inf), where both updates give x_next = x0_hat_i
         (first order there, as diffusers' `final_sigmas_type="zero"`).
    """
    levels = _levels(timesteps, alphas_cumprod)
    x0_prev, h_prev = None, None
    for i, (t, abar, abar_next) in enumerate(_progress(levels, "dpm-solver++(2m)", progress)):
        x0, _ = _predict(denoiser, x, t, abar, prediction_type, clip_x0)
        if abar_next >= 1.0:  # to the clean image: sigma_next = 0
            x = x0
        else:
            alpha_i, sigma_i = math.sqrt(abar), math.sqrt(1.0 - abar)
            alpha_n, sigma_n = math.sqrt(abar_next), math.sqrt(1.0 - abar_next)
            h = math.log(alpha_n / sigma_n) - math.log(alpha_i / sigma_i)
            if x0_prev is None:
                d = x0
            else:
                r = h_prev / h
                d = (1.0 + 1.0 / (2.0 * r)) * x0 - (1.0 / (2.0 * r)) * x0_prev
            x = (sigma_n / sigma_i) * x - alpha_n * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, t, x)
    return x


# ------------------------------------------------------------------------------------------------ registry
def _ancestral_small(model_fn, x_init, grid, noise, *, alphas_cumprod, prediction_type="eps", clip_x0=True,
                     progress=False, callback=None) -> torch.Tensor:  # fmt: skip
    return ancestral_loop(model_fn, x_init, grid, alphas_cumprod, noise, prediction_type, "small", clip_x0,
                          progress, callback)  # fmt: skip


def _ancestral_large(model_fn, x_init, grid, noise, *, alphas_cumprod, prediction_type="eps", clip_x0=True,
                     progress=False, callback=None) -> torch.Tensor:  # fmt: skip
    return ancestral_loop(model_fn, x_init, grid, alphas_cumprod, noise, prediction_type, "large", clip_x0,
                          progress, callback)  # fmt: skip


def _ddim(model_fn, x_init, grid, noise, *, alphas_cumprod, prediction_type="eps", eta=0.0, clip_x0=True,
          progress=False, callback=None) -> torch.Tensor:  # fmt: skip
    return ddim_loop(model_fn, x_init, grid, alphas_cumprod, noise, prediction_type, eta, clip_x0, progress,
                     callback)  # fmt: skip


def _dpmpp_2m(model_fn, x_init, grid, noise, *, alphas_cumprod, prediction_type="eps", clip_x0=True,
              progress=False, callback=None) -> torch.Tensor:  # fmt: skip
    return dpmpp_2m_loop(model_fn, x_init, grid, alphas_cumprod, noise, prediction_type, clip_x0, progress,
                         callback)  # fmt: skip


# `run(model_fn, x_init, grid, noise, *, alphas_cumprod, prediction_type, progress, callback, **options)`: grid =
# descending integer timesteps; `alphas_cumprod` and `prediction_type` are the model's, not user options
SAMPLERS: dict[str, Sampler] = {
    "ancestral": Sampler(
        "ancestral", _ancestral_small, {"clip_x0": True}, stochastic=True, evals_per_step=1,
        description="DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), fixed-small variance beta_tilde",
    ),
    "ancestral_large": Sampler(
        "ancestral_large", _ancestral_large, {"clip_x0": True}, stochastic=True, evals_per_step=1,
        description="DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), fixed-large variance beta",
    ),
    "ddim": Sampler(
        "ddim", _ddim, {"eta": 0.0, "clip_x0": True}, stochastic=True, evals_per_step=1,
        description="DDIM (Song et al. 2021, eq. 12); eta=0 deterministic, eta=1 ancestral (fixed small)",
    ),
    "dpmpp_2m": Sampler(
        "dpmpp_2m", _dpmpp_2m, {"clip_x0": True}, stochastic=False, evals_per_step=1,
        description="DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), deterministic multistep ODE solver",
    ),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------ guidance
def classifier_free_guidance(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    guidance_scale: float,
    labels: torch.Tensor,
    null_label: int,
) -> Denoiser:
    """eps~ = (1 + w) eps(z, c) - w eps(z) (Ho & Salimans 2022, eq. 6): `lit_modules.sampling.guided`."""
    return guided(model, guidance_scale, labels, null_label)


# ------------------------------------------------------------------------------------------------ one call
def sample(
    denoiser: Denoiser,
    shape: Sequence[int],
    seeds: Sequence[int],
    alphas_cumprod: torch.Tensor,
    sampler: str = "ddim",
    steps: int = 50,
    prediction_type: str = "eps",
    eta: float = 0.0,
    spacing: str = "trailing",
    clip_x0: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """len(seeds) images of `shape` (C, H, W), one seed each, from x_T ~ N(0, I) with the named sampler.

    `ancestral` (fixed small), `ancestral_large` (fixed large), `ddim` (`eta`), `dpmpp_2m`; `steps` timesteps
    chosen by `spacing` (see `timestep_schedule`). `eta` only affects `ddim`."""
    entry = check_sampler_name(SAMPLERS, sampler)
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"unknown prediction_type {prediction_type!r}; valid: {list(PREDICTION_TYPES)}")
    timesteps = timestep_schedule(len(alphas_cumprod), steps, spacing)
    noise = PerImageNoise(seeds, shape, device)
    x = noise()  # x_T, the first draw of every image's generator
    options = {k: v for k, v in dict(eta=eta, clip_x0=clip_x0).items() if k in entry.options}
    return entry.run(
        denoiser, x, timesteps, noise, alphas_cumprod=alphas_cumprod, prediction_type=prediction_type,
        progress=progress, callback=callback, **options,
    )  # fmt: skip


__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "PerImageNoise",
    "ancestral_loop",
    "check_sampler",
    "check_steps",
    "classifier_free_guidance",
    "ddim_loop",
    "dpmpp_2m_loop",
    "sample",
    "timestep_schedule",
]
