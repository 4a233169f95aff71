"""Flow matching with the linear (rectified-flow / optimal-transport) path as small pure functions: the path,
its training target, time sampling, the loss, the sampling time grid and the Euler / Heun ODE samplers.
Pure torch: knows nothing of Lightning, configs or files. docs/flow_matching.md has the derivations.

Papers: Lipman et al. 2023 "Flow Matching for Generative Modeling" (FM); Liu et al. 2023 "Flow Straight and
Fast: Learning to Generate and Transfer Data with Rectified Flow" (RF); Esser et al. 2024 "Scaling Rectified
Flow Transformers for High-Resolution Image Synthesis" (SD3); Karras et al. 2022 "Elucidating the Design
Space of Diffusion-Based Generative Models" (EDM).

Time convention (FM's and RF's): t = 0 is noise, t = 1 is data.
  x0 -> x_0 ~ N(0, I), the source (noise);  x1 -> x_1, a data image (in the model's working space [-1, 1]);
  xt -> x_t = (1 - t) x_0 + t x_1 (FM eq. 22 with sigma_min = 0; RF eq. 1);
  u  -> u_t = x_1 - x_0, the conditional velocity d x_t / dt (FM eq. 23 with sigma_min = 0; RF eq. 1);
  v  -> v_theta(x, t), the network's velocity, trained to E[x_1 - x_0 | x_t = x] (RF sec. 2.1; FM eq. 8).
Sampling integrates dx/dt = v(x, t) from x_0 ~ N(0, I) at t = 0 to t = 1 along a time grid
0 = t_0 < t_1 < ... < t_N = 1 (SD3's convention is the reverse, t = 1 noise; `time_grid` converts its shift).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from core.errors import ConfigError
from lit_modules.sampling import (
    ModelFn,
    PerImageNoise,
    Sampler,
    StepCallback,
    check_options,
    check_sampler_name,
)

TIME_SAMPLINGS = ("uniform", "logit_normal")


# ------------------------------------------------------------------------------------------------ the path
def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = psi_t(x_0 | x_1) = (1 - t) x_0 + t x_1 (FM eq. 22 with sigma_min = 0; RF eq. 1). t: (B,) or scalar,
    broadcast over the image dimensions."""
    t = _per_image(t, x0)
    return (1 - t) * x0 + t * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """u_t(x_t | x_1) = x_1 - x_0, the time derivative of `interpolate` (FM eq. 23 with sigma_min = 0; RF eq. 1);
    the same for every t."""
    return x1 - x0


def cfm_loss(v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Per-image conditional flow matching loss, (B,): mean over pixels of ||v_theta(x_t, t) - (x_1 - x_0)||^2
    (FM eq. 23 with sigma_min = 0; RF eq. 1). Its minimiser over functions of (x_t, t) is the marginal
    velocity E[x_1 - x_0 | x_t] (FM Theorem 2; RF sec. 2.1)."""
    u = target_velocity(x0, x1)
    return (v.float() - u.float()).pow(2).flatten(1).mean(1)


def sample_time(
    n: int,
    schedule: str = "uniform",
    generator: torch.Generator | None = None,
    loc: float = 0.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """n training times in (0, 1), float32 (CPU; pass the generator for reproducible draws):
    - uniform: t ~ U(0, 1) (FM sec. 4; RF eq. 1);
    - logit_normal: t = sigmoid(loc + scale n), n ~ N(0, 1) (SD3 sec. 3.1, "logit-normal sampling", pi_ln(t; m, s)
      with m = loc, s = scale), which weights the middle of the path, where the velocity is hardest to predict.
      SD3's t is our 1 - t; the density is symmetric about t = 1/2 when loc = 0 and mirrored otherwise, so
      loc > 0 here favours the data end (SD3's loc > 0 favours noise)."""
    if schedule == "uniform":
        return torch.rand(n, generator=generator)
    if schedule == "logit_normal":
        if not scale > 0:
            raise ConfigError(f"time sampling logit_normal: scale={scale} must be > 0")
        return torch.sigmoid(loc + scale * torch.randn(n, generator=generator))
    raise ConfigError(f"unknown time sampling {schedule!r}; valid: {', '.join(TIME_SAMPLINGS)}")


def _per_image(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(-1, *([1] * (x.ndim - 1))) if t.ndim else t


# ------------------------------------------------------------------------------------------------ the grid
def check_steps(steps: object) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps={steps!r}: must be a positive integer (ODE steps from t = 0 to t = 1)")


def time_grid(steps: int, shift: float = 1.0) -> list[float]:
    """The N + 1 times 0 = t_0 < ... < t_N = 1 a sampler visits (N = steps): uniform, then shifted by
    t' = t / (t + shift (1 - t)). This is SD3's resolution-dependent shift (sec. 5.3.2),
    sigma' = shift sigma / (1 + (shift - 1) sigma), written for our noise level sigma = 1 - t: shift > 1 spends
    more steps near the noise end, shift = 1 is the uniform grid."""
    check_steps(steps)
    if not (isinstance(shift, int | float) and not isinstance(shift, bool) and shift > 0):
        raise ConfigError(f"time_shift={shift!r}: must be a number > 0 (1 = the uniform grid)")
    uniform = [k / steps for k in range(steps + 1)]
    grid = [t / (t + shift * (1 - t)) for t in uniform]
    grid[0], grid[-1] = 0.0, 1.0
    return grid


# ------------------------------------------------------------------------------------------------ samplers
def _t_batch(t: float, x: torch.Tensor) -> torch.Tensor:
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.full((x.shape[0],), t, device=x.device, dtype=dtype)


def _velocity(model_fn: ModelFn, x: torch.Tensor, t: float) -> torch.Tensor:
    return model_fn(x, _t_batch(t, x)).to(x.dtype)


def _steps(grid: Sequence[float], desc: str, progress: bool):
    pairs = list(zip(grid[:-1], grid[1:]))
    return tqdm(pairs, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)


def _check_grid(grid: Sequence[float]) -> None:
    if len(grid) < 2 or any(not b > a for a, b in zip(grid, grid[1:])):
        raise ConfigError(
            f"flow-matching time grid must increase strictly over >= 2 times; got {list(grid)[:5]}..."
        )


def euler(
    model_fn: ModelFn,
    x_init: torch.Tensor,
    grid: Sequence[float],
    noise: PerImageNoise | None = None,
    *,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Explicit Euler on dx/dt = v(x, t) (RF sec. 2.1, "Euler method"): x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i).
    One network evaluation per step; global error O(1/N). Deterministic: `noise` is not drawn."""
    _check_grid(grid)
    x = x_init
    for i, (t, t_next) in enumerate(_steps(grid, "euler", progress)):
        x = x + (t_next - t) * _velocity(model_fn, x, t)
        if callback is not None:
            callback(i, t_next, x)
    return x


def heun(
    model_fn: ModelFn,
    x_init: torch.Tensor,
    grid: Sequence[float],
    noise: PerImageNoise | None = None,
    *,
    progress: bool = False,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method (explicit trapezoid) as EDM Algorithm 1 (deterministic), with our time for its
    sigma and h_i = t_{i+1} - t_i:
      d_i = v(x_i, t_i);  x~ = x_i + h_i d_i                          (Euler predictor, Alg. 1 lines 4-5)
      x_{i+1} = x_i + h_i (d_i + v(x~, t_{i+1})) / 2                  (trapezoid corrector, lines 7-8)
    except on the last step, which stays Euler (Alg. 1 line 6): 2N - 1 network evaluations; global error
    O(1/N^2) (the one Euler step adds an O(h^2) local error only). Deterministic: `noise` is not drawn."""
    _check_grid(grid)
    x = x_init
    last = len(grid) - 2
    for i, (t, t_next) in enumerate(_steps(grid, "heun", progress)):
        h = t_next - t
        d = _velocity(model_fn, x, t)
        x_euler = x + h * d
        if i < last:
            d_next = _velocity(model_fn, x_euler, t_next)
            x = x + h * 0.5 * (d + d_next)
        else:
            x = x_euler
        if callback is not None:
            callback(i, t_next, x)
    return x


SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler(
        name="euler",
        run=euler,
        options={},
        stochastic=False,
        evals_per_step=1,
        description="Euler ODE solver, first order (Liu et al. 2023)",
    ),
    "heun": Sampler(
        name="heun",
        run=heun,
        options={},
        stochastic=False,
        evals_per_step=2,
        description="Heun ODE solver, second order, last step Euler (Karras et al. 2022, Alg. 1)",
    ),
}


# ------------------------------------------------------------------------------------------------ one call
def sample(
    model_fn: ModelFn,
    shape: Sequence[int],
    seeds: Sequence[int],
    sampler: str = "heun",
    steps: int = 50,
    time_shift: float = 1.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    callback: StepCallback | None = None,
    **options: object,
) -> torch.Tensor:
    """len(seeds) samples x_1 of `shape` (C, H, W), one seed each: x_0 ~ N(0, I) is the first draw of the
    image's own generator (`PerImageNoise`), then the named ODE sampler over `time_grid(steps, time_shift)`.
    Returns the unclamped x_1 in the model's working space (the caller clamps to the data range, once, at the end)."""
    entry = check_sampler_name(SAMPLERS, sampler)
    check_options(entry, options)
    grid = time_grid(steps, time_shift)
    noise = PerImageNoise(seeds, shape, device, dtype)
    x0 = noise()
    return entry.run(
        model_fn, x0, grid, noise, progress=progress, callback=callback, **{**entry.options, **options}
    )


__all__ = [
    "SAMPLERS",
    "TIME_SAMPLINGS",
    "cfm_loss",
    "check_steps",
    "euler",
    "heun",
    "interpolate",
    "sample",
    "sample_time",
    "target_velocity",
    "time_grid",
]
